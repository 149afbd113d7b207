"""Plan previews (tiles per zoom before any fetching) and per-zoom progress of ingest jobs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from cliprs_http.schemas import ERROR_RESPONSES
from cliprs_tiler import service
from cliprs_tiler.routes.deps import get_context, require_read_key
from cliprs_tiler.schemas import JobProgress, PlanRequest, PlanSummary
from cliprs_tiler.service import TilerContext

router = APIRouter(tags=["plans"], responses=ERROR_RESPONSES)


# Without "message" unless above the limit, as the planner reports it.
@router.get("/v1/plan", response_model=PlanSummary, response_model_exclude_none=True)
def plan_get(
    zooms: str = Query(..., description="zoom levels: a range 10-14 or a list 10,12"),
    bbox: str = Query(..., description="min_lon,min_lat,max_lon,max_lat"),
    ctx: TilerContext = Depends(get_context),
) -> PlanSummary:
    """How many tiles an area would need, per zoom, and whether that is within the limit."""
    return service.plan_for_query(ctx, bbox, zooms)


@router.post("/v1/plan", response_model=PlanSummary, response_model_exclude_none=True)
def plan_post(body: PlanRequest, ctx: TilerContext = Depends(get_context)) -> PlanSummary:
    """The same for a drawn polygon (GeoJSON) or a bbox: tiles per zoom before any fetching."""
    return service.plan_for_request(ctx, body)


# Plan previews are public (tile arithmetic, no data); progress shows an area's jobs.
@router.get("/v1/jobs/{job_id}/progress", dependencies=[Depends(require_read_key)])
def progress(job_id: int, ctx: TilerContext = Depends(get_context)) -> JobProgress:
    """Per-zoom progress of an ingest job (planned, fetched, cached, failed, pending, embedded)
    from the tiles table, with the first failures and their reasons."""
    return service.progress(ctx, job_id)
