"""Celery wiring shared by every service: one broker, task names and their queues.

Services send tasks by name (`send_task`), so none imports another service's code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
import sqlalchemy.exc
from celery import Celery
from celery.result import AsyncResult
from kombu.exceptions import OperationalError

from cliprs.errors import Unavailable
from cliprs.settings import CoreSettings

TASK_FETCH_AREA = "tiler.fetch_area"
TASK_EMBED_JOB = "embedder.embed_job"  # args: [job_id]; workers lease the tiles from PostGIS
TASK_INDEX_AREA = "indexer.index_area"
TASK_DELETE_AREA = "indexer.delete_area"
TASK_REBUILD = "indexer.rebuild"
TASK_GC = "indexer.gc"
TASK_RETUNE = "indexer.retune"
TASK_DETECT_RUN = "indexer.detect_run"  # args: [run_id]; train, score every window, polygons
# args: [run_id, threshold]; a new threshold with too many hits for a request (the run waits in
# state rethresholding)
TASK_RETHRESHOLD_RUN = "indexer.rethreshold_run"

QUEUE_OF = {
    TASK_FETCH_AREA: "tiles",
    TASK_EMBED_JOB: "embed",
    TASK_INDEX_AREA: "index",
    TASK_DELETE_AREA: "index",
    TASK_REBUILD: "index",
    TASK_GC: "index",
    TASK_RETUNE: "index",
    TASK_DETECT_RUN: "index",
    TASK_RETHRESHOLD_RUN: "index",
}


# Errors that pass: a dependency down or overloaded (the database, Redis, the broker, a full or
# failing disk, a device out of memory). Tasks retry them with backoff instead of failing the
# job; past the retries, the reconciler hands the work out again later.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OperationalError,
    Unavailable,
    OSError,
)

# Celery options of a task that retries transient errors: 2, 4, 8 ... s (jittered, at most 2
# minutes apart), ten times.
RETRY_TRANSIENT = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 10,
}

# A publish that cannot reach the broker gives up after about a second: the caller answers 503
# and may retry, instead of holding a request for Celery's default ~20 s of retries.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.4, "interval_max": 0.5}


def enqueue(app: Celery, task: str, args: list, countdown: float | None = None) -> AsyncResult:
    """Queue ``task`` by name; the broker (Redis) being down raises `Unavailable`.

    Results are ignored: progress is recorded in PostGIS, and waiting on the result store would
    tie every sender to it (a result-store outage otherwise leaves the sender's Celery app
    needing a restart).
    """
    try:
        return app.send_task(
            task, args=args, countdown=countdown, ignore_result=True, retry_policy=PUBLISH_RETRY_POLICY
        )
    except (OperationalError, ConnectionError) as exc:
        raise Unavailable(f"the task queue is unavailable ({type(exc).__name__}); retry shortly") from exc


def make_celery(
    name: str, settings: CoreSettings | None = None, visibility_timeout: int | None = None
) -> Celery:
    """A Celery app on the configured Redis, with at-least-once delivery.

    Tasks are acknowledged after they finish (``acks_late``) and re-queued if the worker dies,
    and every task writes idempotently, so a crash loses nothing and duplicates nothing.
    ``visibility_timeout`` (default ``CLIPRS_TASK_VISIBILITY_TIMEOUT``) is how long a task held
    by a dead worker waits before redelivery.
    """
    settings = settings or CoreSettings()
    timeout = visibility_timeout or settings.task_visibility_timeout
    app = Celery(name, broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(
        task_routes={task: {"queue": queue} for task, queue in QUEUE_OF.items()},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        broker_transport_options={
            "visibility_timeout": timeout,
            # Idle workers sweep for expired tasks every few seconds (kombu's default sweep is
            # 10 s x every 10th call), so redelivery follows the timeout closely.
            "unacked_restore_interval": max(1, min(60, timeout // 4)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


@contextmanager
def retry_or_fail(what: str, fail: Callable[[Exception], object], log: logging.Logger) -> Iterator[None]:
    """A task's work under the one error policy: a transient error (`TRANSIENT_ERRORS`) is
    logged and re-raised, so the task retries with backoff (then the reconciler hands the work
    out again) and nothing is failed for it; any other error is logged, recorded by
    ``fail(exc)`` (the job or run fails with its reason) and re-raised. ``what`` names the work
    in the log ("job 7: fetch")."""
    try:
        yield
    except TRANSIENT_ERRORS:
        log.warning("%s interrupted by a transient error; will retry", what, exc_info=True)
        raise
    except Exception as exc:
        log.exception("%s failed", what)
        fail(exc)
        raise
