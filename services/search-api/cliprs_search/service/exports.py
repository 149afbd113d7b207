"""A detection run's results as files (GeoJSON, GeoPackage, CSV) and as Mapbox vector tiles.

Only a finished run (state ``done``) has results to hand out: an unknown run is `NotFound`, any
other state is `RunNotDone` (409). GeoJSON and CSV are produced batch by batch from a server-side
cursor while the answer is being sent, so a run of hundreds of thousands of polygons never sits
in memory whole. A GeoPackage is an SQLite database, which cannot be written front to back: it
is written to a temporary file, batch by batch, and that file is then sent and deleted.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

from cliprs.errors import Conflict, InvalidInput, NotFound
from cliprs_search.context import Context
from cliprs_search.repository import exports as repo

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


class RunNotDone(Conflict):
    """The run has no results yet (queued or running) or never will (failed): answered 409."""


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
    """The run if it is done; `NotFound` for an unknown run, `RunNotDone` otherwise."""
    async with ctx.engine.connect() as conn:
        row = await repo.run(conn, run_id)
    if row is None:
        raise NotFound(f"no detection run {run_id}; list a project's runs with GET /v1/projects/{{id}}")
    if row["state"] != "done":
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
    async with ctx.engine.connect() as conn:
        async for batch in repo.polygons_geojson(conn, run.id):
            parts = []
            for row in batch:
                # The geometry is PostGIS's GeoJSON text, spliced in rather than parsed and dumped.
                parts.append(
                    f'{{"type": "Feature", "id": {row.id}, "geometry": {row.geometry}, '
                    f'"properties": {json.dumps(_polygon_properties(row))}}}'
                )
            if parts:
                yield (("" if first else ",\n") + ",\n".join(parts)).encode()
                first = False
    yield b"\n]}\n"


def _csv_text(rows: Sequence[Sequence]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


async def csv_chunks(ctx: Context, run: RunVersion, rows: CsvRows) -> AsyncIterator[bytes]:
    """The run as CSV: one row per polygon (its centroid's lon/lat, its properties and bounding
    box), or with ``rows="windows"`` one row per hit window (its centre, score and polygon)."""
    if rows == "polygons":
        yield _csv_text([CSV_POLYGON_COLUMNS])
        async with ctx.engine.connect() as conn:
            async for batch in repo.polygons_centroids(conn, run.id):
                yield _csv_text(
                    [
                        (
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
                        for r in batch
                    ]
                )
        return
    yield _csv_text([CSV_WINDOW_COLUMNS])
    async with ctx.engine.connect() as conn:
        async for batch in repo.hit_windows(conn, run.id):
            yield _csv_text(
                [
                    (
                        r.window_id,
                        r.run_id,
                        r.project_id,
                        "" if r.polygon_id is None else r.polygon_id,
                        r.z,
                        _score(r.score),
                        f"{r.lon:.7f}",
                        f"{r.lat:.7f}",
                    )
                    for r in batch
                ]
            )


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
        async with ctx.engine.connect() as conn:
            async for batch in repo.polygons_wkb(conn, run.id):
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


async def run_tile(ctx: Context, run: RunVersion, z: int, x: int, y: int) -> bytes:
    """The run's Mapbox vector tile ``z/x/y``: layer ``detections`` (polygons with id, score =
    max score, mean_score, area_m2, window_count, z) and layer ``detection_points`` (polygons too
    small to draw at this zoom as the centres of their bounding boxes, merged per ~1-px cell:
    score, polygons, window_count, area_m2)."""
    async with ctx.engine.connect() as conn:
        return await repo.run_tile(conn, run.id, z, x, y, MIN_POLYGON_PX, POINT_CELL)
