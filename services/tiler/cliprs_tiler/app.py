"""The tiler's HTTP side: map tiles and window pixels for the web page and the API, plan
previews, and per-zoom job progress. Builds the context and includes the routers of
`cliprs_tiler.routes`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from cliprs.metrics import QueueCollector
from cliprs.settings import CoreSettings
from cliprs_http import install_error_handlers
from cliprs_http.errors import error_body
from cliprs_http.observability import install_observability
from cliprs_tiler.access import KeyRefused
from cliprs_tiler.routes import health, plans, tiles
from cliprs_tiler.service import TilerContext
from cliprs_tiler.settings import TilerSettings

__all__ = ["create_app"]


def create_app(core: CoreSettings | None = None, settings: TilerSettings | None = None) -> FastAPI:
    core = core or CoreSettings()
    settings = settings or TilerSettings()
    ctx = TilerContext.build(core, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await ctx.aclose()

    app = FastAPI(title="CLIP-RS tiler", version="0.1.0", lifespan=lifespan)
    app.state.ctx = ctx
    # The map page is served from another origin and loads tiles with fetch().
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["*"],
        expose_headers=["ETag"],
    )
    install_error_handlers(app)

    @app.exception_handler(KeyRefused)
    async def _refused(_: Request, exc: KeyRefused) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)

    install_observability(app, "tiler", [QueueCollector(core.redis_url)])
    for module in (health, tiles, plans):
        app.include_router(module.router)
    return app
