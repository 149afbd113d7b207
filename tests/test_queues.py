"""The real Celery apps: every task a worker registers is routed to that worker's queue."""

from __future__ import annotations

import importlib

import pytest

from cliprs.queue import QUEUE_OF

# Celery app module of each worker -> the queue its compose service and local stack consume.
WORKERS = {
    "cliprs_tiler.tasks": "tiles",
    "cliprs_embedder.tasks": "embed",
    "cliprs_indexer.tasks": "index",
}


def celery_tasks_of(module: str) -> set[str]:
    """Names of the tasks a service's Celery app module defines. (``app.task`` shares tasks
    with every app of the process, so keep only those whose code is in ``module``.)"""
    app = importlib.import_module(module).app
    return {name for name, task in app.tasks.items() if getattr(task, "__module__", None) == module}


@pytest.mark.parametrize(("module", "queue"), sorted(WORKERS.items()))
def test_celery_apps_route_tasks_to_their_queues(module: str, queue: str) -> None:
    tasks = celery_tasks_of(module)
    assert tasks, f"{module} registers no task"
    assert {QUEUE_OF[t] for t in tasks} == {queue}
