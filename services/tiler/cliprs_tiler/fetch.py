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
from dataclasses import dataclass, field
from pathlib import Path

from geoalchemy2.shape import to_shape
from sqlalchemy.engine import Connection, Engine

from cliprs import jobs
from cliprs.db.engine import sync_engine
from cliprs.errors import TooLarge
from cliprs.settings import CoreSettings
from cliprs.tilecache import find_tile, store_tile
from cliprs.tiles import check_plan_size, tiles_for_area, zorder
from cliprs_tiler import repository
from cliprs_tiler.repository import AreaRow, PlannedTile
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.source_base import ItemRecord
from cliprs_tiler.sources import TileFetchError, TileSource, open_source

log = logging.getLogger("cliprs.tiler")

EmbedSender = Callable[[int, list[int]], None]


def plan_area(conn: Connection, area: AreaRow) -> list[PlannedTile]:
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


class EmbedBatches:
    """Tile ids queued for embedding ``size`` at a time, as soon as a batch is full."""

    def __init__(self, job_id: int, size: int, send: EmbedSender):
        self.job_id = job_id
        self.size = size
        self.send = send
        self.pending: list[int] = []

    def add(self, tile_id: int) -> None:
        self.pending.append(tile_id)
        while len(self.pending) >= self.size:
            self._send_one()

    def flush(self) -> None:
        """Queue what is left (the last, partial batch)."""
        while self.pending:
            self._send_one()

    def _send_one(self) -> None:
        part, self.pending = self.pending[: self.size], self.pending[self.size :]
        self.send(self.job_id, part)


@dataclass
class FetchPlan:
    """One run of a job's fetch stage: the area's planned tiles, split into those to fetch and
    those already here (``ready``: fetched earlier but maybe not embedded, queued again)."""

    job_id: int
    area: AreaRow
    planned: list[PlannedTile]
    todo: list[PlannedTile] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    cached: int = 0


async def fetch_job(
    job_id: int, core: CoreSettings, settings: TilerSettings, send_embed: EmbedSender
) -> dict:
    """Run the fetch stage of an ingest job; returns the job's counts."""
    engine = sync_engine(core.database_url)
    plan = plan_job(engine, job_id, core)
    if not isinstance(plan, FetchPlan):
        return plan  # nothing to fetch: the counts to answer
    progress = Progress(job_id, plan.planned)
    split_cached(plan, core.tile_cache_dir, progress)
    batches = EmbedBatches(job_id, settings.embed_batch, send_embed)
    for tile_id in plan.ready:
        batches.add(tile_id)
    await fetch_tiles(engine, plan, core, settings, progress, batches)
    batches.flush()
    progress.log(force=True)
    return finish_job(engine, plan)


def plan_job(engine: Engine, job_id: int, core: CoreSettings) -> FetchPlan | dict:
    """Mark the job fetching and plan its area's tiles; or, when there is nothing to fetch (no
    such job, one past this stage, an area over the tile budget), the job's counts."""
    with engine.begin() as conn:
        job = repository.get_job(conn, job_id)
        if job is None:
            log.warning("job %s does not exist (area deleted?); nothing to fetch", job_id)
            return {}
        if job.state in ("done", "failed", "indexing"):
            log.info("job %s is already %s; nothing to fetch", job_id, job.state)
            return {}
        area = repository.get_area(conn, job.area_id)
        refused = refuse_oversized(conn, job_id, area, core)
        if refused is not None:
            return refused
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
    return FetchPlan(job_id, area, planned)


def refuse_oversized(conn: Connection, job_id: int, area: AreaRow, core: CoreSettings) -> dict | None:
    """Fail the job (and its area) when the area is over the tile budget: the job's counts; else None.

    The API checks this too; an area inserted some other way must not bypass the budget.
    """
    try:
        check_plan_size(to_shape(area.bbox), list(area.zooms), core.max_tiles_per_area)
    except TooLarge as exc:
        jobs.set_state(conn, job_id, "failed", error=str(exc))
        repository.set_area_status(conn, area.id, "failed")
        log.warning("job %s refused: %s", job_id, exc)
        return jobs.refresh_counts(conn, job_id)
    return None


def split_cached(plan: FetchPlan, cache_dir: Path, progress: Progress) -> None:
    """Sort the planned tiles into ``todo`` and, for those already in the cache, ``cached``
    (and ``ready`` when fetched but not yet embedded): a re-run fetches nothing twice."""
    source = plan.area.source
    for t in plan.planned:
        if t.status == "embedded":
            progress.cached[t.z] += 1
            plan.cached += 1
        elif t.status == "fetched" and find_tile(cache_dir, source, t.z, t.x, t.y):
            progress.cached[t.z] += 1
            plan.cached += 1
            plan.ready.append(t.id)
        else:
            plan.todo.append(t)


async def fetch_tiles(
    engine: Engine,
    plan: FetchPlan,
    core: CoreSettings,
    settings: TilerSettings,
    progress: Progress,
    batches: EmbedBatches,
) -> None:
    """Fetch the tiles to do, ``settings.concurrency`` at a time; record each as it arrives (with
    the STAC items it was drawn from) and queue the fetched ones for embedding."""
    source = open_source(plan.area.source, core, settings)
    semaphore = asyncio.Semaphore(settings.concurrency)
    # While this task lives it touches the job, so the reconciler leaves a long fetch alone;
    # if the worker dies, the touches stop and the reconciler queues the fetch again.
    try:
        with jobs.job_heartbeat(engine, plan.job_id, core.stall_s / 4):
            fetches = [
                fetch_tile(source, semaphore, core.tile_cache_dir, plan.area.source, t) for t in plan.todo
            ]
            for next_done in asyncio.as_completed(fetches):
                t, values, items = await next_done
                await asyncio.to_thread(repository.record_tile, engine, t.id, values, plan.area.source, items)
                if values["status"] == "fetched":
                    progress.done[t.z] += 1
                    batches.add(t.id)
                else:
                    progress.failed[t.z] += 1
                    log.warning(
                        "job %s: tile %s/%s/%s failed: %s", plan.job_id, t.z, t.x, t.y, values["error"]
                    )
                progress.log()
    finally:
        await source.aclose()


async def fetch_tile(
    source: TileSource, semaphore: asyncio.Semaphore, cache_dir: Path, source_name: str, t: PlannedTile
) -> tuple[PlannedTile, dict, tuple[ItemRecord, ...]]:
    """Fetch one tile into the cache: the tile, the values of its row (fetched or failed) and
    the STAC items it was drawn from (none for other sources, or when it failed)."""
    async with semaphore:
        try:
            got = await source.fetch(t.z, t.x, t.y)
        except TileFetchError as exc:
            return t, {"status": "failed", "error": str(exc)[:500]}, ()
        digest = await asyncio.to_thread(
            store_tile, cache_dir, source_name, t.z, t.x, t.y, got.ext, got.data, got.mask
        )
        values = {"status": "fetched", "content_hash": digest, "tile_size": got.size, "error": None}
        return t, values, got.drawn_from


def finish_job(engine: Engine, plan: FetchPlan) -> dict:
    """Record the counts and hand the job to embedding, or fail it when no tile could be fetched."""
    with engine.begin() as conn:
        repository.set_job_counts(conn, plan.job_id, tiles_cached=plan.cached)
        counts = jobs.refresh_counts(conn, plan.job_id)
        if counts["tiles_fetched"] == 0:
            jobs.set_state(
                conn,
                plan.job_id,
                "failed",
                expected="fetching",
                error=f"none of the {len(plan.planned)} tiles could be fetched; see the tile errors",
            )
            repository.set_area_status(conn, plan.area.id, "failed")
            return counts
        jobs.set_state(conn, plan.job_id, "embedding", expected="fetching")
    return counts
