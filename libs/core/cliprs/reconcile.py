"""The reconciler: PostGIS is the record of progress, the queues only deliver work.

A queued task can be lost (Redis restarted without persistence), a worker can die holding one,
a task can fail after its retries: none of that may leave a job hanging. Every worker process
runs a `Reconciler` thread (at start and every ``CLIPRS_RECONCILE_S``) that looks for jobs
whose progress stopped (``ingest_jobs.updated_at`` older than ``CLIPRS_STALL_S``; live work
touches it) and hands their work out again from what the tables say:

- tiles still ``planned`` (or a job still queued or fetching): the fetch task again (it fetches
  only what is missing);
- ``fetched`` tiles nobody holds a live lease on: an embedder wake-up;
- nothing left to fetch or embed: the move to indexing (one conditional update wins), then
  the index task; a job in ``indexing``: the index task again.

Every task is idempotent, so a task handed out twice costs time, never correctness. Only one
reconciler acts at a time (a PostgreSQL advisory lock); the others skip that round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import Engine, text

from cliprs import jobs
from cliprs.db.engine import sync_engine
from cliprs.queue import TASK_EMBED_JOB, TASK_FETCH_AREA, TASK_INDEX_AREA, enqueue
from cliprs.settings import CoreSettings

log = logging.getLogger("cliprs.reconcile")

RECONCILE_LOCK_KEY = 0x636C7072_0002  # pg_advisory_xact_lock key ("clpr" + 2)

STALLED_JOBS = text(
    """
    SELECT j.id, j.state,
        count(*) FILTER (WHERE t.status = 'planned') AS planned,
        count(*) FILTER (WHERE t.status = 'fetched' AND (t.lease_until IS NULL OR t.lease_until < now())) AS free,
        count(*) FILTER (WHERE t.status = 'fetched') AS fetched
    FROM ingest_jobs j
    LEFT JOIN area_tiles at ON at.area_id = j.area_id
    LEFT JOIN tiles t ON t.id = at.tile_id
    WHERE j.state IN ('queued', 'fetching', 'embedding', 'indexing')
      AND j.updated_at < now() - make_interval(secs => :stall_s)
    GROUP BY j.id, j.state
    ORDER BY j.id
    """
)


@dataclass(frozen=True)
class Handout:
    """A task the reconciler queues again, and why."""

    job_id: int
    task: str
    reason: str


def plan_handouts(engine: Engine, stall_s: float) -> list[Handout]:
    """Decide, under the reconciler lock, what the stalled jobs need; mark them touched so the
    next round gives the handed-out work another ``stall_s`` before acting again."""
    handouts: list[Handout] = []
    with engine.begin() as conn:
        if not conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": RECONCILE_LOCK_KEY}).scalar():
            return []  # another process is reconciling right now
        for job in conn.execute(STALLED_JOBS, {"stall_s": stall_s}).all():
            if job.state in ("queued", "fetching") or job.planned:
                handouts.append(Handout(job.id, TASK_FETCH_AREA, f"{job.planned} tiles not fetched"))
            if job.free:
                handouts.append(Handout(job.id, TASK_EMBED_JOB, f"{job.free} fetched tiles not embedded"))
            if (
                job.state == "embedding"
                and not job.planned
                and not job.fetched
                and jobs.claim_indexing(conn, job.id)
            ):
                handouts.append(Handout(job.id, TASK_INDEX_AREA, "every tile embedded or failed"))
            if job.state == "indexing":
                handouts.append(Handout(job.id, TASK_INDEX_AREA, "indexing made no progress"))
            jobs.touch(conn, job.id)
    return handouts


def reconcile(engine: Engine, send: Callable[[str, list], object], stall_s: float) -> list[Handout]:
    """One round: hand out again the work of stalled jobs (``send(task, args)`` queues a task;
    only after the decisions are committed, so a worker never sees a state older than ours)."""
    handouts = plan_handouts(engine, stall_s)
    for h in handouts:
        log.warning(
            "job %s made no progress for %.0f s (%s): queueing %s again", h.job_id, stall_s, h.reason, h.task
        )
        send(h.task, [h.job_id])
    return handouts


class Reconciler:
    """A daemon thread that runs `reconcile` now and every ``every_s`` seconds."""

    def __init__(self, engine: Engine, send: Callable[[str, list], object], every_s: float, stall_s: float):
        self.engine, self.send, self.every_s, self.stall_s = engine, send, every_s, stall_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> Reconciler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                reconcile(self.engine, self.send, self.stall_s)
            except Exception as exc:  # the database or the broker is down: try next round
                log.warning("reconciler round failed: %s: %s", type(exc).__name__, str(exc)[:200])
            if self._stop.wait(self.every_s):
                return

    def stop(self) -> None:
        self._stop.set()


def start_reconciler(app: Celery, core: CoreSettings) -> Reconciler:
    """The worker process's reconciler (every worker starts one: any of them may be the last alive)."""
    return Reconciler(
        sync_engine(core.database_url),
        lambda task, args: enqueue(app, task, args),
        core.reconcile_s,
        core.stall_s,
    ).start()
