"""Detection runs: start one for a project, read it, counts at thresholds, a new threshold and
its polygons."""

from __future__ import annotations

from fastapi import Query, Response

from cliprs_http.schemas import RUN_NOT_DONE
from cliprs_search.access import READ, WRITE, audited
from cliprs_search.routes.deps import CtxDep, api_router
from cliprs_search.schemas.runs import Run, RunCounts, RunPolygons, RunRequest, ThresholdRequest
from cliprs_search.service import runs

router = api_router("runs", READ, RUN_NOT_DONE)
writes = api_router("runs", WRITE, RUN_NOT_DONE)


@writes.post("/projects/{project_id}/runs", status_code=202, dependencies=[audited("run.create")])
async def create_run(project_id: int, ctx: CtxDep, body: RunRequest | None = None) -> Run:
    """Start Detect: train a classifier on the project's labels (at least one positive and one
    negative), score every window of its areas and dissolve the hits into polygons. Poll
    ``GET /v1/runs/{id}`` until its state is ``done`` (or ``failed``, with the error)."""
    return await runs.create_run(ctx, project_id, body or RunRequest())


@router.get("/runs/{run_id}")
async def get_run(run_id: int, ctx: CtxDep) -> Run:
    """A run: state, threshold, windows scored, hits, the held-out estimate and the model."""
    return await runs.get_run(ctx, run_id)


@router.get("/runs/{run_id}/counts")
async def run_counts(
    run_id: int,
    ctx: CtxDep,
    threshold: list[float] = Query(
        default_factory=list, description="repeat for several; default 0.1 ... 0.9"
    ),
    histogram: bool = Query(
        False, description="also return the 1,000 bins' counts (a slider can count locally)"
    ),
) -> RunCounts:
    """Hits at each threshold, instantly (from the run's score histogram; thresholds snap to 0.001)."""
    return await runs.counts(ctx, run_id, threshold, histogram)


@writes.patch(
    "/runs/{run_id}",
    dependencies=[audited("run.update")],
    responses={202: {"model": Run, "description": "Too many hits for a request: applied in the background"}},
)
async def set_run_threshold(run_id: int, body: ThresholdRequest, ctx: CtxDep, response: Response) -> Run:
    """Apply a new threshold: the hits, polygons and held-out estimate are re-derived from the
    stored scores. When it gives at most SEARCH_MAX_SYNC_THRESHOLD_HITS hits (the run's
    histogram says how many, ``GET /v1/runs/{id}/counts``) it is applied in the request (200, the
    updated run); otherwise 202: the run is ``rethresholding`` (its results stay the current
    threshold's) until the indexer has applied it; poll ``GET /v1/runs/{id}`` until it is
    ``done``."""
    run, applied = await runs.set_threshold(ctx, run_id, body)
    if not applied:
        response.status_code = 202
        response.headers["Location"] = f"/v1/runs/{run_id}"
    return run


@router.get("/runs/{run_id}/polygons")
async def run_polygons(
    run_id: int,
    ctx: CtxDep,
    limit: int = Query(1000, description="polygons per page (at most 5,000)"),
    offset: int = Query(0, description="polygons to skip"),
) -> RunPolygons:
    """The run's hits dissolved per zoom (touching or overlapping windows merge), as GeoJSON
    polygons with area in m², max and mean score and the windows each holds; best first."""
    return await runs.polygons(ctx, run_id, limit, offset)
