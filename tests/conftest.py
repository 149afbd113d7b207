"""Fixtures of the cross-service tests: real Sentinel-2 tiles and the platform as processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import mercantile
import pytest

from cliprs_testing.plugin import free_port
from cliprs_tiler.render import render_tile, scene_stretch
from cliprs_tools.demo import demo_band_paths
from cliprs_tools.devstack import Ports, Stack, service_specs, stack_env


@pytest.fixture(scope="session")
def render_tiles() -> Callable[[Path, Iterable[mercantile.Tile]], Path]:
    """Render tiles of the Sentinel-2 demo scene into an XYZ folder ``out/{z}/{x}/{y}.png``."""
    bands = demo_band_paths()
    stretch = scene_stretch(bands)

    def render(out: Path, tiles: Iterable[mercantile.Tile]) -> Path:
        for t in tiles:
            image = render_tile(bands, t.z, t.x, t.y, stretch=stretch)
            assert image is not None, f"the demo scene should cover tile {t}"
            path = out / str(t.z) / str(t.x) / f"{t.y}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
        return out

    return render


@pytest.fixture(scope="session")
def start_platform(
    pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., AbstractContextManager[dict]]:
    """Start the platform's services as real processes on free loopback ports.

    ``with start_platform("name", {ENV: value}, embed_workers=1, with_web=False) as p:`` gives
    ``p["api"]``, ``p["tiler"]``, ``p["web"]``, ``p["stack"]`` (the `Stack`) and ``p["data_dir"]``;
    everything is stopped when the block ends. ``name`` prefixes the Redis namespace of that stack.
    """

    @contextmanager
    def start(
        name: str, env: dict[str, str], embed_workers: int = 1, with_web: bool = False
    ) -> Iterator[dict]:
        run_dir = tmp_path_factory.mktemp(f"run-{name}")
        ports = Ports(search=free_port(), tiler=free_port(), embedder=free_port(), web=free_port())
        full_env = stack_env(
            ports,
            {
                **os.environ,
                "CLIPRS_DATABASE_URL": pg_url,
                "CLIPRS_REDIS_URL": redis_url,
                "CLIPRS_DATA_DIR": str(run_dir / "data"),
                # Pub/sub channels ignore the Redis database number: a namespace of this run's
                # own keeps another test run's index announcements out of this stack.
                "CLIPRS_REDIS_NAMESPACE": f"{name}-{uuid.uuid4().hex[:8]}",
                "HF_HUB_OFFLINE": "1",
                **env,
            },
        )
        stack = Stack(run_dir, full_env)
        specs = service_specs(ports, embed_workers=embed_workers, with_web=with_web)
        try:
            for spec in specs:
                stack.start(spec)
            stack.wait_ready(specs, timeout_s=180)
            yield {
                "api": f"http://127.0.0.1:{ports.search}",
                "tiler": f"http://127.0.0.1:{ports.tiler}",
                "web": f"http://127.0.0.1:{ports.web}",
                "stack": stack,
                "data_dir": run_dir / "data",
            }
        finally:
            stack.stop_all()

    return start
