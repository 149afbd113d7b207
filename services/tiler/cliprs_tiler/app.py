"""The tiler's HTTP side: map tiles and window pixels for the web page and the API, plan
previews, and per-zoom job progress."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from PIL import Image
from pydantic import BaseModel, Field
from sqlalchemy import text

from cliprs.db.engine import ping, sync_engine
from cliprs.errors import InvalidInput, NotFound
from cliprs.settings import CoreSettings
from cliprs.tilecache import find_tile, store_tile
from cliprs.tiles import parse_area, parse_zoom_spec, plan_summary, tile_polygon_wkt, validate_zooms
from cliprs.windows import split_window_id
from cliprs_http import install_error_handlers, readiness_response, redis_ping, run_checks
from cliprs_tiler.fetch import job_progress
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.sources import SourcePool, TileFetchError
from cliprs_tiler.splice import covering_tiles, splice

MEDIA = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
log = logging.getLogger("cliprs.tiler")


class PlanRequest(BaseModel):
    bbox: list[float] | None = Field(None, description="[min_lon, min_lat, max_lon, max_lat]")
    polygon: dict | None = Field(None, description="a GeoJSON Polygon (or a Feature holding one), lon/lat")
    zooms: list[int] = Field(..., description="zoom levels to plan, e.g. [12, 13, 14]")


def create_app(core: CoreSettings | None = None, settings: TilerSettings | None = None) -> FastAPI:
    core = core or CoreSettings()
    settings = settings or TilerSettings()
    sources = SourcePool(core, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await sources.aclose()

    app = FastAPI(title="CLIP-RS tiler", version="0.1.0", lifespan=lifespan)
    # The map page is served from another origin and loads tiles with fetch().
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["*"],
        expose_headers=["ETag"],
    )
    install_error_handlers(app)
    engine = sync_engine(core.database_url)

    async def load_tile(source: str, z: int, x: int, y: int) -> tuple[bytes, str] | None:
        """A tile from the cache, else from its source (and then cached); None if it has none."""
        path = find_tile(core.tile_cache_dir, source, z, x, y)
        if path is not None:
            return await asyncio.to_thread(path.read_bytes), path.suffix[1:]
        try:
            got = await sources.get(source).fetch(z, x, y)
        except TileFetchError as exc:
            log.info("tile %s/%s/%s of %r not available: %s", z, x, y, source, exc)
            return None
        await asyncio.to_thread(store_tile, core.tile_cache_dir, source, z, x, y, got.ext, got.data)
        return got.data, got.ext

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        def cache_writable() -> dict:
            core.tile_cache_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(core.tile_cache_dir, os.W_OK):
                raise PermissionError(f"{core.tile_cache_dir} is not writable")
            return {"path": str(core.tile_cache_dir)}

        ok, report = await run_checks(
            {
                "database": lambda: ping(core.database_url),
                "redis": lambda: redis_ping(core.redis_url),
                "tile_cache": cache_writable,
            }
        )
        return readiness_response(ok, report, sources=sorted(core.tile_sources))

    def _tile_response(request: Request, data: bytes, ext: str) -> Response:
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=86400"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=MEDIA[ext], headers=headers)

    @app.get("/tiles/{source}/{z}/{x}/{y}")
    async def tile(source: str, z: int, x: int, y: str, request: Request) -> Response:
        """A map tile of an indexed area (``y`` may carry an extension, e.g. ``1234.png``)."""
        try:
            y_num = int(y.split(".", 1)[0])
        except ValueError:
            raise InvalidInput("tile y must be an integer, optionally followed by an extension") from None
        if not 0 <= z <= core.max_zoom or not (0 <= x < 2**z and 0 <= y_num < 2**z):
            raise InvalidInput(f"no tile {z}/{x}/{y_num}: z must be 0..{core.max_zoom}, x and y 0..2^z-1")
        if source not in core.tile_sources:
            raise NotFound(f"unknown tile source {source!r}")
        if find_tile(core.tile_cache_dir, source, z, x, y_num) is None and not await asyncio.to_thread(
            _inside_some_area, engine, source, z, x, y_num
        ):
            raise NotFound(f"tile {z}/{x}/{y_num} is outside every area of source {source!r}")
        got = await load_tile(source, z, x, y_num)
        if got is None:
            raise NotFound(f"tile {z}/{x}/{y_num} is not available from source {source!r}")
        return _tile_response(request, *got)

    @app.get("/windows/{window_id}.png")
    async def window_png(window_id: int) -> Response:
        """The exact pixels of an indexed window as PNG, spliced from neighbouring tiles when the
        window straddles tile edges."""
        row = await asyncio.to_thread(_window_row, engine, window_id)
        needed = covering_tiles(row.z, row.x, row.y, row.box, row.tile_size)
        loaded = await asyncio.gather(*(load_tile(row.source, row.z, tx, ty) for tx, ty in needed))
        if (row.x, row.y) in needed and loaded[needed.index((row.x, row.y))] is None:
            raise NotFound(f"the tile of window {window_id} is neither cached nor available from its source")
        tiles = {xy: got[0] for xy, got in zip(needed, loaded, strict=True) if got is not None}
        png = await asyncio.to_thread(_splice_png, row, tiles)
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/v1/plan")
    def plan_get(
        zooms: str = Query(..., description="zoom levels: a range 10-14 or a list 10,12"),
        bbox: str = Query(..., description="min_lon,min_lat,max_lon,max_lat"),
    ) -> dict:
        """How many tiles an area would need, per zoom, and whether that is within the limit."""
        return _plan(parse_area(bbox=bbox), parse_zoom_spec(zooms, core.max_zoom))

    @app.post("/v1/plan")
    def plan_post(body: PlanRequest) -> dict:
        """The same for a drawn polygon (GeoJSON) or a bbox: tiles per zoom before any fetching."""
        return _plan(parse_area(bbox=body.bbox, polygon=body.polygon), body.zooms)

    def _plan(area, zooms: list[int]) -> dict:
        return plan_summary(area, validate_zooms(zooms, core.max_zoom), core.max_tiles_per_area)

    @app.get("/v1/jobs/{job_id}/progress")
    def progress(job_id: int) -> dict:
        """Per-zoom progress of an ingest job (planned, fetched, cached, failed, pending, embedded)
        from the tiles table, with the first failures and their reasons."""
        with engine.connect() as conn:
            return job_progress(conn, job_id)

    return app


def _inside_some_area(engine, source: str, z: int, x: int, y: int) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    # Overlapping, not just touching: the rule the planner uses.
                    "SELECT EXISTS (SELECT 1 FROM areas WHERE source = :s AND "
                    "ST_Relate(bbox, ST_GeomFromText(:wkt, 4326), 'T********'))"
                ),
                {"s": source, "wkt": tile_polygon_wkt(z, x, y)},
            ).scalar()
        )


@dataclass(frozen=True)
class _WindowRow:
    source: str
    z: int
    x: int
    y: int
    box: tuple[int, int, int, int]  # in the tile's pixel frame; may reach into neighbours
    tile_size: int


def _window_row(engine, window_id: int) -> _WindowRow:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT w.px_x0, w.px_y0, w.px_x1, w.px_y1, t.source, t.z, t.x, t.y, t.tile_size "
                "FROM windows w JOIN tiles t ON t.id = w.tile_id WHERE w.id = :id"
            ),
            {"id": window_id},
        ).one_or_none()
    if row is None:
        tile_id, index = split_window_id(window_id)
        raise NotFound(f"no window {window_id} (tile {tile_id}, index {index}) is indexed")
    if row.tile_size is None:
        raise NotFound(f"the tile of window {window_id} has not been fetched")
    return _WindowRow(
        row.source, row.z, row.x, row.y, (row.px_x0, row.px_y0, row.px_x1, row.px_y1), row.tile_size
    )


def _splice_png(row: _WindowRow, tiles: dict[tuple[int, int], bytes]) -> bytes:
    def read(x: int, y: int) -> Image.Image | None:
        data = tiles.get((x, y))
        return None if data is None else Image.open(io.BytesIO(data))

    image = splice(row.z, row.x, row.y, row.box, row.tile_size, read)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
