"""Areas, their ingest jobs, deleting an area, and the live index version."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from cliprs_http.schemas import ERROR_RESPONSES
from cliprs_search.auth import READ, TILE_BUDGET, write
from cliprs_search.context import Context
from cliprs_search.routes.deps import get_context
from cliprs_search.schemas import Area, AreaCreated, AreaDeletion, AreaRequest, AreaWithJob, IndexInfo, Job
from cliprs_search.service import areas

router = APIRouter(tags=["areas"], responses=ERROR_RESPONSES)


@router.post("/v1/areas", status_code=202, dependencies=[Depends(write("area.create")), TILE_BUDGET])
async def create_area(body: AreaRequest, ctx: Context = Depends(get_context)) -> AreaCreated:
    """Create an area and start ingesting it (fetch, embed, index); poll its job."""
    return await areas.create_area(ctx, body)


@router.get("/v1/areas", dependencies=[Depends(READ)])
async def list_areas(ctx: Context = Depends(get_context)) -> list[AreaWithJob]:
    """Every area with its latest ingest job."""
    return await areas.list_areas(ctx)


@router.get("/v1/areas/{area_id}", dependencies=[Depends(READ)])
async def get_area(area_id: int, ctx: Context = Depends(get_context)) -> Area:
    """One area (404 once it is deleted)."""
    return await areas.get_area(ctx, area_id)


@router.delete("/v1/areas/{area_id}", status_code=202, dependencies=[Depends(write("area.delete"))])
async def delete_area(
    area_id: int,
    force: bool = Query(False, description="Delete even while the area is still being ingested"),
    ctx: Context = Depends(get_context),
) -> AreaDeletion:
    """Delete an area: the indexer publishes an index version without its vectors, then removes
    its windows, the tiles no other area uses, and the area itself. Poll ``GET /v1/areas/{id}``
    until it answers 404."""
    return await areas.delete_area(ctx, area_id, force)


@router.get("/v1/jobs/{job_id}", dependencies=[Depends(READ)])
async def get_job(job_id: int, ctx: Context = Depends(get_context)) -> Job:
    """Progress of an ingest job: state and tile/window counts."""
    return await areas.get_job(ctx, job_id)


@router.get("/v1/index", tags=["index"], dependencies=[Depends(READ)])
async def index_info(ctx: Context = Depends(get_context)) -> IndexInfo:
    """The index version this process serves: its shards, their kind (flat or IVF-PQ), sizes and
    tuned search parameters."""
    return areas.index_info(ctx)
