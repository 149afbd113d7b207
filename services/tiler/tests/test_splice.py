"""Window pixels spliced from neighbouring tiles, checked pixel for pixel against a crop of the mosaic."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cliprs_testing.faultserver import make_tile
from cliprs_tiler.splice import covering_tiles, splice

TS = 256
Z, X, Y = 12, 1000, 1500  # the window's own tile; its 3x3 neighbourhood forms the mosaic


def tile_image(z: int, x: int, y: int, size: int = TS) -> Image.Image:
    return Image.open(io.BytesIO(make_tile(z, x, y, size=size))).convert("RGB")


@pytest.fixture(scope="module")
def mosaic() -> np.ndarray:
    """Tiles (X-1..X+1, Y-1..Y+1) side by side; pixel (0, 0) of tile (X, Y) is at (TS, TS)."""
    rows = [np.hstack([np.asarray(tile_image(Z, X + dx, Y + dy)) for dx in (-1, 0, 1)]) for dy in (-1, 0, 1)]
    return np.vstack(rows)


def reader(z: int, missing: set[tuple[int, int]] = frozenset()):
    def read(x: int, y: int) -> Image.Image | None:
        return None if (x, y) in missing else tile_image(z, x, y)

    return read


def mosaic_crop(mosaic: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return mosaic[y0 + TS : y1 + TS, x0 + TS : x1 + TS]


@pytest.mark.parametrize(
    ("box", "tiles"),
    [
        ((64, 64, 192, 192), 1),  # inside its tile: a plain crop
        ((200, 40, 328, 168), 2),  # across the right edge
        ((30, -60, 158, 68), 2),  # across the top edge (negative y)
        ((-50, 190, 78, 318), 4),  # across the bottom-left corner (negative x, beyond the size)
        ((192, 192, 320, 320), 4),  # across the bottom-right corner
        ((-256, -256, 0, 0), 1),  # exactly the top-left neighbour
        ((-100, 10, 400, 20), 3),  # a wide strip over three tiles
        ((255, 255, 257, 257), 4),  # 2x2 pixels, one from each tile
    ],
)
def test_splice_is_pixel_exact(mosaic: np.ndarray, box: tuple[int, int, int, int], tiles: int) -> None:
    assert len(covering_tiles(Z, X, Y, box, TS)) == tiles
    got = splice(Z, X, Y, box, TS, reader(Z))
    assert got.size == (box[2] - box[0], box[3] - box[1])
    np.testing.assert_array_equal(np.asarray(got), mosaic_crop(mosaic, box))


def test_covering_tiles_names_the_neighbours() -> None:
    assert covering_tiles(Z, X, Y, (200, 40, 328, 168), TS) == [(X, Y), (X + 1, Y)]
    assert covering_tiles(Z, X, Y, (-50, 190, 78, 318), TS) == [
        (X - 1, Y),
        (X, Y),
        (X - 1, Y + 1),
        (X, Y + 1),
    ]


def test_missing_neighbours_stay_black(mosaic: np.ndarray) -> None:
    box = (192, 192, 320, 320)
    got = np.asarray(splice(Z, X, Y, box, TS, reader(Z, missing={(X + 1, Y + 1)})))
    expected = mosaic_crop(mosaic, box).copy()
    expected[64:, 64:] = 0
    np.testing.assert_array_equal(got, expected)


def test_columns_wrap_across_the_antimeridian_and_rows_stop_at_the_poles() -> None:
    z = 3
    last = 2**z - 1
    # East of the last column is column 0 (the same longitude, 180° = -180°).
    got = np.asarray(splice(z, last, 0, (200, 0, 300, 50), TS, reader(z)))
    np.testing.assert_array_equal(got[:, :56], np.asarray(tile_image(z, last, 0))[:50, 200:])
    np.testing.assert_array_equal(got[:, 56:], np.asarray(tile_image(z, 0, 0))[:50, :44])
    assert covering_tiles(z, last, 0, (200, 0, 300, 50), TS) == [(last, 0), (0, 0)]
    # North of row 0 there is nothing: black, and no tile is asked for.
    asked: list[tuple[int, int]] = []

    def read(x: int, y: int) -> Image.Image:
        asked.append((x, y))
        return tile_image(z, x, y)

    got = np.asarray(splice(z, 2, 0, (0, -20, 10, 10), TS, read))
    assert asked == [(2, 0)]
    assert not got[:20].any()
    np.testing.assert_array_equal(got[20:], np.asarray(tile_image(z, 2, 0))[:10, :10])


def test_neighbours_of_another_size_are_resampled_to_line_up() -> None:
    def read(x: int, y: int) -> Image.Image:
        return tile_image(Z, x, y, size=512 if x == X + 1 else TS)

    got = np.asarray(splice(Z, X, Y, (250, 0, 262, 4), TS, read))
    resized = np.asarray(tile_image(Z, X + 1, Y, size=512).resize((TS, TS), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(got[:, 6:], resized[:4, :6])


def test_empty_boxes_are_refused() -> None:
    with pytest.raises(ValueError, match="empty pixel box"):
        splice(Z, X, Y, (10, 10, 10, 20), TS, reader(Z))
