"""Detection runs: start one for a project, read it, counts at thresholds, a new threshold and
its polygons."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from cliprs_http.schemas import ERROR_RESPONSES, RUN_NOT_DONE
from cliprs_search.auth import READ, write
from cliprs_search.context import Context
from cliprs_search.routes.deps import get_context
from cliprs_search.runs_schemas import Run, RunCounts, RunPolygons, RunRequest, ThresholdRequest
from cliprs_search.service import runs

router = APIRouter(tags=["runs"], responses={**ERROR_RESPONSES, **RUN_NOT_DONE})


@router.post("/v1/projects/{project_id}/runs", status_code=202, dependencies=[Depends(write("run.create"))])
async def create_run(
    project_id: int, body: RunRequest | None = None, ctx: Context = Depends(get_context)
) -> Run:
    """Start Detect: train a classifier on the project's labels (at least one positive and one
    negative), score every window of its areas and dissolve the hits into polygons. Poll
    ``GET /v1/runs/{id}`` until its state is ``done`` (or ``failed``, with the error)."""
    return await runs.create_run(ctx, project_id, body or RunRequest())


@router.get("/v1/runs/{run_id}", dependencies=[Depends(READ)])
async def get_run(run_id: int, ctx: Context = Depends(get_context)) -> Run:
    """A run: state, threshold, windows scored, hits, the held-out estimate and the model."""
    return await runs.get_run(ctx, run_id)


@router.get("/v1/runs/{run_id}/counts", dependencies=[Depends(READ)])
async def run_counts(
    run_id: int,
    threshold: list[float] = Query(
        default_factory=list, description="repeat for several; default 0.1 ... 0.9"
    ),
    histogram: bool = Query(
        False, description="also return the 1,000 bins' counts (a slider can count locally)"
    ),
    ctx: Context = Depends(get_context),
) -> RunCounts:
    """Hits at each threshold, instantly (from the run's score histogram; thresholds snap to 0.001)."""
    return await runs.counts(ctx, run_id, threshold, histogram)


@router.patch("/v1/runs/{run_id}", dependencies=[Depends(write("run.update"))])
async def set_run_threshold(run_id: int, body: ThresholdRequest, ctx: Context = Depends(get_context)) -> Run:
    """Apply a new threshold: the hits and polygons are re-derived from the stored scores
    (synchronously; the answer is the updated run)."""
    return await runs.set_threshold(ctx, run_id, body)


@router.get("/v1/runs/{run_id}/polygons", dependencies=[Depends(READ)])
async def run_polygons(
    run_id: int,
    limit: int = Query(1000, description="polygons per page (at most 5,000)"),
    offset: int = Query(0, description="polygons to skip"),
    ctx: Context = Depends(get_context),
) -> RunPolygons:
    """The run's hits dissolved per zoom (touching or overlapping windows merge), as GeoJSON
    polygons with area in m², max and mean score and the windows each holds; best first."""
    return await runs.polygons(ctx, run_id, limit, offset)
