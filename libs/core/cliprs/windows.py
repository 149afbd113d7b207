"""Window geometry: how a tile is cut into overlapping square windows, and where they are.

A window's id is derived from its tile's id and its index inside the tile, so re-embedding a
tile writes the same ids again (idempotent) and the FAISS id of a vector is the window's key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import mercantile
import numpy as np

from cliprs.tiles import BBox, pixel_to_lonlat

WINDOWS_PER_TILE_LIMIT = 4096  # window id = tile_id * 4096 + index


@dataclass(frozen=True)
class Window:
    """A square window of a tile, in tile pixel coordinates (x1, y1 exclusive)."""

    index: int
    x0: int
    y0: int
    x1: int
    y1: int
    scale: float  # window side / tile side

    @property
    def size(self) -> int:
        return self.x1 - self.x0


def window_id(tile_id: int, index: int) -> int:
    """The window's primary key (and FAISS id)."""
    if not 0 <= index < WINDOWS_PER_TILE_LIMIT:
        raise ValueError(f"window index {index} outside 0..{WINDOWS_PER_TILE_LIMIT - 1}")
    return tile_id * WINDOWS_PER_TILE_LIMIT + index


def split_window_id(wid: int) -> tuple[int, int]:
    """(tile_id, index) of a window id."""
    return divmod(wid, WINDOWS_PER_TILE_LIMIT)


def _positions(tile_size: int, size: int, stride: int) -> list[int]:
    last = tile_size - size
    out = list(range(0, last + 1, stride))
    if out[-1] != last:  # keep the far edge covered when the stride does not divide evenly
        out.append(last)
    return out


def count_windows(tile_size: int, scales: list[float], stride_ratio: float = 0.25) -> int:
    """How many windows `plan_windows` cuts from a ``tile_size`` tile, without the limit check
    (it raises the same ValueError on a bad scale or stride)."""
    if not 0 < stride_ratio <= 1:
        raise ValueError("stride_ratio must be within (0, 1]")
    count = 0
    for scale in scales:
        if not 0 < scale <= 1:
            raise ValueError(f"window scale {scale} must be within (0, 1]")
        size = max(1, round(tile_size * scale))
        count += len(_positions(tile_size, size, max(1, round(size * stride_ratio)))) ** 2
    return count


def plan_windows(tile_size: int, scales: list[float], stride_ratio: float = 0.25) -> list[Window]:
    """Windows of a ``tile_size`` tile: for each scale, squares of ``scale * tile_size`` pixels
    every ``stride_ratio`` of their side, row by row, covering the tile edge to edge."""
    if not 0 < stride_ratio <= 1:
        raise ValueError("stride_ratio must be within (0, 1]")
    windows: list[Window] = []
    for scale in scales:
        if not 0 < scale <= 1:
            raise ValueError(f"window scale {scale} must be within (0, 1]")
        size = max(1, round(tile_size * scale))
        stride = max(1, round(size * stride_ratio))
        for y0 in _positions(tile_size, size, stride):
            for x0 in _positions(tile_size, size, stride):
                windows.append(Window(len(windows), x0, y0, x0 + size, y0 + size, scale))
    if len(windows) > WINDOWS_PER_TILE_LIMIT:
        raise ValueError(
            f"{len(windows)} windows per tile exceeds {WINDOWS_PER_TILE_LIMIT}; "
            "use fewer or larger scales, or a larger stride"
        )
    return windows


@lru_cache(maxsize=64)
def window_plan(
    tile_size: int, scales: tuple[float, ...], stride_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """`plan_windows` as arrays: pixel boxes (n, 4) int32 and scales (n,) float64, in
    window-index order. Computed once per tile size and configuration; every tile reuses them
    (read-only)."""
    windows = plan_windows(tile_size, list(scales), stride_ratio)
    boxes = np.array([(w.x0, w.y0, w.x1, w.y1) for w in windows], dtype=np.int32).reshape(-1, 4)
    scale = np.array([w.scale for w in windows], dtype=np.float64)
    boxes.flags.writeable = scale.flags.writeable = False
    return boxes, scale


def window_bbox(z: int, x: int, y: int, tile_size: int, w: Window) -> BBox:
    """The window's footprint in lon/lat."""
    west, north = pixel_to_lonlat(z, x, y, tile_size, w.x0, w.y0)
    east, south = pixel_to_lonlat(z, x, y, tile_size, w.x1, w.y1)
    return BBox(west, south, east, north)


def footprints(z: int, x: int, y: int, tile_size: int, boxes: np.ndarray) -> np.ndarray:
    """Footprints of many windows of tile (z, x, y) at once: ``boxes`` is (n, 4) pixel boxes
    x0, y0, x1, y1 (x1, y1 exclusive); returns (n, 4) float64 west, south, east, north.

    The formula of `cliprs.tiles.pixel_to_lonlat` (mercantile's, term by term) on numpy arrays, so
    it agrees with `window_bbox` to rounding."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    # mercantile.xy_bounds(x, y, z): the tile's Web-Mercator bounds in metres.
    side = mercantile.CE / math.pow(2, z)
    left = x * side - mercantile.CE / 2
    top = mercantile.CE / 2 - y * side
    width, height = (left + side) - left, top - (top - side)
    mx = left + width * boxes[:, 0::2] / tile_size  # x0, x1
    my = top - height * boxes[:, 1::2] / tile_size  # y0, y1
    # mercantile.lnglat: metres to degrees.
    lon = mx * mercantile.R2D / mercantile.RE
    lat = (math.pi * 0.5 - 2.0 * np.arctan(np.exp(-my / mercantile.RE))) * mercantile.R2D
    out = np.empty((len(boxes), 4), dtype=np.float64)
    out[:, 0], out[:, 2] = lon[:, 0], lon[:, 1]  # west (x0), east (x1)
    out[:, 1], out[:, 3] = lat[:, 1], lat[:, 0]  # south (y1), north (y0)
    return out


def window_fractions(mask: np.ndarray, boxes: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
    """For each window (``boxes``: (n, 4) pixel boxes x0, y0, x1, y1), the share of its pixels
    where the (H, W) boolean ``mask`` is true; with ``within`` (another (H, W) mask), the share
    of the window's ``within`` pixels (0 where it has none).

    One summed-area table per mask, then four lookups per window: the cost does not grow with
    the number of overlapping windows."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    x0, y0, x1, y1 = boxes.T

    def sums(m: np.ndarray) -> np.ndarray:
        table = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=np.int64)
        np.cumsum(np.cumsum(m, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
        return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]

    if within is None:
        return sums(mask) / np.maximum((x1 - x0) * (y1 - y0), 1)
    inside = sums(within)
    return np.where(inside > 0, sums(mask & within) / np.maximum(inside, 1), 0.0)
