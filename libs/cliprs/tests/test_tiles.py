"""Tile math against the formulas of the design brief, and bbox/zoom validation."""

from __future__ import annotations

import math
import random

import mercantile
import pytest

from cliprs.errors import InvalidInput, TooLarge
from cliprs.tiles import (
    MAX_LATITUDE,
    BBox,
    check_plan_size,
    count_tiles,
    parse_bbox,
    pixel_to_lonlat,
    tiles_for_bbox,
    validate_zooms,
)


def formula_tile(lon: float, lat: float, z: int) -> tuple[int, int]:
    """x = floor((lon + 180) / 360 · 2^z); y = floor((1 − ln(tan φ + sec φ)/π) / 2 · 2^z)."""
    phi = math.radians(lat)
    n = 2**z
    x = math.floor((lon + 180) / 360 * n)
    y = math.floor((1 - math.log(math.tan(phi) + 1 / math.cos(phi)) / math.pi) / 2 * n)
    return min(x, n - 1), min(max(y, 0), n - 1)


def test_tile_numbers_match_the_formula_over_random_points() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        lon, lat, z = rng.uniform(-180, 179.999), rng.uniform(-85, 85), rng.randint(0, 22)
        t = mercantile.tile(lon, lat, z)
        assert (t.x, t.y) == formula_tile(lon, lat, z), (lon, lat, z)


def test_inverse_formula_gives_the_tile_corner() -> None:
    rng = random.Random(8)
    for _ in range(500):
        z = rng.randint(0, 20)
        x, y = rng.randrange(2**z), rng.randrange(2**z)
        lon = x / 2**z * 360 - 180
        lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / 2**z))))
        west, north = pixel_to_lonlat(z, x, y, 256, 0, 0)
        assert west == pytest.approx(lon, abs=1e-9)
        assert north == pytest.approx(lat, abs=1e-9)


def test_count_tiles_equals_enumeration() -> None:
    rng = random.Random(9)
    for _ in range(200):
        w, s = rng.uniform(-179, 170), rng.uniform(-80, 75)
        box = BBox(w, s, w + rng.uniform(0.001, 3), s + rng.uniform(0.001, 3))
        zooms = sorted(rng.sample(range(0, 13), 2))
        assert count_tiles(box, zooms) == len(list(tiles_for_bbox(box, zooms)))


def test_count_on_exact_tile_borders_adds_no_neighbours() -> None:
    b = mercantile.bounds(10, 20, 6)
    assert count_tiles(BBox(b.west, b.south, b.east, b.north), [6]) == 1


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([1, 2, 3], "four numbers"),
        ("1,2,x,4", "four numbers"),
        ([2, 0, 1, 1], "min_lon < max_lon"),
        ([0, 2, 1, 1], "min_lat < max_lat"),
        ([0, 80, 1, 86], "85.05"),
        ([0, -86, 1, 0], "85.05"),
        ([-181, 0, 1, 1], "-180..180"),
        ([0, 0, float("nan"), 1], "finite"),
    ],
)
def test_bad_bboxes_are_refused_with_a_reason(value, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        parse_bbox(value)


def test_bbox_parses_strings_and_reaches_the_mercator_limit() -> None:
    assert parse_bbox("-75.7,37.5,-75.5,37.7").as_list() == [-75.7, 37.5, -75.5, 37.7]
    assert parse_bbox([-1, -MAX_LATITUDE, 1, MAX_LATITUDE]).max_lat == MAX_LATITUDE


def test_zoom_validation() -> None:
    assert validate_zooms([14, 12, 12]) == [12, 14]
    with pytest.raises(InvalidInput, match=r"0\.\.22"):
        validate_zooms([23])
    with pytest.raises(InvalidInput, match=r"0\.\.22"):
        validate_zooms([-1])
    with pytest.raises(InvalidInput, match="at least one"):
        validate_zooms([])


def test_plan_size_limit_says_how_many_tiles() -> None:
    box = BBox(-76, 37, -75, 38)
    n = count_tiles(box, [12])
    assert check_plan_size(box, [12], n) == n
    with pytest.raises(TooLarge, match=f"needs {n} tiles"):
        check_plan_size(box, [12], n - 1)
