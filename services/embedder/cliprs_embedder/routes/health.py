"""Liveness and readiness."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from cliprs_embedder import service
from cliprs_embedder.routes.deps import Slot
from cliprs_embedder.schemas import EmbedderReadiness
from cliprs_http import health_router, readiness


async def readyz(slot: Slot) -> JSONResponse:
    """200 once the model is loaded, with its details; 503 naming why it is not."""
    info = slot.info()
    return await readiness(service.readiness_checks(slot), model=info.model_dump() if info else None)


router = health_router(readyz, EmbedderReadiness)
