"""Celery tasks of the indexer (queue ``index``): thin wrappers over build and maintenance."""

from __future__ import annotations

import logging

from cliprs import jobs
from cliprs.db.engine import sync_engine
from cliprs.queue import (
    RETRY_TRANSIENT,
    TASK_DELETE_AREA,
    TASK_DETECT_RUN,
    TASK_GC,
    TASK_INDEX_AREA,
    TASK_REBUILD,
    TASK_RETHRESHOLD_RUN,
    TASK_RETUNE,
    enqueue,
    retry_or_fail,
)
from cliprs.settings import CoreSettings
from cliprs.worker import worker_app
from cliprs_indexer import repository
from cliprs_indexer.build import collect_area_vectors, publish_area, retune_due, sampled_text_queries
from cliprs_indexer.build import retune as retune_codec
from cliprs_indexer.detect import rethreshold_run, run_detect
from cliprs_indexer.maintenance import analyze_windows, garbage_collect
from cliprs_indexer.maintenance import delete_area as delete_area_rows
from cliprs_indexer.maintenance import rebuild as rebuild_index
from cliprs_indexer.settings import IndexerSettings

log = logging.getLogger("cliprs.indexer")
core = CoreSettings()
settings = IndexerSettings()
app = worker_app("indexer", core)

# How many times a GC that had to keep held versions tries again later.
GC_RETRIES = 10


def _collect_garbage(retries_left: int = GC_RETRIES) -> dict:
    """GC now; if searchers still hold old versions, look again in ``gc_retry_s``."""
    try:
        report = garbage_collect(core, settings)
    except Exception:  # GC is housekeeping: never fail the task that published
        log.exception("garbage collection failed")
        return {}
    if report.kept_versions and retries_left > 0:
        enqueue(app, TASK_GC, [retries_left - 1], countdown=settings.gc_retry_s)
    return report.as_dict()


@app.task(name=TASK_INDEX_AREA, **RETRY_TRANSIENT)
def index_area(job_id: int) -> dict:
    """Build the job's area shard, publish a new index version, and finish the job.

    A transient failure (database, Redis, disk) retries with backoff and leaves the job in
    ``indexing`` (the reconciler queues it again if the retries run out); any other failure
    fails the job with its reason."""
    engine = sync_engine(core.database_url)
    with engine.connect() as conn:
        row = repository.job_for_indexing(conn, job_id)
    if row is None or row.state != "indexing":
        log.info("job %s is not waiting for indexing (%s); skipped", job_id, row.state if row else "gone")
        return {}

    def fail(exc: Exception) -> None:
        with engine.begin() as conn:
            jobs.set_state(conn, job_id, "failed", error=f"indexing failed: {exc}"[:500])
            repository.set_area_failed(conn, row.area_id)

    with (
        retry_or_fail(f"job {job_id}: indexing", fail, log),
        jobs.job_heartbeat(engine, job_id, core.stall_s / 4),
    ):
        vectors = collect_area_vectors(core, row.area_id)
        if vectors is None:
            raise RuntimeError("no tile of the area could be embedded; see the tile errors")
        manifest = publish_area(core, row.area_id, vectors, settings)
    with engine.begin() as conn:
        repository.set_windows_indexed(conn, job_id, len(vectors.ids))
        jobs.refresh_counts(conn, job_id)
        jobs.set_state(conn, job_id, "done", expected="indexing")
        repository.set_area_ready(conn, row.area_id)
    analyze_windows(core)
    if manifest is not None and retune_due(manifest, settings, sampled_text_queries(core, manifest)):
        enqueue(app, TASK_RETUNE, [])
    _collect_garbage()
    return {"version": manifest.version if manifest else None, "vectors": len(vectors.ids)}


@app.task(name=TASK_DELETE_AREA)
def delete_area(area_id: int) -> dict:
    """Remove an area's vectors from the index (new version), then its rows and vector chunks."""
    report = delete_area_rows(core, area_id, settings)
    analyze_windows(core)
    _collect_garbage()
    return report.__dict__


@app.task(name=TASK_REBUILD)
def rebuild(area_ids: list[int] | None = None) -> dict:
    """Rebuild the shards of ``area_ids`` (default: all) from the stored vector chunks."""
    report = rebuild_index(core, settings, area_ids)
    _collect_garbage()
    return {
        "version": report.version,
        "areas": report.areas,
        "removed": report.removed,
        "shards": report.shards,
    }


@app.task(name=TASK_RETUNE)
def retune() -> dict:
    """Re-tune the codec's search parameters on the grown index; publish them as a new version."""
    manifest = retune_codec(core, settings)
    _collect_garbage()
    return {"version": manifest.version if manifest else None}


@app.task(name=TASK_GC)
def gc(retries_left: int = GC_RETRIES) -> dict:
    """Remove index versions no searcher holds any more."""
    return _collect_garbage(retries_left)


@app.task(name=TASK_DETECT_RUN, **RETRY_TRANSIENT)
def detect_run(run_id: int) -> dict:
    """Train the run's classifier on its project's labels, score every window of the project's
    areas, store the scores, histogram, hits and polygons (`cliprs_indexer.detect`)."""
    return run_detect(core, run_id)


@app.task(name=TASK_RETHRESHOLD_RUN, **RETRY_TRANSIENT)
def rethreshold(run_id: int, threshold: float) -> dict:
    """Apply a new threshold whose hits are too many for a request: hits, polygons and estimate
    re-derived from the stored scores, then the run is ``done`` again (`cliprs_indexer.detect`)."""
    return rethreshold_run(core, run_id, threshold)
