"""Areas, their ingest jobs, deleting an area, and the live index version."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import text

from cliprs.errors import InvalidInput, NotFound
from cliprs.queue import TASK_DELETE_AREA, TASK_FETCH_AREA
from cliprs.tiles import area_wkt, check_plan_size, parse_area, validate_zooms
from cliprs_search.context import Context, get_context
from cliprs_search.queries import AREA_COLUMNS, JOB_COLUMNS, area_dict, job_dict

router = APIRouter(tags=["areas"])

ACTIVE_JOB_STATES = ("queued", "fetching", "embedding", "indexing")


class AreaRequest(BaseModel):
    name: str = Field(..., min_length=1, max_length=200, examples=["Chincoteague harbour"])
    bbox: list[float] | None = Field(
        None,
        description="[min_lon, min_lat, max_lon, max_lat] (or give polygon)",
        examples=[[-75.6, 37.6, -75.5, 37.7]],
    )
    polygon: dict | None = Field(
        None, description="A GeoJSON Polygon, instead of bbox: only the tiles it overlaps are fetched"
    )
    zooms: list[int] = Field(..., examples=[[12, 13, 14]])
    source: str = Field("demo", description="A configured tile source name")


async def area_or_404(ctx: Context, area_id: int) -> dict:
    async with ctx.engine.connect() as conn:
        r = (
            await conn.execute(text(f"SELECT {AREA_COLUMNS} FROM areas a WHERE a.id = :id"), {"id": area_id})
        ).one_or_none()
    if r is None:
        raise NotFound(f"no area {area_id}")
    return area_dict(r)


async def job_or_404(ctx: Context, job_id: int) -> dict:
    async with ctx.engine.connect() as conn:
        r = (
            await conn.execute(
                text(f"SELECT {JOB_COLUMNS} FROM ingest_jobs j WHERE j.id = :id"), {"id": job_id}
            )
        ).one_or_none()
    if r is None:
        raise NotFound(f"no ingest job {job_id}")
    return job_dict(r)


@router.post("/v1/areas", status_code=202)
async def create_area(body: AreaRequest, ctx: Context = Depends(get_context)) -> dict:
    """Create an area and start ingesting it (fetch, embed, index); poll its job."""
    core = ctx.core
    area = parse_area(bbox=body.bbox, polygon=body.polygon)
    zooms = validate_zooms(body.zooms, core.max_zoom)
    if body.source not in core.tile_sources:
        known = ", ".join(sorted(core.tile_sources))
        raise InvalidInput(f"unknown tile source {body.source!r}; configured sources: {known}")
    planned = check_plan_size(area, zooms, core.max_tiles_per_area)
    async with ctx.engine.begin() as conn:
        area_id = (
            await conn.execute(
                text(
                    "INSERT INTO areas (name, bbox, zooms, source, status) VALUES "
                    "(:name, ST_GeomFromText(:wkt, 4326), :zooms, :source, 'pending') RETURNING id"
                ),
                {"name": body.name.strip(), "wkt": area_wkt(area), "zooms": zooms, "source": body.source},
            )
        ).scalar_one()
        job_id = (
            await conn.execute(
                text("INSERT INTO ingest_jobs (area_id, tiles_planned) VALUES (:a, :n) RETURNING id"),
                {"a": area_id, "n": planned},
            )
        ).scalar_one()
    await asyncio.to_thread(ctx.celery.send_task, TASK_FETCH_AREA, args=[job_id])
    return {"area": await area_or_404(ctx, area_id), "job": await job_or_404(ctx, job_id)}


@router.get("/v1/areas")
async def list_areas(ctx: Context = Depends(get_context)) -> list[dict]:
    """Every area with its latest ingest job."""
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(text(f"SELECT {AREA_COLUMNS} FROM areas a ORDER BY a.id"))).all()
        jobs = (
            await conn.execute(
                text(
                    f"SELECT DISTINCT ON (j.area_id) {JOB_COLUMNS} FROM ingest_jobs j ORDER BY j.area_id, j.id DESC"
                )
            )
        ).all()
    latest = {j.area_id: job_dict(j) for j in jobs}
    return [{**area_dict(r), "job": latest.get(r.id)} for r in rows]


@router.get("/v1/areas/{area_id}")
async def get_area(area_id: int, ctx: Context = Depends(get_context)) -> dict:
    """One area (404 once it is deleted)."""
    return await area_or_404(ctx, area_id)


@router.delete("/v1/areas/{area_id}", status_code=202)
async def delete_area(
    area_id: int,
    force: bool = Query(False, description="Delete even while the area is still being ingested"),
    ctx: Context = Depends(get_context),
) -> dict:
    """Delete an area: the indexer publishes an index version without its vectors, then removes
    its windows, the tiles no other area uses, and the area itself. Poll ``GET /v1/areas/{id}``
    until it answers 404."""
    async with ctx.engine.begin() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT a.status, (SELECT j.state FROM ingest_jobs j WHERE j.area_id = a.id "
                    "ORDER BY j.id DESC LIMIT 1) AS job_state FROM areas a WHERE a.id = :a FOR UPDATE"
                ),
                {"a": area_id},
            )
        ).one_or_none()
        if row is None:
            raise NotFound(f"no area {area_id}")
        if row.job_state in ACTIVE_JOB_STATES and not force:
            raise InvalidInput(
                f"area {area_id} is still being ingested (job {row.job_state}); wait until its job is done "
                "or failed, or pass force=true"
            )
        await conn.execute(text("UPDATE areas SET status = 'deleting' WHERE id = :a"), {"a": area_id})
    task = await asyncio.to_thread(ctx.celery.send_task, TASK_DELETE_AREA, args=[area_id])
    return {"area": await area_or_404(ctx, area_id), "task_id": task.id}


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: int, ctx: Context = Depends(get_context)) -> dict:
    """Progress of an ingest job: state and tile/window counts."""
    return await job_or_404(ctx, job_id)


@router.get("/v1/index", tags=["index"])
async def index_info(ctx: Context = Depends(get_context)) -> dict:
    """The index version this process serves: its shards, their kind (flat or IVF-PQ), sizes and
    tuned search parameters."""
    index = ctx.holder.current
    if index is None:
        return {"version": None, "vectors": 0, "shards": []}
    m = index.manifest
    return {
        "version": m.version,
        "model_id": m.model_id,
        "dim": m.dim,
        "vectors": m.vector_count,
        "created_at": m.created_at,
        "shards": [
            {"area_id": s.area_id, "count": s.count, "kind": s.kind, "params": s.params} for s in m.shards
        ],
    }
