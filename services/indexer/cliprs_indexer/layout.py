"""Where windows go: tiles in space-filling-curve order, cut into shards by size, and the
small shards merged with their neighbours.

Every tile is keyed by the Morton (Z-order) code of its centre at zoom 24, whatever its own zoom,
so a run of consecutive keys is a compact patch of ground and the tiles of every zoom over that
patch sit together; a shard is such a run, at most ``shard_max_vectors`` windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cliprs.tiles import morton

KEY_ZOOM = 24


@dataclass
class TileInfo:
    """A tile's position: id, zoom, column and row."""

    id: int
    z: int
    x: int
    y: int

    @property
    def key(self) -> int:
        shift = KEY_ZOOM - self.z
        half = (1 << shift) >> 1  # the centre, so a tile sorts among the finer tiles it covers
        return morton((self.x << shift) + half, (self.y << shift) + half)


def spatial_order(tiles: Sequence[TileInfo]) -> list[TileInfo]:
    return sorted(tiles, key=lambda t: (t.key, t.z, t.id))


def cut(tiles: Sequence[TileInfo], windows: dict[int, int], max_windows: int) -> list[list[TileInfo]]:
    """Consecutive runs of ``tiles`` (already in spatial order) holding at most ``max_windows``
    windows each (``windows``: tile id -> its windows); a tile is never split."""
    runs: list[list[TileInfo]] = []
    run: list[TileInfo] = []
    count = 0
    for t in tiles:
        n = windows.get(t.id, 0)
        if run and count + n > max_windows:
            runs.append(run)
            run, count = [], 0
        run.append(t)
        count += n
    if run:
        runs.append(run)
    return runs


def envelope(tiles: Sequence[TileInfo]) -> list[float]:
    """[west, south, east, north] in degrees of the tiles' union."""
    z = np.array([t.z for t in tiles], dtype=np.float64)
    x = np.array([t.x for t in tiles], dtype=np.float64)
    y = np.array([t.y for t in tiles], dtype=np.float64)
    n = 2.0**z
    west, east = x / n * 360.0 - 180.0, (x + 1) / n * 360.0 - 180.0
    north = np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * y / n))))
    south = np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * (y + 1) / n))))
    return [float(west.min()), float(south.min()), float(east.max()), float(north.max())]


def envelope_key(env: Sequence[float]) -> int:
    """Morton key of an envelope's centre (orders shards along the same curve as tiles)."""
    cx, cy = (env[0] + env[2]) / 2, (env[1] + env[3]) / 2
    n = 1 << KEY_ZOOM
    x = int(min(n - 1, max(0, (cx + 180.0) / 360.0 * n)))
    lat = np.radians(max(-85.0511, min(85.0511, cy)))
    y = int(min(n - 1, max(0, (1 - np.log(np.tan(lat) + 1 / np.cos(lat)) / np.pi) / 2 * n)))
    return morton(x, y)


def merge_groups(small: Sequence[tuple[int, int, int]], max_windows: int) -> list[list[int]]:
    """Groups of two or more small shards to merge: ``small`` is (position, count, key); shards
    are taken along the curve and packed greedily up to ``max_windows`` per group."""
    groups: list[list[int]] = []
    group: list[int] = []
    count = 0
    for pos, n, _ in sorted(small, key=lambda s: s[2]):
        if group and count + n > max_windows:
            groups.append(group)
            group, count = [], 0
        group.append(pos)
        count += n
    groups.append(group)
    return [g for g in groups if len(g) >= 2]
