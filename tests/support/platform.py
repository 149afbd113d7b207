"""The platform as real processes on free loopback ports, for the cross-service tests and the
benchmarks: one starter on top of `cliprs_tools.devstack` (the same `Stack` and service list
that `make up` runs). It lives beside the tests, not in the testing lib, because it starts the
services and the tools' stack: the lib stays below them."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from cliprs_testing.loopback import free_port
from cliprs_tools.devstack import Ports, Stack, follow_job, service_specs, stack_env

# What an ingest failure report shows: the logs of the processes an area goes through.
INGEST_LOGS = ("tiler-worker", "embedder-worker-1", "indexer-worker")


@contextmanager
def run_platform(
    run_dir: Path,
    *,
    database_url: str,
    redis_url: str,
    data_dir: Path,
    namespace: str,
    env: Mapping[str, str] | None = None,
    services: Collection[str] | None = None,
    embed_workers: int = 1,
    with_web: bool = False,
    health_only: bool = False,
    ready_timeout_s: float = 180,
    cwd: Path | None = None,
) -> Iterator[dict]:
    """Start the platform's services (all of them, or those named in ``services``) and wait
    until each HTTP service is ready; everything is stopped when the block ends.

    Yields ``{"api", "tiler", "embedder", "web"}`` (base URLs), ``"stack"`` (the `Stack`: logs,
    processes) and ``"data_dir"``. ``namespace`` is the Redis namespace of this stack: pub/sub
    channels ignore the Redis database number, so a namespace of its own keeps another run's
    index announcements out. ``health_only`` waits for ``/healthz`` instead of ``/readyz``
    (a search-api with no index yet is alive but not ready).
    """
    ports = Ports(search=free_port(), tiler=free_port(), embedder=free_port(), web=free_port())
    full_env = stack_env(
        ports,
        {
            **os.environ,
            "CLIPRS_DATABASE_URL": database_url,
            "CLIPRS_REDIS_URL": redis_url,
            "CLIPRS_DATA_DIR": str(data_dir),
            "CLIPRS_REDIS_NAMESPACE": namespace,
            "HF_HUB_OFFLINE": "1",  # tests and benchmarks run on local models only
            # Access control (keys, quotas) is off unless the caller turns it on ("on").
            "SEARCH_AUTH": os.environ.get("SEARCH_AUTH", "off"),
            **(env or {}),
        },
    )
    specs = service_specs(ports, embed_workers=embed_workers, with_web=with_web)
    if services is not None:
        specs = [s for s in specs if s.name in services]
    if health_only:
        specs = [
            dataclasses.replace(s, ready_url=s.ready_url and s.ready_url.replace("/readyz", "/healthz"))
            for s in specs
        ]
    stack = Stack(run_dir, full_env, cwd=cwd)
    try:
        for spec in specs:
            stack.start(spec)
        stack.wait_ready(specs, timeout_s=ready_timeout_s)
        yield {
            "api": f"http://127.0.0.1:{ports.search}",
            "tiler": f"http://127.0.0.1:{ports.tiler}",
            "embedder": f"http://127.0.0.1:{ports.embedder}",
            "web": f"http://127.0.0.1:{ports.web}",
            "stack": stack,
            "data_dir": Path(data_dir),
        }
    finally:
        stack.stop_all()


def finish_job(platform: dict, job: dict, timeout_s: float = 240) -> dict:
    """Follow an ingest job to its end; raise with the workers' log tails unless it is done."""
    job = follow_job(platform["api"], job, timeout_s=timeout_s)
    if job["state"] != "done":
        logs = "\n".join(platform["stack"].log_tail(name) for name in INGEST_LOGS)
        raise RuntimeError(f"ingest failed: {job}\n{logs}")
    return job


def ingest_area(platform: dict, area: dict, timeout_s: float = 240) -> dict:
    """Create an area through the API and follow its job: ``{"area": ..., "job": ...}``."""
    resp = httpx.post(f"{platform['api']}/v1/areas", json=area, timeout=30)
    if resp.status_code != 202:
        raise RuntimeError(f"creating the area failed: {resp.status_code} {resp.text}")
    body = resp.json()
    return {"area": body["area"], "job": finish_job(platform, body["job"], timeout_s)}
