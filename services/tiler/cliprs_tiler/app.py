"""The tiler's HTTP side: map tiles and window crops for the web page and the API."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from PIL import Image
from sqlalchemy import text

from cliprs.db.engine import ping, sync_engine
from cliprs.errors import InvalidInput, NotFound
from cliprs.http import install_error_handlers, readiness_response, redis_ping, run_checks
from cliprs.settings import CoreSettings
from cliprs.tilecache import find_tile, store_tile
from cliprs.tiles import tile_polygon_wkt
from cliprs.windows import split_window_id
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.sources import TileFetchError, open_source

MEDIA = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


def create_app(core: CoreSettings | None = None, settings: TilerSettings | None = None) -> FastAPI:
    core = core or CoreSettings()
    settings = settings or TilerSettings()
    app = FastAPI(title="CLIP-RS tiler", version="0.1.0")
    # The map page is served from another origin and loads tiles with fetch().
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET"],
        allow_headers=["*"],
        expose_headers=["ETag"],
    )
    install_error_handlers(app)
    engine = sync_engine(core.database_url)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> Response:
        def cache_writable() -> dict:
            core.tile_cache_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(core.tile_cache_dir, os.W_OK):
                raise PermissionError(f"{core.tile_cache_dir} is not writable")
            return {"path": str(core.tile_cache_dir)}

        ok, report = run_checks(
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
        path = find_tile(core.tile_cache_dir, source, z, x, y_num)
        if path is None:
            if not await asyncio.to_thread(_inside_some_area, engine, source, z, x, y_num):
                raise NotFound(f"tile {z}/{x}/{y_num} is outside every area of source {source!r}")
            src = open_source(source, core, settings)
            try:
                got = await src.fetch(z, x, y_num)
            except TileFetchError as exc:
                raise NotFound(f"tile {z}/{x}/{y_num} is not available from {source!r}: {exc}") from None
            finally:
                await src.aclose()
            await asyncio.to_thread(store_tile, core.tile_cache_dir, source, z, x, y_num, got.ext, got.data)
            return _tile_response(request, got.data, got.ext)
        return _tile_response(request, await asyncio.to_thread(path.read_bytes), path.suffix[1:])

    @app.get("/windows/{window_id}.png")
    def window_png(window_id: int) -> Response:
        """The exact pixels of an indexed window, as PNG."""
        png = window_pixels_png(engine, core, window_id)
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})

    return app


def _inside_some_area(engine, source: str, z: int, x: int, y: int) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM areas WHERE source = :s AND "
                    "ST_Intersects(bbox, ST_GeomFromText(:wkt, 4326)))"
                ),
                {"s": source, "wkt": tile_polygon_wkt(z, x, y)},
            ).scalar()
        )


def window_pixels_png(engine, core: CoreSettings, window_id: int) -> bytes:
    """Crop a window out of its cached tile and encode it as PNG."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT w.px_x0, w.px_y0, w.px_x1, w.px_y1, t.source, t.z, t.x, t.y "
                "FROM windows w JOIN tiles t ON t.id = w.tile_id WHERE w.id = :id"
            ),
            {"id": window_id},
        ).one_or_none()
    if row is None:
        tile_id, index = split_window_id(window_id)
        raise NotFound(f"no window {window_id} (tile {tile_id}, index {index}) is indexed")
    path = find_tile(core.tile_cache_dir, row.source, row.z, row.x, row.y)
    if path is None:
        raise NotFound(f"the tile of window {window_id} is no longer in the tile cache")
    with Image.open(path) as im:
        crop = im.convert("RGB").crop((row.px_x0, row.px_y0, row.px_x1, row.px_y1))
    buf = io.BytesIO()
    crop.save(buf, format="PNG")
    return buf.getvalue()
