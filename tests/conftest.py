"""Fixtures of the cross-service tests. (The database, Redis, the tiny CLIP and the platform as
processes, ``start_platform``, come from the cliprs pytest plugin, `cliprs_testing.plugin`.)"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import mercantile
import pytest

from cliprs_testing.tiles import render_demo_tiles


@pytest.fixture(scope="session")
def render_tiles() -> Callable[[Path, Iterable[mercantile.Tile]], Path]:
    """Render tiles of the Sentinel-2 demo scene into an XYZ folder ``out/{z}/{x}/{y}.png``."""
    return render_demo_tiles
