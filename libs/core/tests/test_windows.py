"""Window geometry: hand-computed counts and positions, ids, footprints."""

from __future__ import annotations

import math

import mercantile
import numpy as np
import pytest
from shapely.geometry import box
from shapely.ops import unary_union

from cliprs.windows import (
    Window,
    count_windows,
    footprints,
    plan_windows,
    split_window_id,
    window_bbox,
    window_id,
)


def test_quarter_stride_counts_by_hand() -> None:
    # 256 px tile, 128 px windows every 32 px: positions 0, 32, 64, 96, 128 -> 5 x 5 = 25.
    windows = plan_windows(256, [0.5], 0.25)
    assert len(windows) == 25
    assert sorted({w.x0 for w in windows}) == [0, 32, 64, 96, 128]
    assert all(w.size == 128 for w in windows)
    # Whole tile plus halves: 26; plus quarters (64 px every 16 px: 13 x 13): 195.
    assert len(plan_windows(256, [1.0, 0.5], 0.25)) == 26
    assert len(plan_windows(256, [1.0, 0.5, 0.25], 0.25)) == 26 + 169
    # 512 px tile at 0.25: 128 px windows every 32 px -> 13 x 13.
    assert len(plan_windows(512, [0.25], 0.25)) == 169


def test_uneven_stride_still_reaches_the_far_edge() -> None:
    windows = plan_windows(100, [0.3], 0.25)  # 30 px windows, stride 8: 0..64, then 70
    xs = sorted({w.x0 for w in windows})
    assert xs[-1] == 70 and xs[:3] == [0, 8, 16]
    assert max(w.x1 for w in windows) == 100


def test_indices_are_sequential_and_ids_round_trip() -> None:
    windows = plan_windows(256, [1.0, 0.5, 0.25], 0.25)
    assert [w.index for w in windows] == list(range(len(windows)))
    for tile_id in (1, 77, 123456789):
        for w in windows:
            assert split_window_id(window_id(tile_id, w.index)) == (tile_id, w.index)
    with pytest.raises(ValueError):
        window_id(1, 4096)


def test_footprints_cover_the_tile_and_nest() -> None:
    z, x, y = 14, 4749, 6339
    tb = mercantile.bounds(x, y, z)
    tile_poly = box(tb.west, tb.south, tb.east, tb.north)
    windows = plan_windows(256, [1.0, 0.5, 0.25], 0.25)
    polys = {w.index: box(*window_bbox(z, x, y, 256, w).as_list()) for w in windows}
    whole = polys[0]
    assert whole.equals_exact(tile_poly, 1e-9)
    for scale in (0.5, 0.25):
        union = unary_union([p for i, p in polys.items() if windows[i].scale == scale])
        assert union.symmetric_difference(tile_poly).area < 1e-12
    # Each quarter window lies inside some half window (sub-windows nest in their parents).
    halves = [p.buffer(1e-12) for i, p in polys.items() if windows[i].scale == 0.5]
    for i, p in polys.items():
        if windows[i].scale == 0.25:
            assert any(h.contains(p) for h in halves)


def test_bad_window_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        plan_windows(256, [0.0])
    with pytest.raises(ValueError):
        plan_windows(256, [0.5], 0)
    with pytest.raises(ValueError, match="exceeds"):
        plan_windows(512, [1 / 64], 0.25)


def test_footprints_by_hand() -> None:
    # Tile z1/0/0 spans lon -180..0 and lat 0..85.0511 (the Web-Mercator limit). Its top-left
    # half window (pixels 0..128 of 256) ends a quarter of the way down the world map:
    # lat = atan(sinh(pi * (1 - 2 * 0.25))) = atan(sinh(pi / 2)) = 66.5133 degrees.
    windows = plan_windows(256, [1.0, 0.5], 0.25)
    whole, half = window_bbox(1, 0, 0, 256, windows[0]), window_bbox(1, 0, 0, 256, windows[1])
    assert whole.as_list() == pytest.approx([-180, 0, 0, 85.0511287798], abs=1e-9)
    assert half.as_list() == pytest.approx(
        [-180, math.degrees(math.atan(math.sinh(math.pi / 2))), -90, 85.0511287798], abs=1e-9
    )
    # The next half window starts one stride (32 px = 1/8 of the tile = 22.5 degrees) east.
    assert window_bbox(1, 0, 0, 256, windows[2]).min_lon == pytest.approx(-157.5)


def test_double_resolution_tiles_keep_the_same_layout() -> None:
    # The study's 512 px (@2x) tiles: the same 26 windows, every pixel count doubled.
    small, large = plan_windows(256, [1.0, 0.5], 0.25), plan_windows(512, [1.0, 0.5], 0.25)
    assert len(large) == 26
    assert [(w.x0 * 2, w.y0 * 2, w.x1 * 2, w.y1 * 2) for w in small] == [
        (w.x0, w.y0, w.x1, w.y1) for w in large
    ]
    assert large[2] == Window(2, 64, 0, 320, 256, 0.5)


def test_stride_ratio_changes_the_count() -> None:
    # Half-window stride: 128 px windows every 64 px on 256 px -> 0, 64, 128 -> 3 x 3.
    assert len(plan_windows(256, [0.5], 0.5)) == 9
    # No overlap (stride = window): a 4 x 4 grid of quarter windows that exactly tile the tile.
    quarters = plan_windows(256, [0.25], 1.0)
    assert len(quarters) == 16 and sum(w.size**2 for w in quarters) == 256**2


@pytest.mark.parametrize(("z", "x", "y"), [(0, 0, 0), (14, 4749, 6339), (18, 75990, 101435)])
@pytest.mark.parametrize("tile_size", [256, 512])
def test_vectorised_footprints_equal_window_bbox(z: int, x: int, y: int, tile_size: int) -> None:
    windows = plan_windows(tile_size, [1.0, 0.5, 0.25, 0.3], 0.25)
    boxes = np.array([(w.x0, w.y0, w.x1, w.y1) for w in windows], dtype=np.int32)
    got = footprints(z, x, y, tile_size, boxes)
    assert got.shape == (len(windows), 4) and got.dtype == np.float64
    expected = np.array([window_bbox(z, x, y, tile_size, w).as_list() for w in windows])
    assert np.abs(got - expected).max() < 1e-9
    # Not trivially equal: windows differ from each other by more than the tolerance.
    assert np.ptp(got[:, 0]) > 1e-4 and np.all(got[:, 0] < got[:, 2]) and np.all(got[:, 1] < got[:, 3])


def test_vectorised_footprints_of_no_windows() -> None:
    assert footprints(14, 1, 2, 256, np.zeros((0, 4), dtype=np.int32)).shape == (0, 4)


def test_count_windows_matches_plan_windows_and_ignores_the_limit() -> None:
    for tile_size, scales, stride in [(256, [1.0, 0.5, 0.25], 0.25), (100, [0.3], 0.25), (512, [0.5], 0.5)]:
        assert count_windows(tile_size, scales, stride) == len(plan_windows(tile_size, scales, stride))
    # 1/64 of 512 px: 8 px windows every 2 px -> 253 x 253, far above the id space.
    assert count_windows(512, [1 / 64], 0.25) == 253**2
    with pytest.raises(ValueError, match="scale"):
        count_windows(256, [0.0])
