"""Liveness and readiness."""

from __future__ import annotations

from fastapi import Depends
from fastapi.responses import JSONResponse

from cliprs_http import health_router, readiness
from cliprs_tiler.routes.deps import get_context
from cliprs_tiler.schemas import TilerReadiness
from cliprs_tiler.service import TilerContext, readiness_checks


async def readyz(ctx: TilerContext = Depends(get_context)) -> JSONResponse:
    """Ready when the database and Redis answer and the tile cache is writable; also lists the
    configured tile sources."""
    return await readiness(readiness_checks(ctx), sources=sorted(ctx.core.tile_sources))


router = health_router(readyz, TilerReadiness)
