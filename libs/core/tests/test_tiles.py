"""Tile math against the formulas of the design brief and against PROJ (an independent
implementation, through rasterio), area validation, polygon planning and the Z-order."""

from __future__ import annotations

import math
import random

import mercantile
import pytest
import shapely
from rasterio.warp import transform

from cliprs.errors import InvalidInput, TooLarge
from cliprs.tiles import (
    MAX_LATITUDE,
    BBox,
    area_polygon,
    check_plan_size,
    count_tiles,
    morton,
    parse_area,
    parse_bbox,
    parse_polygon,
    pixel_to_lonlat,
    plan_counts,
    plan_summary,
    tiles_for_area,
    tiles_for_bbox,
    validate_zooms,
    zorder,
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


# --------------------------------------------------------------------------- independent checks: PROJ


R = 6378137.0  # the Web-Mercator sphere
HALF = math.pi * R  # metres from the centre to the edge of the Web-Mercator square


def proj_tile(lon: float, lat: float, z: int) -> tuple[int, int] | None:
    """The tile from PROJ's own EPSG:4326 -> EPSG:3857 projection; None when too close to a border
    for two correct implementations to be expected to agree."""
    (mx,), (my,) = transform("EPSG:4326", "EPSG:3857", [lon], [lat])
    fx = (mx + HALF) / (2 * HALF) * 2**z
    fy = (HALF - my) / (2 * HALF) * 2**z
    if min(abs(fx - round(fx)), abs(fy - round(fy))) < 1e-6:
        return None
    return min(math.floor(fx), 2**z - 1), min(max(math.floor(fy), 0), 2**z - 1)


def test_tile_numbers_match_proj_over_random_points() -> None:
    rng = random.Random(11)
    checked = 0
    for _ in range(3000):
        lon, lat, z = rng.uniform(-180, 180), rng.uniform(-85.05, 85.05), rng.randint(0, 22)
        expected = proj_tile(lon, lat, z)
        if expected is None:
            continue
        t = mercantile.tile(lon, lat, z)
        assert (t.x, t.y) == expected, (lon, lat, z)
        checked += 1
    assert checked > 2900


def test_tile_bounds_match_proj_inverse() -> None:
    rng = random.Random(12)
    for _ in range(500):
        z = rng.randint(0, 22)
        x, y = rng.randrange(2**z), rng.randrange(2**z)
        size = 2 * HALF / 2**z
        xs = [-HALF + x * size, -HALF + (x + 1) * size]
        ys = [HALF - (y + 1) * size, HALF - y * size]
        lons, lats = transform("EPSG:3857", "EPSG:4326", xs, ys)
        b = mercantile.bounds(x, y, z)
        assert (b.west, b.east, b.south, b.north) == pytest.approx((*lons, *lats), abs=1e-9)
        # A pixel inside the tile lands where PROJ says it does.
        px, py = rng.uniform(0, 256), rng.uniform(0, 256)
        (plon,), (plat,) = transform(
            "EPSG:3857", "EPSG:4326", [xs[0] + px / 256 * size], [ys[1] - py / 256 * size]
        )
        assert pixel_to_lonlat(z, x, y, 256, px, py) == pytest.approx((plon, plat), abs=1e-9)


def test_poles_clamp_to_the_first_and_last_rows() -> None:
    rng = random.Random(13)
    for _ in range(300):
        z, lon = rng.randint(0, 22), rng.uniform(-180, 180)
        assert mercantile.tile(lon, rng.uniform(85.06, 89.99), z).y == 0
        assert mercantile.tile(lon, rng.uniform(-89.99, -85.06), z).y == 2**z - 1
        assert formula_tile(lon, rng.uniform(85.06, 89.99), z)[1] == 0
    # The top edge of the first row is the Web-Mercator limit, by PROJ's inverse too.
    (_,), (top,) = transform("EPSG:3857", "EPSG:4326", [0.0], [HALF])
    assert mercantile.bounds(0, 0, 5).north == pytest.approx(top, abs=1e-9) == pytest.approx(MAX_LATITUDE)
    assert mercantile.bounds(0, 2**5 - 1, 5).south == pytest.approx(-MAX_LATITUDE)
    # Areas stop at the limit instead of being silently clamped.
    with pytest.raises(InvalidInput, match=r"85\.05"):
        parse_polygon(geojson([(0, 80), (1, 80), (1, 89), (0, 80)]))


def test_antimeridian_edges() -> None:
    for z in (0, 1, 7, 15, 22):
        assert mercantile.tile(180.0, 10, z).x == 2**z - 1  # the east edge belongs to the last column
        assert mercantile.tile(-180.0, 10, z).x == 0
        assert mercantile.tile(179.999999, 10, z).x == formula_tile(179.999999, 10, z)[0] == 2**z - 1
        assert mercantile.bounds(2**z - 1, 0, z).east == pytest.approx(180.0)
        assert mercantile.bounds(0, 0, z).west == pytest.approx(-180.0)
    east = {(t.x, t.z) for t in tiles_for_area(BBox(179.5, 0, 180, 1), [8])}
    west = {(t.x, t.z) for t in tiles_for_area(BBox(-180, 0, -179.5, 1), [8])}
    assert east == {(255, 8)} and west == {(0, 8)}
    poly = parse_polygon(geojson([(179.5, 0), (180, 0), (180, 1), (179.5, 0)]))
    assert {t.x for t in tiles_for_area(poly, [8])} == {255}
    with pytest.raises(InvalidInput, match="antimeridian"):
        parse_polygon(geojson([(179.5, 0), (180.5, 0), (180.5, 1), (179.5, 0)]))


# --------------------------------------------------------------------------- polygons and Z-order


def geojson(ring: list[tuple[float, float]], holes: list | None = None) -> dict:
    return {
        "type": "Polygon",
        "coordinates": [[list(p) for p in ring], *[[list(p) for p in h] for h in holes or []]],
    }


def random_polygon(rng: random.Random) -> dict:
    """A star-shaped polygon (always valid) of a few kilometres to a few degrees."""
    cx, cy = rng.uniform(-170, 170), rng.uniform(-70, 70)
    radius = rng.choice([0.01, 0.1, 1.0])
    n = rng.randint(4, 12)
    # One corner per sector, so corners go round the centre in order: a simple polygon.
    angles = [(i + rng.uniform(0, 0.8)) * 2 * math.pi / n for i in range(n)]
    radii = [radius * rng.uniform(0.2, 1) for _ in range(n)]
    ring = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)]
    return geojson([*ring, ring[0]])


def brute_force(poly, z: int) -> set[tuple[int, int, int]]:
    """Every tile of the polygon's box, kept when its overlap with the polygon has an area."""
    out = set()
    for t in mercantile.tiles(*poly.bounds, zooms=[z]):
        b = mercantile.bounds(t)
        if poly.intersection(shapely.box(b.west, b.south, b.east, b.north)).area > 0:
            out.add((t.z, t.x, t.y))
    return out


def test_polygon_plan_matches_brute_force() -> None:
    rng = random.Random(21)
    for _ in range(40):
        poly = parse_polygon(random_polygon(rng))
        zooms = sorted(rng.sample(range(4, 14), 2))
        planned = [(t.z, t.x, t.y) for t in tiles_for_area(poly, zooms)]
        assert len(planned) == len(set(planned))
        expected = set().union(*(brute_force(poly, z) for z in zooms))
        assert set(planned) == expected
        counts = plan_counts(poly, zooms)
        assert counts.exact and counts.total == len(planned)
        assert counts.per_zoom == {z: sum(1 for t in planned if t[0] == z) for z in zooms}


def test_polygon_plan_is_smaller_than_its_bbox_and_skips_holes() -> None:
    # A thin diagonal strip across the study area: most tiles of its box are not needed.
    strip = parse_polygon(
        geojson([(-77.27, 38.81), (-77.25, 38.81), (-76.99, 38.91), (-77.01, 38.91), (-77.27, 38.81)])
    )
    box = BBox(*strip.bounds)
    assert count_tiles(strip, [16]) < count_tiles(box, [16]) / 4
    ring = [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]
    hole = [(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8), (0.2, 0.2)]
    donut = parse_polygon(geojson(ring, [hole]))
    inside_hole = mercantile.tile(0.5, 0.5, 12)
    planned = set(tiles_for_area(donut, [12]))
    assert inside_hole not in planned
    assert mercantile.tile(0.1, 0.1, 12) in planned
    assert len(planned) == len(brute_force(donut, 12))


def test_rectangle_polygon_plans_exactly_its_bbox_tiles() -> None:
    rng = random.Random(22)
    for _ in range(100):
        w, s = rng.uniform(-180, 170), rng.uniform(-85, 75)
        box = BBox(w, s, min(180.0, w + rng.uniform(0.001, 3)), s + rng.uniform(0.001, 3))
        zooms = sorted(rng.sample(range(0, 13), 2))
        assert sorted(tiles_for_area(area_polygon(box), zooms)) == sorted(tiles_for_bbox(box, zooms))
    b = mercantile.bounds(10, 20, 6)  # a polygon exactly on tile borders adds no neighbours
    assert count_tiles(area_polygon(BBox(b.west, b.south, b.east, b.north)), [6]) == 1


def test_huge_polygons_are_estimated_cheaply_and_refused_with_the_count() -> None:
    world = area_polygon(BBox(-179, -80, 179, 80))
    counts = plan_counts(world, [10, 22])
    exact = plan_counts(BBox(-179, -80, 179, 80), [10, 22])
    assert counts.per_zoom[10] == exact.per_zoom[10]
    assert not counts.exact
    assert counts.per_zoom[22] == pytest.approx(exact.per_zoom[22], rel=0.01)
    with pytest.raises(
        TooLarge, match=r"needs about \d+ tiles at zooms \[10, 22\] \(z10: 811920, z22: \d+\)"
    ):
        check_plan_size(world, [10, 22], 5000)
    summary = plan_summary(world, [10], 5000)
    assert summary["within_limit"] is False and summary["tiles"] == 811920
    assert "needs 811920 tiles" in summary["message"]
    box = BBox(-75.66, 37.66, -75.62, 37.69)
    small = plan_summary(box, [13, 14], 5000)
    per_zoom = {str(z): len(list(tiles_for_bbox(box, [z]))) for z in (13, 14)}
    assert small == {
        "tiles": sum(per_zoom.values()),
        "per_zoom": per_zoom,
        "exact": True,
        "limit": 5000,
        "within_limit": True,
    }


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"type": "MultiPolygon", "coordinates": []}, "MultiPolygon"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}, "malformed"),
        ({"type": "Polygon", "coordinates": "nope"}, "malformed"),
        (geojson([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)]), "not valid"),
        (geojson([(0, 0), (1, 1), (2, 2), (0, 0)]), "not valid|no area"),
        (geojson([(0, 0), (float("nan"), 1), (1, 0), (0, 0)]), "finite"),
        ("POLYGON((0 0, 1 0, 1 1, 0 0))", "GeoJSON Polygon"),
    ],
)
def test_bad_polygons_are_refused_with_a_reason(value, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        parse_polygon(value)


def test_parse_area_takes_a_feature_or_a_bbox_but_not_both() -> None:
    ring = [(0, 0), (1, 0), (1, 1), (0, 0)]
    poly = parse_area(polygon={"type": "Feature", "properties": {}, "geometry": geojson(ring)})
    assert poly.area == pytest.approx(0.5)
    assert parse_area(bbox=[0, 0, 1, 1]) == BBox(0, 0, 1, 1)
    for kwargs in ({}, {"bbox": [0, 0, 1, 1], "polygon": geojson(ring)}):
        with pytest.raises(InvalidInput, match="either bbox"):
            parse_area(**kwargs)


def test_zorder_keeps_quadrants_together() -> None:
    assert [morton(x, y) for x, y in [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (0, 2)]] == [0, 1, 2, 3, 4, 8]
    block = [mercantile.Tile(x, y, 4) for x in range(4) for y in range(4)]
    ordered = zorder(reversed(block))
    # Each run of four is one 2x2 quadrant, and each run of 16 at a finer zoom is one parent.
    for i in range(0, 16, 4):
        assert len({(t.x // 2, t.y // 2) for t in ordered[i : i + 4]}) == 1
    mixed = zorder([mercantile.Tile(0, 0, 5), mercantile.Tile(3, 3, 4), mercantile.Tile(0, 0, 4)])
    assert [t.z for t in mixed] == [4, 4, 5]
