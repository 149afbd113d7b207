"""Liveness and readiness."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from cliprs_http import health_router, readiness
from cliprs_search.routes.deps import CtxDep
from cliprs_search.schemas.health import SearchReadiness
from cliprs_search.service.health import readiness_checks


async def readyz(ctx: CtxDep) -> JSONResponse:
    """Ready when the database, Redis and the embedder (itself ready) answer; also reports the
    live index version and the geocoder."""
    checks, model = await readiness_checks(ctx)
    return await readiness(checks, model=model)


router = health_router(readyz, SearchReadiness, tags=["index"])
