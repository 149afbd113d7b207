"""Celery tasks of the tiler (queue ``tiles``): the fetch stage of ingestion."""

from __future__ import annotations

import asyncio
import logging

from cliprs import jobs
from cliprs.db.engine import sync_engine
from cliprs.errors import Unavailable
from cliprs.queue import (
    RETRY_TRANSIENT,
    TASK_EMBED_JOB,
    TASK_FETCH_AREA,
    TASK_INDEX_AREA,
    enqueue,
    retry_or_fail,
)
from cliprs.settings import CoreSettings
from cliprs.worker import worker_app
from cliprs_tiler.fetch import fetch_job
from cliprs_tiler.settings import TilerSettings

log = logging.getLogger("cliprs.tiler")
core = CoreSettings()
settings = TilerSettings()
app = worker_app("tiler", core)


@app.task(name=TASK_FETCH_AREA, **RETRY_TRANSIENT)
def fetch_area(job_id: int) -> dict:
    """Fetch every tile of the job's area, waking the embedders as tiles arrive."""

    def send_embed(job: int, tile_ids: list[int]) -> None:
        # A wake-up, not a work list: embedders lease the job's fetched tiles from PostGIS in
        # units of their own size (EMBEDDER_LEASE_TILES), whoever fetched them.
        try:
            enqueue(app, TASK_EMBED_JOB, [job])
        except Unavailable as exc:  # keep fetching: the reconciler wakes the embedders later
            log.warning("job %s: cannot wake the embedders (%s); the reconciler will", job, exc)

    def fail(exc: Exception) -> None:
        with sync_engine(core.database_url).begin() as conn:
            jobs.set_state(conn, job_id, "failed", error=f"fetch failed: {type(exc).__name__}: {exc}"[:500])

    # The database, Redis or the tile cache's disk failing is retried (fetching again skips what
    # is stored), then the reconciler follows up; the job is not failed for it.
    with retry_or_fail(f"job {job_id}: fetch", fail, log):
        counts = asyncio.run(fetch_job(job_id, core, settings, send_embed))
    # Everything may already have been embedded (cached tiles, a re-run): then nobody else
    # would move the job on, so try here too; the conditional update picks one sender.
    with sync_engine(core.database_url).begin() as conn:
        claimed = jobs.claim_indexing(conn, job_id)
    # Queue only after the claim is committed: an indexer quicker than the commit would read the
    # job as still embedding and skip it, and the job would wait in "indexing" forever.
    if claimed:
        enqueue(app, TASK_INDEX_AREA, [job_id])
    return counts
