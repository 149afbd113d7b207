"""Window geometry: how a tile is cut into overlapping square windows, and where they are.

A window's id is derived from its tile's id and its index inside the tile, so re-embedding a
tile writes the same ids again (idempotent) and the FAISS id of a vector is the window's key.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def window_bbox(z: int, x: int, y: int, tile_size: int, w: Window) -> BBox:
    """The window's footprint in lon/lat."""
    west, north = pixel_to_lonlat(z, x, y, tile_size, w.x0, w.y0)
    east, south = pixel_to_lonlat(z, x, y, tile_size, w.x1, w.y1)
    return BBox(west, south, east, north)
