"""HTTP routes of the web service: the page's runtime config, liveness and readiness. The page
itself (index.html, scripts, vendored bundle) is the static mount that ``create_app`` adds last."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cliprs_http import health_router, readiness_response
from cliprs_web import service
from cliprs_web.schemas import PageConfig
from cliprs_web.settings import WebSettings

router = APIRouter()


def _settings(request: Request) -> WebSettings:
    return request.app.state.settings


def _static_dir(request: Request) -> Path:
    return request.app.state.static_dir


@router.get("/config.json", response_model=PageConfig)
def config(request: Request) -> PageConfig:
    """Runtime config the page reads on load: the public URLs it must call."""
    return service.page_config(_settings(request))


async def readyz(request: Request) -> JSONResponse:
    """Readiness: the vendored bundle exists and the search-api's /readyz answers."""
    ok, checks = await service.readiness_checks(_settings(request), _static_dir(request))
    return readiness_response(ok, checks)


router.include_router(health_router(readyz))
