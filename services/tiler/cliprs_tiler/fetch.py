"""Fetch an area's tiles: plan, fetch politely, cache, record, and queue embedding as tiles arrive.

Safe to run again for the same job (after a crash or a redelivered task): tiles already fetched
are not fetched again, and every write is an upsert.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from geoalchemy2.shape import to_shape
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from cliprs import jobs
from cliprs.db.engine import sync_engine
from cliprs.db.models import Area
from cliprs.errors import TooLarge
from cliprs.settings import CoreSettings
from cliprs.tilecache import find_tile, store_tile
from cliprs.tiles import check_plan_size, tiles_for_area, zorder
from cliprs_tiler import repository
from cliprs_tiler.repository import PlannedTile
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.sources import TileFetchError, open_source

log = logging.getLogger("cliprs.tiler")

EmbedSender = Callable[[int, list[int]], None]


def plan_area(conn: Connection, area: Area) -> list[PlannedTile]:
    """Upsert the tile rows of an area (shared with overlapping areas) in Z-order.

    The area's polygon (a drawn shape or a box) decides: only tiles overlapping it are planned.
    """
    return repository.upsert_area_tiles(conn, area, zorder(tiles_for_area(to_shape(area.bbox), area.zooms)))


class Progress:
    """Counts per zoom, logged every few seconds and at the end."""

    def __init__(self, job_id: int, planned: list[PlannedTile]):
        self.job_id = job_id
        self.planned = Counter(t.z for t in planned)
        self.done: Counter = Counter()
        self.failed: Counter = Counter()
        self.cached: Counter = Counter()
        self.last_log = 0.0

    def log(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_log < 5:
            return
        self.last_log = now
        per_zoom = "; ".join(
            f"z{z}: {self.done[z]} fetched, {self.cached[z]} cached, {self.failed[z]} failed of {n}"
            for z, n in sorted(self.planned.items())
        )
        log.info("job %s fetch progress: %s", self.job_id, per_zoom)


async def fetch_job(
    job_id: int, core: CoreSettings, settings: TilerSettings, send_embed: EmbedSender
) -> dict:
    """Run the fetch stage of an ingest job; returns the job's counts."""
    engine = sync_engine(core.database_url)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        job = repository.get_job(session, job_id)
        if job is None:
            log.warning("job %s does not exist (area deleted?); nothing to fetch", job_id)
            return {}
        if job.state in ("done", "failed", "indexing"):
            log.info("job %s is already %s; nothing to fetch", job_id, job.state)
            return {}
        area = repository.get_area(session, job.area_id)
        conn = session.connection()
        try:
            # The API checks this too; an area inserted some other way must not bypass the budget.
            check_plan_size(to_shape(area.bbox), list(area.zooms), core.max_tiles_per_area)
        except TooLarge as exc:
            jobs.set_state(conn, job_id, "failed", error=str(exc))
            repository.set_area_status(conn, area.id, "failed")
            log.warning("job %s refused: %s", job_id, exc)
            return jobs.refresh_counts(conn, job_id)
        jobs.set_state(conn, job_id, "fetching")
        repository.set_area_status(conn, area.id, "ingesting")
        planned = plan_area(conn, area)
        repository.set_job_counts(conn, job_id, tiles_planned=len(planned))
    log.info(
        "job %s: area %r planned %d tiles at zooms %s from source %r",
        job_id,
        area.name,
        len(planned),
        list(area.zooms),
        area.source,
    )

    progress = Progress(job_id, planned)
    cache_dir = core.tile_cache_dir
    todo: list[PlannedTile] = []
    ready: list[int] = []  # fetched earlier but not embedded yet: queue them too
    cached = 0
    for t in planned:
        if t.status == "embedded":
            progress.cached[t.z] += 1
            cached += 1
        elif t.status == "fetched" and find_tile(cache_dir, area.source, t.z, t.x, t.y):
            progress.cached[t.z] += 1
            cached += 1
            ready.append(t.id)
        else:
            todo.append(t)

    batch: list[int] = []

    def flush(force: bool = False) -> None:
        while len(batch) >= settings.embed_batch or (force and batch):
            part, batch[:] = batch[: settings.embed_batch], batch[settings.embed_batch :]
            send_embed(job_id, part)

    for tile_id in ready:
        batch.append(tile_id)
        flush()

    source = open_source(area.source, core, settings)
    semaphore = asyncio.Semaphore(settings.concurrency)

    async def fetch_one(t: PlannedTile) -> tuple[PlannedTile, dict]:
        async with semaphore:
            try:
                got = await source.fetch(t.z, t.x, t.y)
            except TileFetchError as exc:
                return t, {"status": "failed", "error": str(exc)[:500]}
            digest = await asyncio.to_thread(
                store_tile, cache_dir, area.source, t.z, t.x, t.y, got.ext, got.data
            )
            return t, {"status": "fetched", "content_hash": digest, "tile_size": got.size, "error": None}

    # While this task lives it touches the job, so the reconciler leaves a long fetch alone;
    # if the worker dies, the touches stop and the reconciler queues the fetch again.
    try:
        with jobs.job_heartbeat(engine, job_id, core.stall_s / 4):
            for next_done in asyncio.as_completed([fetch_one(t) for t in todo]):
                t, values = await next_done
                await asyncio.to_thread(repository.record_tile, engine, t.id, values)
                if values["status"] == "fetched":
                    progress.done[t.z] += 1
                    batch.append(t.id)
                    flush()
                else:
                    progress.failed[t.z] += 1
                    log.warning("job %s: tile %s/%s/%s failed: %s", job_id, t.z, t.x, t.y, values["error"])
                progress.log()
    finally:
        await source.aclose()
    flush(force=True)
    progress.log(force=True)

    with engine.begin() as conn:
        repository.set_job_counts(conn, job_id, tiles_cached=cached)
        counts = jobs.refresh_counts(conn, job_id)
        if counts["tiles_fetched"] == 0:
            jobs.set_state(
                conn,
                job_id,
                "failed",
                expected="fetching",
                error=f"none of the {len(planned)} tiles could be fetched; see the tile errors",
            )
            repository.set_area_status(conn, area.id, "failed")
            return counts
        jobs.set_state(conn, job_id, "embedding", expected="fetching")
    return counts
