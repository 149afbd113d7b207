"""A service's Celery worker app: what every worker does at start, written once."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery
from celery.signals import worker_ready

from cliprs.metrics import start_worker_observability
from cliprs.queue import make_celery
from cliprs.reconcile import start_reconciler
from cliprs.settings import CoreSettings


def worker_app(
    service: str, core: CoreSettings, before_reconciling: Callable[[], object] | None = None
) -> Celery:
    """The Celery app of ``service`` (``tiler``, ``embedder``, ``indexer``). When its worker is
    ready it starts its logs and metrics (``CLIPRS_METRICS_PORT``, ``CLIPRS_LOG_FORMAT``), runs
    ``before_reconciling`` (the embedder loads its model there, so a slow or failing model shows
    at start-up) and starts the reconciler, which looks for work nobody will deliver any more
    (queues lost, workers dead)."""
    app = make_celery(f"cliprs-{service}", core)

    def at_start(**_: object) -> None:
        start_worker_observability(f"{service}-worker", core.redis_url)
        if before_reconciling is not None:
            before_reconciling()
        start_reconciler(app, core)

    worker_ready.connect(at_start, weak=False)
    return app
