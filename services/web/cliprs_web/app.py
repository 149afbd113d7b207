"""FastAPI app of the web service: the static page, its runtime config, health and readiness."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from cliprs_http import install_error_handlers
from cliprs_http.observability import install_observability
from cliprs_web import __version__
from cliprs_web.routes import router
from cliprs_web.service import STATIC_DIR, VENDOR_FILES
from cliprs_web.settings import WebSettings

__all__ = ["STATIC_DIR", "VENDOR_FILES", "create_app"]

log = logging.getLogger("cliprs_web")


def create_app(settings: WebSettings | None = None, *, static_dir: Path | None = None) -> FastAPI:
    """Build the app; ``static_dir`` overrides the packaged ``static/`` folder (tests)."""
    settings = settings or WebSettings()
    app = FastAPI(title="CLIP-RS web", version=__version__, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.static_dir = static_dir or STATIC_DIR
    log.info(
        "web page: search-api %s, tiler %s, mapbox token %s",
        settings.search_api_url,
        settings.tiler_url,
        "configured" if settings.mapbox_token else "not set",
    )
    install_error_handlers(app)
    install_observability(app, "web")
    app.include_router(router)
    # Last, so the routes above win: index.html at "/", app.js, app.css, js/, vendor/.
    app.mount("/", StaticFiles(directory=app.state.static_dir, html=True), name="static")
    return app
