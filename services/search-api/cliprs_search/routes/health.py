"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from cliprs_http import readiness
from cliprs_http.schemas import Health
from cliprs_search.context import Context
from cliprs_search.routes.deps import get_context
from cliprs_search.schemas import SearchReadiness
from cliprs_search.service.health import readiness_checks

router = APIRouter(tags=["index"])


@router.get("/healthz")
async def healthz() -> Health:
    """The process is up (it may not be ready)."""
    return Health()


@router.get(
    "/readyz",
    response_model=SearchReadiness,
    responses={503: {"model": SearchReadiness, "description": "A check failed; retry after Retry-After"}},
)
async def readyz(ctx: Context = Depends(get_context)) -> JSONResponse:
    """Ready when the database, Redis and the embedder (itself ready) answer; also reports the
    live index version and the geocoder."""
    checks, model = await readiness_checks(ctx)
    return await readiness(checks, model=model)
