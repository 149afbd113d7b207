"""Celery tasks of the embedder (queue ``embed``)."""

from __future__ import annotations

import logging
from functools import lru_cache

from celery.signals import worker_shutdown

from cliprs.queue import (
    RETRY_TRANSIENT,
    TASK_EMBED_JOB,
    TASK_FETCH_AREA,
    TASK_INDEX_AREA,
    enqueue,
)
from cliprs.settings import CoreSettings
from cliprs.worker import worker_app
from cliprs_embedder import repository
from cliprs_embedder.pipeline import Embedder, WindowConfigMismatch
from cliprs_embedder.settings import EmbedderSettings
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings

log = logging.getLogger("cliprs.embedder")
core = CoreSettings()
# Built at import, so a window configuration that cannot work (more windows per tile than the
# id space holds) stops the worker at start-up with the settings error, not tile by tile later.
settings = EmbedderSettings()
# The model loads when the worker is ready, before the first task arrives.
app = worker_app("embedder", core, before_reconciling=lambda: embedder())


@lru_cache(maxsize=1)
def embedder() -> Embedder:
    """The worker process's model and decoding pool, built on first use and kept."""
    return Embedder(load_encoder(ModelSettings()), core, settings)


@worker_shutdown.connect
def _stop_pool(**_: object) -> None:
    if embedder.cache_info().currsize:
        embedder().close()


@app.task(name=TASK_EMBED_JOB, **RETRY_TRANSIENT)
def embed_job(job_id: int) -> dict:
    """Embed what the job has fetched (leasing it unit by unit), then move the job on if no
    tile of its area is left to fetch or embed. Transient failures (database, disk, device
    memory) retry with backoff; the leases of a failed drain are released for other workers."""
    worker = embedder()
    try:
        stats = worker.drain(job_id)
    except WindowConfigMismatch as exc:
        log.error("%s", exc)
        repository.record_job_error(worker.engine, job_id, str(exc))
        return {"refused": str(exc)}
    log.info("job %s: drained %s", job_id, stats)
    if stats["refetch"]:
        enqueue(app, TASK_FETCH_AREA, [job_id])  # their files vanished from the cache
    if repository.finish_drain(worker.engine, job_id):
        enqueue(app, TASK_INDEX_AREA, [job_id])
    return stats
