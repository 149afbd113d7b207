"""Fixtures of the cross-service tests: a database per test module, demo tiles and the platform
as processes. (Redis and the tiny CLIP come from the cliprs pytest plugin,
`cliprs_testing.plugin`.)"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import mercantile
import pytest

from cliprs_testing.db import throwaway_database
from cliprs_testing.redis_db import empty_redis_db
from cliprs_testing.tiles import render_demo_tiles
from tests.support.platform import run_platform


@pytest.fixture(scope="session")
def render_tiles() -> Callable[[Path, Iterable[mercantile.Tile]], Path]:
    """Render tiles of the Sentinel-2 demo scene into an XYZ folder ``out/{z}/{x}/{y}.png``."""
    return render_demo_tiles


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A freshly migrated database of this test module's own (a copy of the migrated template:
    a file copy), dropped after the module. The platform a module starts runs on it, so no
    platform sees another test's jobs, areas or sources: a reconciler hands out only its own
    platform's stalled work."""
    with throwaway_database() as url:
        yield url


@pytest.fixture(scope="module")
def start_platform(
    pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., AbstractContextManager[dict]]:
    """Start the platform's services as real processes on free loopback ports, on this test
    module's database.

    ``with start_platform("name", {ENV: value}, embed_workers=1, with_web=False) as p:`` gives
    ``p["api"]``, ``p["tiler"]``, ``p["web"]``, ``p["stack"]`` (the `Stack`), ``p["data_dir"]``
    and ``p["database_url"]``; everything is stopped when the block ends, and the queues it
    left in the session's Redis database are emptied (a task one platform queued is never
    delivered to the next). ``name`` prefixes the Redis namespace of that stack; further
    keyword arguments go to `run_platform` (``services``, ``health_only``, ...).
    """

    @contextmanager
    def start(name: str, env: dict[str, str], **options: object) -> Iterator[dict]:
        run_dir = tmp_path_factory.mktemp(f"run-{name}")
        with run_platform(
            run_dir,
            database_url=pg_url,
            redis_url=redis_url,
            data_dir=run_dir / "data",
            namespace=f"{name}-{uuid.uuid4().hex[:8]}",
            env=env,
            **options,
        ) as platform:
            try:
                yield {**platform, "database_url": pg_url}
            finally:
                platform["stack"].stop_all()  # before the queues are emptied: nothing re-queues
                empty_redis_db(redis_url)

    return start
