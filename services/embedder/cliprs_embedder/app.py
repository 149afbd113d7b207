"""The embedder's HTTP app: online embedding of query texts and images with the process's CLIP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cliprs.metrics import GpuCollector
from cliprs_embedder.routes import ROUTERS
from cliprs_embedder.routes.deps import TokenRefused
from cliprs_embedder.service import ModelSlot
from cliprs_embedder.settings import EmbedderSettings
from cliprs_http import error_body, install_error_handlers
from cliprs_http.observability import install_observability
from cliprs_model import ClipEncoder
from cliprs_model.settings import ModelSettings


def create_app(
    settings: EmbedderSettings | None = None,
    model_settings: ModelSettings | None = None,
    encoder: ClipEncoder | None = None,
) -> FastAPI:
    """The app; it loads the model at start-up unless ``encoder`` is given (tests pass one)."""
    slot = ModelSlot(model_settings or ModelSettings(), encoder)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await slot.load()
        yield

    app = FastAPI(title="CLIP-RS embedder", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings or EmbedderSettings()
    app.state.model = slot
    install_error_handlers(app)

    @app.exception_handler(TokenRefused)
    async def _refused(_: Request, exc: TokenRefused) -> JSONResponse:
        return JSONResponse(error_body("unauthorized", str(exc)), status_code=401)

    install_observability(app, "embedder", [GpuCollector()])
    for router in ROUTERS:
        app.include_router(router)
    return app
