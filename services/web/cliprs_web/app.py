"""FastAPI app of the web service: the static page, its runtime config, health and readiness."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from cliprs_web import __version__
from cliprs_web.settings import WebSettings

log = logging.getLogger("cliprs_web")

STATIC_DIR = Path(__file__).parent / "static"
# Files build.sh copies from node_modules; without them the page cannot draw a map.
VENDOR_FILES = ("vendor/maplibre-gl.js", "vendor/maplibre-gl.css")
READY_TIMEOUT_S = 2.0


def _check(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": ok, "detail": detail}


def check_vendor(static_dir: Path) -> dict[str, Any]:
    """Is the vendored MapLibre bundle in place (``build.sh`` has run)?"""
    missing = [name for name in VENDOR_FILES if not (static_dir / name).is_file()]
    if missing:
        return _check(False, f"missing {', '.join(missing)}: run services/web/build.sh")
    return _check(True, "maplibre-gl bundle present")


async def check_search_api(base_url: str, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Does the search-api's ``/readyz`` answer with a 2xx status within the timeout?"""
    url = f"{base_url}/readyz"
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(url)
    except httpx.TimeoutException:
        return _check(False, f"{url}: no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return _check(False, f"{url}: {type(exc).__name__}: {exc}")
    if not response.is_success:
        return _check(False, f"{url}: HTTP {response.status_code}")
    return _check(True, f"{url}: HTTP {response.status_code}")


def create_app(settings: WebSettings | None = None, *, static_dir: Path | None = None) -> FastAPI:
    """Build the app; ``static_dir`` overrides the packaged ``static/`` folder (tests)."""
    settings = settings or WebSettings()
    static_dir = static_dir or STATIC_DIR
    app = FastAPI(title="CLIP-RS web", version=__version__, docs_url=None, redoc_url=None)
    app.state.settings = settings
    log.info(
        "web page: search-api %s, tiler %s, mapbox token %s",
        settings.search_api_url,
        settings.tiler_url,
        "configured" if settings.mapbox_token else "not set",
    )

    @app.get("/config.json")
    def config() -> dict[str, str | None]:
        """Runtime config the page reads on load: the public URLs it must call."""
        token = settings.mapbox_token
        return {
            "searchApiUrl": settings.search_api_url.rstrip("/"),
            "tilerUrl": settings.tiler_url.rstrip("/"),
            "mapboxToken": token.get_secret_value() if token else None,
        }

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: the vendored bundle exists and the search-api's /readyz answers."""
        checks = {
            "vendor": check_vendor(static_dir),
            "search_api": await check_search_api(settings.search_api_check_url),
        }
        if all(check["ok"] for check in checks.values()):
            return JSONResponse({"status": "ready", "checks": checks})
        return JSONResponse({"status": "unavailable", "checks": checks}, status_code=503)

    # Last, so the routes above win: index.html at "/", app.js, app.css, js/, vendor/.
    app.mount("/", StaticFiles(directory=static_dir, html=True), name="static")
    return app
