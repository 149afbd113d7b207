"""What the tiler's HTTP API does, without the HTTP: map tiles from the cache or their source,
window pixels spliced from tiles, plan previews and job progress."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
from dataclasses import dataclass

from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from cliprs.db.engine import ping, sync_engine
from cliprs.errors import InvalidInput, NotFound
from cliprs.settings import CoreSettings
from cliprs.tilecache import find_tile, store_tile
from cliprs.tiles import Area, parse_area, parse_zoom_spec, plan_summary, validate_zooms
from cliprs.windows import split_window_id
from cliprs_http import Check, redis_ping
from cliprs_tiler import repository
from cliprs_tiler.schemas import JobProgress, PlanRequest, PlanSummary
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.sources import SourcePool, TileFetchError, is_remote
from cliprs_tiler.splice import covering_tiles, splice

log = logging.getLogger("cliprs.tiler")

PROGRESS_FAILURES = 20  # failed tiles listed in a job's progress
_COUNT_KEYS = ("planned", "fetched", "cached", "failed", "pending", "embedded")


@dataclass
class TilerContext:
    """The app's state; nothing connects until first use (the engine and the sources are lazy)."""

    core: CoreSettings
    settings: TilerSettings
    sources: SourcePool
    engine: Engine

    @classmethod
    def build(cls, core: CoreSettings, settings: TilerSettings) -> TilerContext:
        return cls(core, settings, SourcePool(core, settings), sync_engine(core.database_url))

    async def aclose(self) -> None:
        await self.sources.aclose()


@dataclass(frozen=True)
class TileImage:
    data: bytes
    ext: str  # png, jpg or webp

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.data).hexdigest()[:32] + '"'


# --------------------------------------------------------------------------- readiness


def readiness_checks(ctx: TilerContext) -> dict[str, Check]:
    """The database, Redis, and a writable tile cache."""
    core = ctx.core

    def tile_cache() -> dict:
        core.tile_cache_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(core.tile_cache_dir, os.W_OK):
            raise PermissionError(f"{core.tile_cache_dir} is not writable")
        return {"path": str(core.tile_cache_dir)}

    return {
        "database": lambda: ping(core.database_url),
        "redis": lambda: redis_ping(core.redis_url),
        "tile_cache": tile_cache,
    }


# --------------------------------------------------------------------------- tiles and windows


async def load_tile(
    ctx: TilerContext, source: str, z: int, x: int, y: int, *, may_fetch: bool = True
) -> TileImage | None:
    """A tile from the cache, else (when ``may_fetch``) from its source and then cached; None
    if it has none."""
    cache_dir = ctx.core.tile_cache_dir
    path = find_tile(cache_dir, source, z, x, y)
    if path is not None:
        return TileImage(await asyncio.to_thread(path.read_bytes), path.suffix[1:])
    if not may_fetch:
        return None
    try:
        got = await ctx.sources.get(source).fetch(z, x, y)
    except TileFetchError as exc:
        log.info("tile %s/%s/%s of %r not available: %s", z, x, y, source, exc)
        return None
    await asyncio.to_thread(store_tile, cache_dir, source, z, x, y, got.ext, got.data, got.mask)
    return TileImage(got.data, got.ext)


def is_remote_source(ctx: TilerContext, source: str) -> bool:
    """Whether the source bills per tile (HTTP): then only planned tiles are ever fetched."""
    return is_remote(ctx.core.tile_sources.get(source, ""))


def parse_tile_y(y: str) -> int:
    """``1234`` or ``1234.png`` -> 1234."""
    try:
        return int(y.split(".", 1)[0])
    except ValueError:
        raise InvalidInput("tile y must be an integer, optionally followed by an extension") from None


async def map_tile(ctx: TilerContext, source: str, z: int, x: int, y: int) -> TileImage:
    """A map tile: from the cache, or fetched now when the source may be asked for it; anything
    else is refused (the tiler is no open proxy to its sources).

    A remote (HTTP, billed) source is asked only for a tile some area planned (its tiles at its
    zooms: a row of ``tiles``), so no request of the map can spend more than the areas did. A
    local source (folder, MBTiles, raster) costs nothing to read: any tile inside one of its
    areas is rendered on demand, at any zoom.
    """
    core = ctx.core
    if not 0 <= z <= core.max_zoom or not (0 <= x < 2**z and 0 <= y < 2**z):
        raise InvalidInput(f"no tile {z}/{x}/{y}: z must be 0..{core.max_zoom}, x and y 0..2^z-1")
    if source not in core.tile_sources:
        raise NotFound(f"unknown tile source {source!r}")
    if find_tile(core.tile_cache_dir, source, z, x, y) is None:
        await _check_may_fetch(ctx, source, z, x, y)
    got = await load_tile(ctx, source, z, x, y)
    if got is None:
        raise NotFound(f"tile {z}/{x}/{y} is not available from source {source!r}")
    return got


async def _check_may_fetch(ctx: TilerContext, source: str, z: int, x: int, y: int) -> None:
    """NotFound unless the (uncached) tile may be had from its source (see `map_tile`)."""
    if is_remote_source(ctx, source):
        planned = await asyncio.to_thread(repository.planned_tiles, ctx.engine, source, z, [(x, y)])
        if planned:
            return
    inside = await asyncio.to_thread(repository.tile_inside_some_area, ctx.engine, source, z, x, y)
    if not inside:
        raise NotFound(f"tile {z}/{x}/{y} is outside every area of source {source!r}")
    if is_remote_source(ctx, source):
        raise NotFound(
            f"tile {z}/{x}/{y} of remote source {source!r} is not planned by any area: only an "
            "area's own tiles at its zooms are fetched from a remote source (the map shows the "
            "zooms each area planned; ingest an area with this zoom to see it)"
        )


async def window_png(ctx: TilerContext, window_id: int) -> bytes:
    """The exact pixels of an indexed window as PNG, spliced from neighbouring tiles when the
    window straddles tile edges; neighbours that cannot be had stay black. From a remote source
    only planned neighbours are fetched; the others are used only when cached."""
    row = await asyncio.to_thread(repository.window_row, ctx.engine, window_id)
    if row is None:
        tile_id, index = split_window_id(window_id)
        raise NotFound(f"no window {window_id} (tile {tile_id}, index {index}) is indexed")
    if row.tile_size is None:
        raise NotFound(f"the tile of window {window_id} has not been fetched")
    needed = covering_tiles(row.z, row.x, row.y, row.box, row.tile_size)
    if is_remote_source(ctx, row.source):
        fetchable = await asyncio.to_thread(repository.planned_tiles, ctx.engine, row.source, row.z, needed)
    else:
        fetchable = set(needed)
    loaded = await asyncio.gather(
        *(load_tile(ctx, row.source, row.z, tx, ty, may_fetch=(tx, ty) in fetchable) for tx, ty in needed)
    )
    if (row.x, row.y) in needed and loaded[needed.index((row.x, row.y))] is None:
        raise NotFound(f"the tile of window {window_id} is neither cached nor available from its source")
    tiles = {xy: got.data for xy, got in zip(needed, loaded, strict=True) if got is not None}
    return await asyncio.to_thread(_splice_png, row, row.tile_size, tiles)


def _splice_png(row: repository.WindowRow, tile_size: int, tiles: dict[tuple[int, int], bytes]) -> bytes:
    def read(x: int, y: int) -> Image.Image | None:
        data = tiles.get((x, y))
        return None if data is None else Image.open(io.BytesIO(data))

    image = splice(row.z, row.x, row.y, row.box, tile_size, read)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- plans and progress


def plan(ctx: TilerContext, area: Area, zooms: list[int]) -> PlanSummary:
    """How many tiles an area needs, per zoom, and whether that is within the platform's limit."""
    zooms = validate_zooms(zooms, ctx.core.max_zoom)
    return PlanSummary(**plan_summary(area, zooms, ctx.core.max_tiles_per_area))


def plan_for_query(ctx: TilerContext, bbox: str, zooms: str) -> PlanSummary:
    """The plan for ``bbox=min_lon,min_lat,max_lon,max_lat`` and a zoom spec like ``10-14``."""
    return plan(ctx, parse_area(bbox=bbox), parse_zoom_spec(zooms, ctx.core.max_zoom))


def plan_for_request(ctx: TilerContext, body: PlanRequest) -> PlanSummary:
    """The plan for a drawn polygon (GeoJSON) or a bbox."""
    return plan(ctx, parse_area(bbox=body.bbox, polygon=body.polygon), body.zooms)


def job_progress(conn: Connection, job_id: int, max_failures: int = PROGRESS_FAILURES) -> JobProgress:
    """Per-zoom progress of a job, computed from the tiles table (the source of truth).

    Every planned tile is in exactly one of: ``fetched`` (from the source during this job),
    ``cached`` (already fetched before the job was created, so taken from the tile cache),
    ``failed`` (with its reason), ``pending``. ``embedded`` counts the fetched or cached tiles
    that the embedder has finished.
    """
    job = repository.job_with_area(conn, job_id)
    if job is None:
        raise NotFound(f"no ingest job {job_id}")
    zooms = repository.job_zoom_counts(conn, job_id)
    totals = {k: sum(z[k] for z in zooms) for k in _COUNT_KEYS}
    if not zooms:  # not planned by the tiler yet: the API's count is all there is
        totals["planned"] = totals["pending"] = job["tiles_planned"]
    return JobProgress(
        job_id=job["id"],
        area_id=job["area_id"],
        source=job["source"],
        state=job["state"],
        error=job["error"],
        totals=totals,
        zooms=zooms,
        failures=repository.area_failures(conn, job["area_id"], max_failures),
    )


def progress(ctx: TilerContext, job_id: int) -> JobProgress:
    with ctx.engine.connect() as conn:
        return job_progress(conn, job_id)
