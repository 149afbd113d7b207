"""Areas, their ingest jobs, deleting an area, and the live index version."""

from __future__ import annotations

from dataclasses import asdict

from cliprs.errors import InvalidInput
from cliprs.queue import TASK_DELETE_AREA, TASK_FETCH_AREA
from cliprs.tiles import area_wkt, check_plan_size, parse_area, validate_zooms
from cliprs_search.access import Principal
from cliprs_search.access.budget import spend_tile_budget
from cliprs_search.context import Context
from cliprs_search.repository import areas as repository
from cliprs_search.schemas.areas import (
    Area,
    AreaCreated,
    AreaDeletion,
    AreaRequest,
    AreaWithJob,
    IndexInfo,
    Job,
    ShardInfo,
)
from cliprs_search.service.shared import found, queue_or_undo

# An area whose latest job is in one of these states is still being ingested.
ACTIVE_JOB_STATES = ("queued", "fetching", "embedding", "indexing")


async def get_area(ctx: Context, area_id: int) -> Area:
    """One area, or `NotFound` (also once it is deleted)."""
    async with ctx.engine.connect() as conn:
        row = await repository.area(conn, area_id)
    return Area(**found(row, f"no area {area_id}"))


async def get_job(ctx: Context, job_id: int) -> Job:
    """An ingest job's progress, or `NotFound`."""
    async with ctx.engine.connect() as conn:
        row = await repository.job(conn, job_id)
    return Job(**found(row, f"no ingest job {job_id}"))


async def create_area(ctx: Context, request: AreaRequest, caller: Principal) -> AreaCreated:
    """Create an area and queue its ingestion (fetch, embed, index). Tiles from a remote source
    are taken from the caller's daily budget once the plan is checked, and given back when the
    creation then fails."""
    core = ctx.core
    area = parse_area(bbox=request.bbox, polygon=request.polygon)
    zooms = validate_zooms(request.zooms, core.max_zoom)
    if request.source not in core.tile_sources:
        known = ", ".join(sorted(core.tile_sources))
        raise InvalidInput(f"unknown tile source {request.source!r}; configured sources: {known}")
    planned = check_plan_size(area, zooms, core.max_tiles_per_area)
    template = core.tile_sources[request.source]
    spent = await spend_tile_budget(ctx.quotas, ctx.settings, caller, template, planned)
    try:
        return await _start_ingest(ctx, request, area_wkt(area), zooms, planned)
    except Exception:  # any failure: nothing will fetch these tiles
        if spent is not None:
            await spent.refund()
        raise


async def _start_ingest(
    ctx: Context, request: AreaRequest, wkt: str, zooms: list[int], planned: int
) -> AreaCreated:
    """The area's row and its job, and the fetch task queued; the area is taken back when the
    queue is down."""
    async with ctx.engine.begin() as conn:
        area_id = await repository.insert_area(conn, request.name.strip(), wkt, zooms, request.source)
        job_id = await repository.insert_job(conn, area_id, planned)
    # Nothing will ever work on it when the queue is down: the area is taken back.
    await queue_or_undo(
        ctx, TASK_FETCH_AREA, [job_id], lambda conn: repository.delete_unstarted_area(conn, area_id)
    )
    return AreaCreated(area=await get_area(ctx, area_id), job=await get_job(ctx, job_id))


async def list_areas(ctx: Context) -> list[AreaWithJob]:
    """Every area with its latest ingest job."""
    async with ctx.engine.connect() as conn:
        areas = await repository.areas(conn)
        latest = await repository.latest_jobs(conn)
    return [AreaWithJob(**a, job=latest.get(a["id"])) for a in areas]


async def delete_area(ctx: Context, area_id: int, force: bool) -> AreaDeletion:
    """Mark the area deleting and queue the indexer's delete task; refused while the area is
    still being ingested unless ``force``."""
    async with ctx.engine.begin() as conn:
        row = found(await repository.lock_area(conn, area_id), f"no area {area_id}")
        state = row["job_state"]
        if state in ACTIVE_JOB_STATES and not force:
            raise InvalidInput(
                f"area {area_id} is still being ingested (job {state}); wait until its job is done "
                "or failed, or pass force=true"
            )
        await repository.set_area_status(conn, area_id, "deleting")
        # Read it before queuing: a quick indexer may remove the row before a later read.
        area = Area(**await repository.area(conn, area_id))
    # Nothing will delete it when the queue is down: the area gets its status back.
    task = await queue_or_undo(
        ctx,
        TASK_DELETE_AREA,
        [area_id],
        lambda conn: repository.set_area_status(conn, area_id, row["status"]),
    )
    return AreaDeletion(area=area, task_id=task.id)


def index_info(ctx: Context) -> IndexInfo:
    """The index version this process serves: its shards, their kind and tuned parameters."""
    index = ctx.holder.current
    if index is None:
        return IndexInfo(version=None, vectors=0, shards=[])
    m = index.manifest
    return IndexInfo(
        version=m.version,
        model_id=m.model_id,
        dim=m.dim,
        vectors=m.vector_count,
        created_at=m.created_at,
        shards=[
            ShardInfo(
                stem=s.stem,
                count=s.count,
                kind=s.kind,
                envelope=s.envelope,
                zooms=s.zooms,
                area_ids=s.area_ids,
                params=s.params,
            )
            for s in m.shards
        ],
        codec=asdict(m.codec) if m.codec else None,
    )
