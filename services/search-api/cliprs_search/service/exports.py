"""A detection run's results as files (GeoJSON, GeoPackage, CSV) and as Mapbox vector tiles.

Only a finished run (state ``done``, or ``rethresholding``: its results stay those of its
current threshold until the indexer swaps them) has results to hand out: an unknown run is
`NotFound`, any other state is `RunNotDone` (409).

GeoJSON and CSV are produced batch by batch while the answer is being sent, so a run of hundreds
of thousands of polygons never sits in memory whole. Each batch is read on a short connection of
its own (keyset: the rows after the last id sent), never while the client reads: a slow download
holds no database connection. A GeoPackage is an SQLite database, which cannot be written front to
back: it is written to a temporary file, batch by batch, and that file is then sent and deleted.

One download is one version of the run: each batch is read in the same snapshot as the run's
threshold and ``updated_at``; when a new threshold was applied between two batches, the download
is cut off (the client sees an incomplete transfer and downloads again) rather than mixing two
thresholds. A vector tile is read in one snapshot with the version its ETag names.

Exports being sent are capped per process (``SEARCH_MAX_CONCURRENT_EXPORTS``, `take_slot`): past
it, an export answers 503 with Retry-After at once.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from cliprs.errors import Conflict, InvalidInput, Unavailable
from cliprs.runs import RESULT_STATES
from cliprs_search.context import Context
from cliprs_search.repository import exports as repo
from cliprs_search.service.shared import found

# The deepest tile zoom served (windows go to z20 with the finer levels; tiles deeper than that
# would only magnify them).
MAX_TILE_ZOOM = 24
# A polygon narrower than this many pixels (of a 256-px tile) at the tile's zoom is drawn as a
# point (layer ``detection_points``): smaller ones collapse to nothing in a vector tile.
MIN_POLYGON_PX = 3.0
# Points of small polygons merge per cell of this many tile units (of 4096): 1/256 of the tile,
# about one pixel, so a tile holds at most 65,536 points whatever the run's size.
POINT_CELL = 16
# Scores are float4 in the database: more decimals would only print float noise.
SCORE_DECIMALS = 6

GPKG_LAYER = "detections"
CSV_POLYGON_COLUMNS = (
    "polygon_id",
    "run_id",
    "project_id",
    "z",
    "lon",
    "lat",
    "area_m2",
    "max_score",
    "mean_score",
    "window_count",
    "west",
    "south",
    "east",
    "north",
)
CSV_WINDOW_COLUMNS = ("window_id", "run_id", "project_id", "polygon_id", "z", "score", "lon", "lat")

CsvRows = Literal["polygons", "windows"]

log = logging.getLogger("cliprs.search.exports")


class RunNotDone(Conflict):
    """The run has no results yet (queued or running) or never will (failed): answered 409."""


class RunChanged(RuntimeError):
    """The run's results changed (a new threshold) while a download of them was being sent."""


@dataclass(frozen=True)
class RunVersion:
    """A finished run and what changes when its results do (a new threshold re-derives them)."""

    id: int
    project_id: int
    threshold: float
    updated_at: datetime
    hits: int
    polygons: int

    @property
    def etag(self) -> str:
        """Strong validator of the run's results: the run, its threshold and its last change."""
        stamp = int(self.updated_at.timestamp() * 1_000_000)
        return f'"run-{self.id}-t{self.threshold:.6g}-{stamp}"'

    def filename(self, suffix: str) -> str:
        """The download's file name, e.g. ``run-12-t0.5-detections.geojson``."""
        return f"run-{self.id}-t{self.threshold:.6g}-{suffix}"


async def finished_run(ctx: Context, run_id: int) -> RunVersion:
    """The run if it has results; `NotFound` for an unknown run, `RunNotDone` otherwise."""
    async with ctx.engine.connect() as conn:
        return _finished(await repo.run(conn, run_id), run_id)


def _finished(row: dict | None, run_id: int) -> RunVersion:
    row = found(row, f"no detection run {run_id}; list a project's runs with GET /v1/projects/{{id}}")
    if row["state"] not in RESULT_STATES:
        hint = {
            "failed": "it failed (see its error in GET /v1/runs/{id}); start a new run",
        }.get(row["state"], "poll GET /v1/runs/{id} until its state is done")
        raise RunNotDone(
            f"detection run {run_id} is {row['state']}, not done, so it has no results to export: "
            + hint.replace("{id}", str(run_id))
        )
    return RunVersion(
        id=row["id"],
        project_id=row["project_id"],
        threshold=float(row["threshold"]),
        updated_at=row["updated_at"],
        hits=int(row["hits"]),
        polygons=int(row["polygons"]),
    )


def take_slot(ctx: Context) -> Callable[[], None]:
    """One of the process's export slots, or `Unavailable` (503, Retry-After) when all are in
    use; the answer gives it back (the returned function) when it ends, however it ends."""
    if not ctx.exports.take():
        raise Unavailable(
            f"this server is sending {ctx.exports.limit} exports already (SEARCH_MAX_CONCURRENT_EXPORTS); "
            "retry in a few seconds"
        )
    return ctx.exports.give_back


Fetch = Callable[[AsyncConnection, int, int, int], Awaitable[list[Row]]]


async def _batches(ctx: Context, run: RunVersion, fetch: Fetch, key: str) -> AsyncIterator[list[Row]]:
    """The rows ``fetch`` reads, in batches of ``repo.BATCH_ROWS`` ordered by ``key``; each batch
    on a connection of its own, given back before the batch is handed on, and read in one
    snapshot with the run's version: `RunChanged` when that is no longer ``run``'s."""
    after = 0
    while True:
        async with repo.snapshot(ctx.engine) as conn:
            now = await repo.version(conn, run.id)
            if (
                now is None
                or now.state not in RESULT_STATES
                or ((float(now.threshold), now.updated_at) != (run.threshold, run.updated_at))
            ):
                log.warning("run %s changed while its export was being sent; the download is cut off", run.id)
                raise RunChanged(f"run {run.id} changed while its export was being sent; download it again")
            rows = await fetch(conn, run.id, after, repo.BATCH_ROWS)
        if rows:
            yield rows
        if len(rows) < repo.BATCH_ROWS:
            return
        after = getattr(rows[-1], key)


def _score(value: float) -> float:
    return round(float(value), SCORE_DECIMALS)


def _polygon_properties(row) -> dict:
    return {
        "polygon_id": row.id,
        "run_id": row.run_id,
        "project_id": row.project_id,
        "z": row.z,
        "area_m2": round(float(row.area_m2), 2),
        "max_score": _score(row.max_score),
        "mean_score": _score(row.mean_score),
        "window_count": row.window_count,
    }


async def geojson_chunks(ctx: Context, run: RunVersion) -> AsyncIterator[bytes]:
    """The run's polygons as one GeoJSON FeatureCollection, a batch of features per chunk."""
    head = {
        "type": "FeatureCollection",
        "name": f"run-{run.id}-detections",
        # A foreign member (RFC 7946 section 6.1): which run, at which threshold.
        "run": {"id": run.id, "project_id": run.project_id, "threshold": _score(run.threshold)},
    }
    yield (json.dumps(head)[:-1] + ', "features": [\n').encode()
    first = True
    async for batch in _batches(ctx, run, repo.polygons_geojson, "id"):
        # The geometry is PostGIS's GeoJSON text, spliced in rather than parsed and dumped.
        parts = [
            f'{{"type": "Feature", "id": {row.id}, "geometry": {row.geometry}, '
            f'"properties": {json.dumps(_polygon_properties(row))}}}'
            for row in batch
        ]
        yield (("" if first else ",\n") + ",\n".join(parts)).encode()
        first = False
    yield b"\n]}\n"


def _csv_text(rows: Sequence[Sequence]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def _polygon_csv_row(r: Row) -> tuple:
    """A polygon's CSV row, in `CSV_POLYGON_COLUMNS` order."""
    return (
        r.id,
        r.run_id,
        r.project_id,
        r.z,
        f"{r.lon:.7f}",
        f"{r.lat:.7f}",
        f"{r.area_m2:.2f}",
        _score(r.max_score),
        _score(r.mean_score),
        r.window_count,
        f"{r.west:.7f}",
        f"{r.south:.7f}",
        f"{r.east:.7f}",
        f"{r.north:.7f}",
    )


def _window_csv_row(r: Row) -> tuple:
    """A hit window's CSV row, in `CSV_WINDOW_COLUMNS` order."""
    return (
        r.window_id,
        r.run_id,
        r.project_id,
        "" if r.polygon_id is None else r.polygon_id,
        r.z,
        _score(r.score),
        f"{r.lon:.7f}",
        f"{r.lat:.7f}",
    )


async def csv_chunks(ctx: Context, run: RunVersion, rows: CsvRows) -> AsyncIterator[bytes]:
    """The run as CSV: one row per polygon (its centroid's lon/lat, its properties and bounding
    box), or with ``rows="windows"`` one row per hit window (its centre, score and polygon)."""
    if rows == "polygons":
        columns, fetch, key, row_of = CSV_POLYGON_COLUMNS, repo.polygons_centroids, "id", _polygon_csv_row
    else:
        columns, fetch, key, row_of = CSV_WINDOW_COLUMNS, repo.hit_windows, "window_id", _window_csv_row
    yield _csv_text([columns])
    async for batch in _batches(ctx, run, fetch, key):
        yield _csv_text([row_of(r) for r in batch])


def _write_gpkg_batch(path: Path, batch: Sequence, append: bool) -> None:
    """Append one batch of polygons to the GeoPackage (creating it on the first)."""
    import pyogrio.raw  # GDAL: loaded only by the one endpoint that needs it

    def column(name: str, dtype: type) -> np.ndarray:
        return np.array([getattr(r, name) for r in batch], dtype=dtype)

    pyogrio.raw.write(
        str(path),
        np.array([bytes(r.wkb) for r in batch], dtype=object),
        [
            column("id", np.int64),
            column("run_id", np.int32),
            column("project_id", np.int32),
            column("z", np.int16),
            column("area_m2", np.float64),
            np.round(column("max_score", np.float64), SCORE_DECIMALS),
            np.round(column("mean_score", np.float64), SCORE_DECIMALS),
            column("window_count", np.int32),
        ],
        ["polygon_id", "run_id", "project_id", "z", "area_m2", "max_score", "mean_score", "window_count"],
        layer=GPKG_LAYER,
        driver="GPKG",
        geometry_type="MultiPolygon",
        crs="EPSG:4326",
        append=append,
    )


async def write_gpkg(ctx: Context, run: RunVersion) -> Path:
    """The run's polygons in a GeoPackage (layer ``detections``) in a new temporary folder; the
    caller sends the file and removes the folder (`remove_export`)."""
    folder = Path(tempfile.mkdtemp(prefix=f"cliprs-run-{run.id}-"))
    path = folder / run.filename("detections.gpkg")
    try:
        written = False
        async for batch in _batches(ctx, run, repo.polygons_wkb, "id"):
            await asyncio.to_thread(_write_gpkg_batch, path, batch, written)
            written = True
        if not written:
            # A run without polygons still answers a valid (empty) layer with its fields.
            await asyncio.to_thread(_write_gpkg_batch, path, [], False)
    except BaseException:
        remove_export(path)
        raise
    return path


def remove_export(path: Path) -> None:
    """Remove a temporary export and its folder (SQLite may have left journal files beside it)."""
    shutil.rmtree(path.parent, ignore_errors=True)


def check_tile(z: int, x: int, y: int) -> None:
    """`InvalidInput` unless ``z/x/y`` is a Web-Mercator tile up to MAX_TILE_ZOOM."""
    if not 0 <= z <= MAX_TILE_ZOOM:
        raise InvalidInput(f"tile zoom {z} is out of range; use 0 to {MAX_TILE_ZOOM}")
    n = 1 << z
    if not (0 <= x < n and 0 <= y < n):
        raise InvalidInput(f"tile {z}/{x}/{y} does not exist; at zoom {z}, x and y go from 0 to {n - 1}")


async def tile_run(ctx: Context, run_id: int, z: int, x: int, y: int) -> RunVersion:
    """The finished run a tile request names, after checking the tile address (so a 304 can be
    answered before the tile is made)."""
    check_tile(z, x, y)
    return await finished_run(ctx, run_id)


async def run_tile(ctx: Context, run_id: int, z: int, x: int, y: int) -> tuple[RunVersion, bytes]:
    """The finished run and its Mapbox vector tile ``z/x/y``, read in one snapshot (the tile's
    ETag names the threshold its polygons were made at): layer ``detections`` (polygons with id,
    score = max score, mean_score, area_m2, window_count, z) and layer ``detection_points``
    (polygons too small to draw at this zoom as the centres of their bounding boxes, merged per
    ~1-px cell: score, polygons, window_count, area_m2)."""
    check_tile(z, x, y)
    async with repo.snapshot(ctx.engine) as conn:
        run = _finished(await repo.run(conn, run_id), run_id)
        body = await repo.run_tile(conn, run.id, z, x, y, MIN_POLYGON_PX, POINT_CELL)
    return run, body
