"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from cliprs_embedder import service
from cliprs_embedder.routes.deps import Slot
from cliprs_embedder.schemas import EmbedderReadiness
from cliprs_http import readiness
from cliprs_http.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=EmbedderReadiness,
    responses={503: {"model": EmbedderReadiness, "description": "The model is not loaded (and why)"}},
)
async def readyz(slot: Slot) -> JSONResponse:
    """200 once the model is loaded, with its details; 503 naming why it is not."""
    info = slot.info()
    return await readiness(service.readiness_checks(slot), model=info.model_dump() if info else None)
