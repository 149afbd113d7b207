"""Detection runs: start one (the indexer trains and scores), read it, counts at thresholds from
its histogram, a new threshold, and its polygons.

A new threshold: the run's histogram says how many hits it gives. Up to
``SEARCH_MAX_SYNC_THRESHOLD_HITS``, it is applied in the request: the scores file
(`cliprs.runs`) is read and the hits selected on a worker thread, then the hits, polygons,
threshold and held-out estimate are replaced in one transaction (PostGIS dissolves; about a
second per ten thousand hits on one core). Above it, the run goes to ``rethresholding`` and the
indexer applies it in the background (`cliprs.queue.TASK_RETHRESHOLD_RUN`; the answer is 202);
meanwhile the run's results stay those of its current threshold, and it is ``done`` again at
the new one when they are replaced.
"""

from __future__ import annotations

import asyncio
import json
import time

from cliprs import runs
from cliprs.errors import Conflict, InvalidInput, NotFound, Unavailable
from cliprs.queue import TASK_DETECT_RUN, TASK_RETHRESHOLD_RUN
from cliprs_http.schemas import Feature
from cliprs_search.context import Context
from cliprs_search.repository import runs as repo
from cliprs_search.schemas.runs import (
    Run,
    RunCounts,
    RunPolygons,
    RunRequest,
    ThresholdCount,
    ThresholdRequest,
)
from cliprs_search.service.shared import found, queue_or_undo

MAX_THRESHOLDS = 100
MAX_POLYGON_PAGE = 5000


def _run(row: dict) -> Run:
    row = dict(row)
    for key in ("estimate", "model", "stage_seconds"):
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    row["stage_seconds"] = row.get("stage_seconds") or {}
    row["threshold"] = runs.snap_threshold(row["threshold"])  # stored as real: 0.3 reads 0.30000001
    return Run(**row)


async def create_run(ctx: Context, project_id: int, body: RunRequest) -> Run:
    """Check the project can be trained on, record a queued run and queue the indexer's task."""
    async with ctx.engine.connect() as conn:
        facts = await repo.project_facts(conn, project_id)
    if facts is None:
        raise NotFound(f"no project {project_id}")
    if not facts["area_ids"]:
        raise InvalidInput(
            f"project {project_id} has no areas; add one (PATCH /v1/projects/{project_id} with area_ids)"
        )
    missing = [name for name in ("positive", "negative") if facts[name] == 0]
    if missing:
        raise InvalidInput(
            f"project {project_id} has {facts['positive']} positive and {facts['negative']} negative labels; "
            f"Detect needs at least one of each: label some {' and '.join(missing)} windows with "
            f"POST /v1/projects/{project_id}/labels (window_id, positive)"
        )
    async with ctx.engine.begin() as conn:
        run_id = await repo.insert_run(conn, project_id, runs.snap_threshold(body.threshold))
    # Nothing will ever run it when the queue is down: it is taken back.
    await queue_or_undo(ctx, TASK_DETECT_RUN, [run_id], lambda conn: repo.delete_run(conn, run_id))
    return await get_run(ctx, run_id)


async def get_run(ctx: Context, run_id: int) -> Run:
    async with ctx.engine.connect() as conn:
        row = await repo.run(conn, run_id)
    return _run(found(row, f"no run {run_id}"))


def _require_done(run: Run, states: tuple[str, ...] = runs.RESULT_STATES) -> None:
    if run.state == "rethresholding" and run.state not in states:
        raise Conflict(
            f"run {run.id} is rethresholding (a new threshold is being applied in the background); "
            f"poll GET /v1/runs/{run.id} until it is done"
        )
    if run.state not in states:
        hint = (
            f"it failed: {run.error}" if run.state == "failed" else "poll GET /v1/runs/{id} until it is done"
        )
        raise Conflict(f"run {run.id} is {run.state}, not done; {hint}")


async def counts(ctx: Context, run_id: int, thresholds: list[float], with_histogram: bool) -> RunCounts:
    """Hits at each threshold (default: 0.1, 0.2, ... 0.9) from the histogram."""
    run = await get_run(ctx, run_id)
    _require_done(run)
    if len(thresholds) > MAX_THRESHOLDS:
        raise InvalidInput(f"at most {MAX_THRESHOLDS} thresholds per request")
    if any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise InvalidInput("thresholds are probabilities between 0 and 1")
    async with ctx.engine.connect() as conn:
        hist = await repo.histogram(conn, run_id)
    if isinstance(hist, str):
        hist = json.loads(hist)
    wanted = thresholds or [round(0.1 * i, 1) for i in range(1, 10)]
    return RunCounts(
        run_id=run_id,
        windows_scored=run.windows_scored,
        bins=runs.HIST_BINS,
        counts=[
            ThresholdCount(threshold=runs.snap_threshold(t), count=runs.count_at(hist, t)) for t in wanted
        ],
        histogram=hist if with_histogram else None,
    )


async def set_threshold(ctx: Context, run_id: int, body: ThresholdRequest) -> tuple[Run, bool]:
    """Apply a new threshold: (the run, True) when it was applied in the request; (the run in
    state ``rethresholding``, False) when it gives more hits than a request should make and the
    indexer applies it in the background."""
    run = await get_run(ctx, run_id)
    _require_done(run, ("done",))
    threshold = runs.snap_threshold(body.threshold)
    async with ctx.engine.connect() as conn:
        hist = await repo.histogram(conn, run_id)
    if isinstance(hist, str):
        hist = json.loads(hist)
    hits = runs.count_at(hist, threshold) if hist else run.hits
    if hits > ctx.settings.max_sync_threshold_hits:
        return await _rethreshold_later(ctx, run_id, threshold), False
    started = time.perf_counter()
    path = runs.scores_path(ctx.core.data_dir, run_id)
    try:
        # Off the event loop: reading the file, selecting the hits and building the statement's
        # arrays grow with the run.
        ids, scores, held_out = await asyncio.to_thread(_read_hits, path, threshold)
    except FileNotFoundError:
        raise Unavailable(
            f"the scores of run {run_id} are not readable from this search-api's data dir; "
            "it must share CLIPRS_DATA_DIR with the indexer"
        ) from None
    async with ctx.engine.begin() as conn:
        locked = await repo.run(conn, run_id, lock=True)  # one re-threshold of a run at a time
        if locked is None:
            raise NotFound(f"no run {run_id}")
        _require_done(_run(locked), ("done",))
        await repo.replace_hits(conn, run_id, ids, scores)
        estimate = runs.estimate_for(_json(locked["estimate"]), held_out, threshold)
        await repo.set_threshold(conn, run_id, threshold, len(ids), estimate, time.perf_counter() - started)
    return await get_run(ctx, run_id), True


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def _read_hits(path, threshold: float) -> tuple[list[int], list[float], tuple | None]:
    """The run's hits at ``threshold`` (ids and scores as lists, ready for the statement) and
    its held-out probabilities."""
    ids, scores = runs.read_scores(path)
    hit_ids, hit_scores = runs.hits_at(ids, scores, threshold)
    return hit_ids.tolist(), hit_scores.astype("float32").tolist(), runs.read_held_out(path)


async def _rethreshold_later(ctx: Context, run_id: int, threshold: float) -> Run:
    """Mark the run ``rethresholding`` and queue the indexer's task; back to ``done`` (and 503)
    when the queue cannot take it. The answer is the run as marked (its current threshold and
    results), whatever the indexer has done by the time it is sent."""
    async with ctx.engine.begin() as conn:
        locked = await repo.run(conn, run_id, lock=True)
        if locked is None:
            raise NotFound(f"no run {run_id}")
        _require_done(_run(locked), ("done",))
        await repo.set_state(conn, run_id, "rethresholding")
        marked = _run(await repo.run(conn, run_id))
    await queue_or_undo(
        ctx, TASK_RETHRESHOLD_RUN, [run_id, threshold], lambda conn: repo.set_state(conn, run_id, "done")
    )
    return marked


async def polygons(ctx: Context, run_id: int, limit: int, offset: int) -> RunPolygons:
    """A page of the run's polygons as GeoJSON features, best first."""
    run = await get_run(ctx, run_id)
    _require_done(run)
    if not 1 <= limit <= MAX_POLYGON_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_POLYGON_PAGE}")
    if offset < 0:
        raise InvalidInput("offset must be 0 or more")
    async with ctx.engine.connect() as conn:
        total = await repo.polygon_count(conn, run_id)
        rows = await repo.polygons(conn, run_id, limit, offset)
    features = [
        Feature(
            id=r["id"],
            geometry=json.loads(r["geometry"]),
            properties={
                "polygon_id": r["id"],
                "z": r["z"],
                "area_m2": r["area_m2"],
                "max_score": r["max_score"],
                "mean_score": r["mean_score"],
                "window_count": r["window_count"],
                "window_ids": list(r["window_ids"]),
                "point": [r["lon"], r["lat"]],
            },
        )
        for r in rows
    ]
    after = offset + len(rows)
    return RunPolygons(
        features=features,
        run_id=run_id,
        threshold=run.threshold,
        total=total,
        limit=limit,
        offset=offset,
        next_offset=after if after < total else None,
    )
