"""Real imagery for tests and benchmarks: tiles of the Sentinel-2 demo scene in an XYZ folder."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import mercantile


@lru_cache(maxsize=1)
def _demo_scene() -> tuple[list[Path], object]:
    from cliprs_raster.render import scene_stretch
    from cliprs_raster.samples import demo_band_paths

    bands = demo_band_paths()
    return bands, scene_stretch(bands)  # the stretch reads the whole scene: once per process


def render_demo_tiles(out: Path, tiles: Iterable[mercantile.Tile]) -> Path:
    """Render ``tiles`` of the demo scene into ``out/{z}/{x}/{y}.png`` (no-data transparent, as
    in the demo pyramid); returns ``out``."""
    from cliprs_raster.render import render_tile

    bands, stretch = _demo_scene()
    for t in tiles:
        image = render_tile(bands, t.z, t.x, t.y, stretch=stretch, alpha=True)
        if image is None:
            raise ValueError(f"the demo scene does not cover tile {t}")
        path = out / str(t.z) / str(t.x) / f"{t.y}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return out
