"""Celery tasks of the embedder (queue ``embed``)."""

from __future__ import annotations

import logging
from functools import lru_cache

from celery.signals import worker_ready

from cliprs.queue import TASK_EMBED_TILES, TASK_INDEX_AREA, enqueue, make_celery
from cliprs.settings import CoreSettings
from cliprs_embedder.pipeline import advance_job, embed_tiles
from cliprs_embedder.settings import EmbedderSettings
from cliprs_model import ClipEncoder, load_encoder
from cliprs_model.settings import ModelSettings

log = logging.getLogger("cliprs.embedder")
core = CoreSettings()
settings = EmbedderSettings()
app = make_celery("cliprs-embedder", core)


@lru_cache(maxsize=1)
def encoder() -> ClipEncoder:
    """The worker process's model, loaded on first use and kept."""
    return load_encoder(ModelSettings())


@worker_ready.connect
def _load_model_at_start(**_: object) -> None:
    # Load before the first task arrives, so a slow or failing model shows up at start-up.
    encoder()


@app.task(name=TASK_EMBED_TILES)
def embed_tiles_task(job_id: int, tile_ids: list[int]) -> dict:
    """Embed a batch of fetched tiles of a job, then move the job on if it was the last batch."""
    model = encoder()
    stats = embed_tiles(tile_ids, model, core, settings)
    log.info("job %s: embedded %s", job_id, stats)
    if advance_job(job_id, core):
        enqueue(app, TASK_INDEX_AREA, [job_id])
    return stats
