"""Areas, their ingest jobs, deleting an area, and the live index version."""

from __future__ import annotations

from fastapi import Query

from cliprs_search.access import QUOTA_RESPONSES, READ, WRITE, audited
from cliprs_search.routes.deps import CtxDep, WriterDep, api_router
from cliprs_search.schemas.areas import (
    Area,
    AreaCreated,
    AreaDeletion,
    AreaRequest,
    AreaWithJob,
    IndexInfo,
    Job,
)
from cliprs_search.service import areas

router = api_router("areas", READ)
writes = api_router("areas", WRITE)


@writes.post("/areas", status_code=202, dependencies=[audited("area.create")], responses=QUOTA_RESPONSES)
async def create_area(body: AreaRequest, ctx: CtxDep, caller: WriterDep) -> AreaCreated:
    """Create an area and start ingesting it (fetch, embed, index); poll its job."""
    return await areas.create_area(ctx, body, caller)


@router.get("/areas")
async def list_areas(ctx: CtxDep) -> list[AreaWithJob]:
    """Every area with its latest ingest job."""
    return await areas.list_areas(ctx)


@router.get("/areas/{area_id}")
async def get_area(area_id: int, ctx: CtxDep) -> Area:
    """One area (404 once it is deleted)."""
    return await areas.get_area(ctx, area_id)


@writes.delete("/areas/{area_id}", status_code=202, dependencies=[audited("area.delete")])
async def delete_area(
    area_id: int,
    ctx: CtxDep,
    force: bool = Query(False, description="Delete even while the area is still being ingested"),
) -> AreaDeletion:
    """Delete an area: the indexer publishes an index version without its vectors, then removes
    its windows, the tiles no other area uses, and the area itself. Poll ``GET /v1/areas/{id}``
    until it answers 404."""
    return await areas.delete_area(ctx, area_id, force)


@router.get("/jobs/{job_id}")
async def get_job(job_id: int, ctx: CtxDep) -> Job:
    """Progress of an ingest job: state and tile/window counts."""
    return await areas.get_job(ctx, job_id)


@router.get("/index", tags=["index"])
async def index_info(ctx: CtxDep) -> IndexInfo:
    """The index version this process serves: its shards, their kind (flat or IVF-PQ), sizes and
    tuned search parameters."""
    return areas.index_info(ctx)
