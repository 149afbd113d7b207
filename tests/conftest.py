"""Fixtures of the cross-service tests: demo tiles and the platform as processes. (The database,
Redis and the tiny CLIP come from the cliprs pytest plugin, `cliprs_testing.plugin`.)"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import mercantile
import pytest

from cliprs_testing.tiles import render_demo_tiles
from tests.support.platform import run_platform


@pytest.fixture(scope="session")
def render_tiles() -> Callable[[Path, Iterable[mercantile.Tile]], Path]:
    """Render tiles of the Sentinel-2 demo scene into an XYZ folder ``out/{z}/{x}/{y}.png``."""
    return render_demo_tiles


@pytest.fixture(scope="session")
def start_platform(
    pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., AbstractContextManager[dict]]:
    """Start the platform's services as real processes on free loopback ports.

    ``with start_platform("name", {ENV: value}, embed_workers=1, with_web=False) as p:`` gives
    ``p["api"]``, ``p["tiler"]``, ``p["web"]``, ``p["stack"]`` (the `Stack`) and ``p["data_dir"]``;
    everything is stopped when the block ends. ``name`` prefixes the Redis namespace of that
    stack; further keyword arguments go to `run_platform` (``services``, ``health_only``, ...).
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
            yield platform

    return start
