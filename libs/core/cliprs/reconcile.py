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

Detection runs likewise, from ``detect_runs.heartbeat_at`` (set at creation, when queued again,
when the indexer starts the run and every ``CLIPRS_STALL_S / 4`` while it works on it):

- a ``queued`` run with no sign of life for ``CLIPRS_STALL_S`` lost its task: the detect task
  again (a run waiting behind other work is never failed for waiting; its duplicate tasks find
  it finished and skip);
- a ``running`` run whose heartbeat stopped lost its worker (or its retries ran out): the
  detect task again, at most ``CLIPRS_RUN_HANDOUTS`` times (``detect_runs.handouts``); then the
  run fails, saying why;
- a ``rethresholding`` run (a new threshold the search-api left to the indexer) whose task was
  lost: back to ``done`` with the results it has and, in ``error``, that the threshold was not
  applied (the threshold travels only in the lost task, so the user applies it again). The
  indexer holds the run's row lock while it applies one, so a long one is never taken for lost.

Every task is idempotent (the indexer takes a run under its row lock and skips one that is no
longer queued or running), so a task handed out twice costs time, never correctness. Only one
reconciler acts at a time (a PostgreSQL advisory lock); the others skip that round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import Connection, Engine, text

from cliprs import jobs
from cliprs.db.engine import sync_engine
from cliprs.queue import TASK_DETECT_RUN, TASK_EMBED_JOB, TASK_FETCH_AREA, TASK_INDEX_AREA, enqueue
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


# Unfinished runs without a sign of life for the stall period (locked: a run the indexer is
# taking right now is skipped, and looked at again next round).
STALLED_RUNS = text(
    """
    SELECT id, state, handouts FROM detect_runs
    WHERE state IN ('queued', 'running', 'rethresholding') AND heartbeat_at < now() - make_interval(secs => :stall_s)
    ORDER BY id
    FOR UPDATE SKIP LOCKED
    """
)
RUN_HANDED_OUT = text(
    "UPDATE detect_runs SET heartbeat_at = now(), "
    "handouts = handouts + CASE WHEN state = 'running' THEN 1 ELSE 0 END WHERE id = :id"
)
RUN_FAILED = text(
    "UPDATE detect_runs SET state = 'failed', error = :error, finished_at = now(), heartbeat_at = now() "
    "WHERE id = :id"
)
RETHRESHOLD_LOST = text(
    "UPDATE detect_runs SET state = 'done', error = :error, heartbeat_at = now() "
    "WHERE id = :id AND state = 'rethresholding'"
)
RUN_HANDOUTS = 3


@dataclass(frozen=True)
class Handout:
    """A task the reconciler queues again (for an ingest job, or a detection run), and why."""

    job_id: int  # the task's one argument: an ingest job's id, or a run's (TASK_DETECT_RUN)
    task: str
    reason: str


def plan_handouts(engine: Engine, stall_s: float, run_handouts: int = RUN_HANDOUTS) -> list[Handout]:
    """Decide, under the reconciler lock, what the stalled jobs and runs need; mark them touched
    so the next round gives the handed-out work another ``stall_s`` before acting again."""
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
        handouts.extend(plan_run_handouts(conn, stall_s, run_handouts))
    return handouts


def plan_run_handouts(conn: Connection, stall_s: float, run_handouts: int) -> list[Handout]:
    """The stalled detection runs: queued again, or failed once handed out ``run_handouts``
    times while running (in the caller's transaction)."""
    handouts: list[Handout] = []
    for run in conn.execute(STALLED_RUNS, {"stall_s": stall_s}).all():
        if run.state == "rethresholding":
            reason = (
                "the new threshold was not applied (its task was lost or the indexer stopped before "
                "applying it); the run keeps its previous threshold's results: apply the threshold again"
            )
            conn.execute(RETHRESHOLD_LOST, {"id": run.id, "error": reason})
            log.warning("run %s: %s", run.id, reason)
            continue
        if run.state == "running" and run.handouts >= run_handouts:
            reason = (
                f"the indexer stopped working on this run without finishing it (its worker died or its "
                f"retries ran out), and it was handed out {run.handouts} times; see the indexer's log "
                "and start a new run"
            )
            conn.execute(RUN_FAILED, {"id": run.id, "error": reason})
            log.warning("run %s failed: %s", run.id, reason)
            continue
        why = "its task was lost" if run.state == "queued" else "its worker stopped (heartbeat)"
        handouts.append(Handout(run.id, TASK_DETECT_RUN, f"run {why}"))
        conn.execute(RUN_HANDED_OUT, {"id": run.id})
    return handouts


def reconcile(
    engine: Engine, send: Callable[[str, list], object], stall_s: float, run_handouts: int = RUN_HANDOUTS
) -> list[Handout]:
    """One round: hand out again the work of stalled jobs and runs (``send(task, args)`` queues a
    task; only after the decisions are committed, so a worker never sees a state older than
    ours)."""
    handouts = plan_handouts(engine, stall_s, run_handouts)
    for h in handouts:
        what = "run" if h.task == TASK_DETECT_RUN else "job"
        log.warning(
            "%s %s made no progress for %.0f s (%s): queueing %s again",
            what,
            h.job_id,
            stall_s,
            h.reason,
            h.task,
        )
        send(h.task, [h.job_id])
    return handouts


class Reconciler:
    """A daemon thread that runs `reconcile` now and every ``every_s`` seconds."""

    def __init__(
        self,
        engine: Engine,
        send: Callable[[str, list], object],
        every_s: float,
        stall_s: float,
        run_handouts: int = RUN_HANDOUTS,
    ):
        self.engine, self.send, self.every_s, self.stall_s = engine, send, every_s, stall_s
        self.run_handouts = run_handouts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> Reconciler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                reconcile(self.engine, self.send, self.stall_s, self.run_handouts)
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
        core.run_handouts,
    ).start()
