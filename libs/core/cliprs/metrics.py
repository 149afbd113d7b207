"""Prometheus metrics of the Celery workers, and the collectors the HTTP services share.

Each worker process (the solo pool: one process per worker, see ``devstack``) serves its own
``/metrics`` on ``CLIPRS_METRICS_PORT`` (0, the default, turns it off). Several workers on one
host may share the setting: a worker whose port is taken takes the next free one (up to 32
further) and logs which. Prometheus scrapes each worker's port (``cliprs_worker_info`` names it).

What a worker exports (all from finished tasks, read from what each task reports):

- ``cliprs_tasks_total{task,state}`` and ``cliprs_task_duration_seconds{task}``;
- ``cliprs_tiles_fetched_total`` / ``cliprs_tiles_failed_total`` (tiler: the job's counts when
  its fetch task finishes);
- ``cliprs_tiles_embedded_total``, ``cliprs_windows_embedded_total``, ``cliprs_embed_failed_tiles_total``
  and ``cliprs_embed_windows_per_second`` (embedder: per drain; rate() of the windows counter is
  the throughput over any window of time);
- ``cliprs_queue_length{queue}``: Redis ``LLEN`` of the Celery queues (tiles, embed, index), read
  at scrape time;
- ``cliprs_gpu_memory_bytes{device,kind}`` and ``cliprs_gpu_utilization_ratio{device}`` when the
  process uses CUDA through torch.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cliprs.logs import REQUEST_ID, configure_logging
from cliprs.settings import CoreSettings

log = logging.getLogger("cliprs.metrics")

__all__ = ["GpuCollector", "QueueCollector", "metrics_port", "start_worker_observability"]

CELERY_QUEUES = ("tiles", "embed", "index")
PORT_TRIES = 32

TASKS = Counter("cliprs_tasks", "Celery tasks finished, by task name and state", ["task", "state"])
TASK_SECONDS = Histogram(
    "cliprs_task_duration_seconds",
    "Wall time of Celery tasks",
    ["task"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600),
)
TILES_FETCHED = Counter("cliprs_tiles_fetched", "Tiles fetched (or found cached) by the tiler's fetch tasks")
TILES_FAILED = Counter("cliprs_tiles_failed", "Tiles the tiler's fetch tasks failed to fetch")
TILES_EMBEDDED = Counter("cliprs_tiles_embedded", "Tiles embedded by this worker")
WINDOWS_EMBEDDED = Counter("cliprs_windows_embedded", "Windows embedded by this worker")
EMBED_FAILED = Counter("cliprs_embed_failed_tiles", "Tiles the embedder could not decode or embed")
WINDOWS_PER_S = Gauge("cliprs_embed_windows_per_second", "Windows per second of this worker's last drain")


def metrics_port() -> int:
    """``CLIPRS_METRICS_PORT`` (0 or unset: no metrics server)."""
    return CoreSettings().metrics_port


class QueueCollector(Collector):
    """``cliprs_queue_length{queue}``: LLEN of each Celery queue on the broker, at scrape time."""

    def __init__(self, redis_url: str, queues: Iterable[str] = CELERY_QUEUES):
        import redis

        self.client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.queues = tuple(queues)

    def collect(self):
        family = GaugeMetricFamily(
            "cliprs_queue_length", "Tasks waiting in each Celery queue", labels=["queue"]
        )
        try:
            pipe = self.client.pipeline(transaction=False)
            for q in self.queues:
                pipe.llen(q)
            for q, n in zip(self.queues, pipe.execute(), strict=True):
                family.add_metric([q], float(n))
        except Exception as exc:  # the broker down: no samples, never a failed scrape
            log.debug("queue lengths unavailable: %s", type(exc).__name__)
        yield family


class GpuCollector(Collector):
    """GPU memory and utilisation of the devices torch sees, when torch is loaded with CUDA.

    Never imports torch itself: processes that do not load the model pay nothing."""

    def collect(self):
        torch = sys.modules.get("torch")
        try:
            if torch is None or not torch.cuda.is_available():
                return
            mem = GaugeMetricFamily(
                "cliprs_gpu_memory_bytes", "GPU memory by device and kind", labels=["device", "kind"]
            )
            util = GaugeMetricFamily(
                "cliprs_gpu_utilization_ratio",
                "GPU utilisation over the last sample period",
                labels=["device"],
            )
            for i in range(torch.cuda.device_count()):
                dev = str(i)
                mem.add_metric([dev, "allocated"], float(torch.cuda.memory_allocated(i)))
                mem.add_metric([dev, "reserved"], float(torch.cuda.memory_reserved(i)))
                try:
                    free, total = torch.cuda.mem_get_info(i)
                    mem.add_metric([dev, "used"], float(total - free))
                    mem.add_metric([dev, "total"], float(total))
                except Exception:
                    pass
                try:
                    util.add_metric([dev], torch.cuda.utilization(i) / 100.0)  # needs pynvml
                except Exception:
                    pass
            yield mem
            yield util
        except Exception as exc:
            log.debug("GPU metrics unavailable: %s", type(exc).__name__)


def _observe_task(task_name: str, retval: object) -> None:
    if not isinstance(retval, dict):
        return
    if task_name == "tiler.fetch_area":
        TILES_FETCHED.inc(int(retval.get("tiles_fetched") or 0))
        TILES_FAILED.inc(int(retval.get("tiles_failed") or 0))
    elif task_name == "embedder.embed_job":
        TILES_EMBEDDED.inc(int(retval.get("tiles") or 0))
        WINDOWS_EMBEDDED.inc(int(retval.get("windows") or 0))
        EMBED_FAILED.inc(int(retval.get("failed") or 0))
        if retval.get("windows_per_s"):
            WINDOWS_PER_S.set(float(retval["windows_per_s"]))


_started: dict[str, object] = {}


def _connect_signals() -> None:
    from celery.signals import task_postrun, task_prerun

    @task_prerun.connect(weak=False)
    def _prerun(task_id=None, task=None, **_: object) -> None:
        _started[task_id] = time.perf_counter()
        rid = getattr(task.request, "request_id", None) if task is not None else None
        REQUEST_ID.set(rid if isinstance(rid, str) else None)

    @task_postrun.connect(weak=False)
    def _postrun(task_id=None, task=None, retval=None, state=None, **_: object) -> None:
        name = getattr(task, "name", "unknown")
        began = _started.pop(task_id, None)
        seconds = time.perf_counter() - began if began is not None else None
        if seconds is not None:
            TASK_SECONDS.labels(name).observe(seconds)
        TASKS.labels(name, (state or "unknown").lower()).inc()
        log.info(
            "task %s %s",
            name,
            (state or "unknown").lower(),
            extra={"task": name, "state": (state or "unknown").lower(), "seconds": round(seconds or 0, 3)},
        )
        if state == "SUCCESS":
            try:
                _observe_task(name, retval)
            except Exception:
                log.debug("could not read task %s's result for metrics", name, exc_info=True)
        REQUEST_ID.set(None)

    connect_request_id_publishing()


def connect_request_id_publishing() -> None:
    """Tasks sent from this process carry the current request id in a ``request_id`` header."""
    if "publish" in _started:
        return
    from celery.signals import before_task_publish

    @before_task_publish.connect(weak=False)
    def _publish(headers=None, **_: object) -> None:
        rid = REQUEST_ID.get()
        if rid and isinstance(headers, dict):
            headers.setdefault("request_id", rid)

    _started["publish"] = True


def start_worker_observability(
    service: str, redis_url: str, registry: CollectorRegistry = REGISTRY
) -> int | None:
    """Called from a worker's ``worker_ready``: JSON logs when configured, task metrics, and the
    metrics server on ``CLIPRS_METRICS_PORT`` (or the next free port). Returns the port, or None
    when the server is off. Idempotent."""
    configure_logging(service)
    if "worker" in _started:
        return _started.get("port")  # type: ignore[return-value]
    _started["worker"] = True
    _connect_signals()
    registry.register(QueueCollector(redis_url))
    registry.register(GpuCollector())
    info = Gauge("cliprs_worker_info", "This worker process", ["service", "pid"], registry=registry)
    info.labels(service, str(os.getpid())).set(1)
    base = metrics_port()
    if not base:
        _started["port"] = None
        return None
    for port in range(base, base + PORT_TRIES + 1):
        try:
            start_http_server(port, addr=CoreSettings().metrics_host, registry=registry)
        except OSError:
            continue
        log.info("%s metrics on port %s (/metrics)", service, port)
        _started["port"] = port
        return port
    log.warning("%s: no free metrics port in %s..%s; metrics are off", service, base, base + PORT_TRIES)
    _started["port"] = None
    return None
