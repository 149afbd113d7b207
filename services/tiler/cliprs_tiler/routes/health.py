"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from cliprs_http import readiness
from cliprs_http.schemas import Health
from cliprs_tiler.routes.deps import get_context
from cliprs_tiler.schemas import TilerReadiness
from cliprs_tiler.service import TilerContext, readiness_checks

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    """The process is up (it may not be ready)."""
    return Health()


@router.get(
    "/readyz",
    response_model=TilerReadiness,
    responses={503: {"model": TilerReadiness, "description": "A check failed; retry after Retry-After"}},
)
async def readyz(ctx: TilerContext = Depends(get_context)) -> JSONResponse:
    """Ready when the database and Redis answer and the tile cache is writable; also lists the
    configured tile sources."""
    return await readiness(readiness_checks(ctx), sources=sorted(ctx.core.tile_sources))
