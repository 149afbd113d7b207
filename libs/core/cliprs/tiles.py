"""Web-Mercator XYZ tile math (via `mercantile`), area validation and tile planning.

An area is a lon/lat bounding box (`BBox`) or a GeoJSON polygon (a shapely `Polygon`). The tiles
of an area at a zoom are those whose square overlaps it with a positive area (touching an edge
is not enough), the same rule for both, so a rectangle polygon plans exactly its bbox's tiles.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import mercantile
import numpy as np
import shapely
from shapely.geometry import Polygon, shape

from cliprs.errors import InvalidInput, TooLarge

# Web-Mercator is undefined at the poles; tiles stop at this latitude.
MAX_LATITUDE = 85.0511287798066
# The deepest zoom level the platform accepts (CoreSettings.max_zoom may lower it).
MAX_ZOOM = 22


@dataclass(frozen=True)
class BBox:
    """A lon/lat bounding box in degrees (EPSG:4326)."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float

    def as_list(self) -> list[float]:
        return [self.min_lon, self.min_lat, self.max_lon, self.max_lat]

    def wkt(self) -> str:
        a, b, c, d = self.as_list()
        return f"POLYGON(({a} {b},{c} {b},{c} {d},{a} {d},{a} {b}))"


def parse_bbox(values: Iterable[float] | str) -> BBox:
    """Validate ``[min_lon, min_lat, max_lon, max_lat]`` (list or comma string)."""
    if isinstance(values, str):
        try:
            values = [float(v) for v in values.split(",")]
        except ValueError:
            raise InvalidInput("bbox must be four numbers 'min_lon,min_lat,max_lon,max_lat'") from None
    vals = list(values)
    if len(vals) != 4:
        raise InvalidInput("bbox must have four numbers: min_lon, min_lat, max_lon, max_lat")
    min_lon, min_lat, max_lon, max_lat = (float(v) for v in vals)
    if not all(map(_finite, vals)):
        raise InvalidInput("bbox values must be finite numbers")
    if not (-180 <= min_lon <= 180 and -180 <= max_lon <= 180):
        raise InvalidInput("bbox longitudes must be within -180..180")
    if not (-MAX_LATITUDE <= min_lat <= MAX_LATITUDE and -MAX_LATITUDE <= max_lat <= MAX_LATITUDE):
        raise InvalidInput(f"bbox latitudes must be within ±{MAX_LATITUDE:.2f}° (the Web-Mercator limit)")
    if min_lon >= max_lon or min_lat >= max_lat:
        raise InvalidInput("bbox must have min_lon < max_lon and min_lat < max_lat")
    return BBox(min_lon, min_lat, max_lon, max_lat)


def _finite(v: float) -> bool:
    return float(v) == float(v) and abs(float(v)) != float("inf")


def validate_zooms(zooms: Iterable[int], max_zoom: int = MAX_ZOOM) -> list[int]:
    """Sorted unique zoom levels, each within 0..max_zoom."""
    out = sorted(set(int(z) for z in zooms))
    if not out:
        raise InvalidInput("give at least one zoom level")
    bad = [z for z in out if not 0 <= z <= max_zoom]
    if bad:
        raise InvalidInput(f"zoom levels must be within 0..{max_zoom}, got {bad}")
    return out


def parse_zoom_spec(spec: str, max_zoom: int = MAX_ZOOM) -> list[int]:
    """``"10-14"`` -> [10, ..., 14]; ``"10,12"`` -> [10, 12]; ``"12"`` -> [12], each within 0..max_zoom."""
    text = spec.strip()
    try:
        if "-" in text:
            start, end = (int(part) for part in text.split("-", 1))
            zooms = list(range(start, end + 1))
        else:
            zooms = [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidInput(f"bad zoom spec {spec!r}: use A-B (e.g. 10-14) or a list (e.g. 10,12)") from None
    if not zooms:
        raise InvalidInput(f"zoom range {spec!r} runs backwards")
    return validate_zooms(zooms, max_zoom)


Area = BBox | Polygon


def parse_polygon(value: dict) -> Polygon:
    """Validate a GeoJSON Polygon (or a Feature holding one) in lon/lat degrees."""
    geom = value.get("geometry") if isinstance(value, dict) and value.get("type") == "Feature" else value
    if not isinstance(geom, dict) or geom.get("type") != "Polygon":
        raise InvalidInput(
            'polygon must be a GeoJSON Polygon ({"type": "Polygon", "coordinates": [[[lon, lat], ...]]}) '
            "or a Feature holding one; split a MultiPolygon into one area per part"
        )
    try:
        with warnings.catch_warnings():  # NaN coordinates warn here; they are refused just below
            warnings.simplefilter("ignore", RuntimeWarning)
            poly = shape(geom)
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise InvalidInput(
            f"polygon coordinates are malformed ({exc}); give rings of [lon, lat] pairs, "
            "each ring closed (last point = first) with at least 4 points"
        ) from None
    if poly.is_empty or not np.isfinite(shapely.get_coordinates(poly)).all():
        raise InvalidInput("polygon needs finite [lon, lat] coordinates")
    min_lon, min_lat, max_lon, max_lat = poly.bounds
    if min_lon < -180 or max_lon > 180:
        raise InvalidInput(
            "polygon longitudes must be within -180..180; split an area that crosses the antimeridian in two"
        )
    if min_lat < -MAX_LATITUDE or max_lat > MAX_LATITUDE:
        raise InvalidInput(f"polygon latitudes must be within ±{MAX_LATITUDE:.2f}° (the Web-Mercator limit)")
    if not poly.is_valid:
        raise InvalidInput(
            f"polygon is not valid ({shapely.is_valid_reason(poly)}); "
            "its rings must not cross themselves or each other"
        )
    if poly.area <= 0:
        raise InvalidInput("polygon has no area; give at least three distinct corners")
    return poly


def area_polygon(area: Area) -> Polygon:
    """The area as a polygon (a bbox becomes its rectangle)."""
    return shapely.box(*area.as_list()) if isinstance(area, BBox) else area


def area_wkt(area: Area) -> str:
    return area.wkt() if isinstance(area, BBox) else area.wkt


def morton(x: int, y: int) -> int:
    """Z-order key: interleaving x and y bits keeps neighbouring tiles close in the fetch order."""
    key = 0
    for bit in range(32):
        key |= ((x >> bit) & 1) << (2 * bit) | ((y >> bit) & 1) << (2 * bit + 1)
    return key


def zorder(tiles: Iterable[mercantile.Tile]) -> list[mercantile.Tile]:
    """Tiles zoom by zoom, each zoom along the Z-order curve."""
    return sorted(tiles, key=lambda t: (t.z, morton(t.x, t.y)))


def tiles_for_bbox(bbox: BBox, zooms: Iterable[int]) -> Iterator[mercantile.Tile]:
    """Every tile that intersects ``bbox`` at each zoom, zoom by zoom."""
    for z in zooms:
        yield from mercantile.tiles(*bbox.as_list(), zooms=[z])


def tiles_for_area(area: Area, zooms: Iterable[int]) -> Iterator[mercantile.Tile]:
    """Every tile overlapping a bbox or a polygon at each zoom, zoom by zoom."""
    if isinstance(area, BBox):
        yield from tiles_for_bbox(area, zooms)
        return
    zooms = sorted(set(zooms))
    if not zooms:
        return
    levels = _quadtree(area, zooms[-1], budget=None)
    for z in zooms:
        for level in levels[: z + 1]:
            d = z - level.z
            for x, y in level.full:
                for cx in range(x << d, (x + 1) << d):
                    for cy in range(y << d, (y + 1) << d):
                        yield mercantile.Tile(cx, cy, z)
        yield from (mercantile.Tile(x, y, z) for x, y in levels[z].partial)


def count_tiles(area: Area, zooms: Iterable[int]) -> int:
    """Number of tiles in the plan (exact, or an estimate for absurdly large polygons)."""
    return plan_counts(area, zooms).total


@dataclass(frozen=True)
class PlanCounts:
    """Tiles per zoom of a plan; ``exact`` is False when a huge polygon was estimated."""

    per_zoom: dict[int, int]
    exact: bool = True

    @property
    def total(self) -> int:
        return sum(self.per_zoom.values())

    def describe(self) -> str:
        return ", ".join(f"z{z}: {n}" for z, n in sorted(self.per_zoom.items()))


# Polygon planning visits the tiles along the outline, zoom by zoom; past this many at one zoom
# the plan is far beyond any sane limit, and deeper counts are estimated from the area instead.
PLAN_WORK_BUDGET = 20_000


def plan_counts(area: Area, zooms: Iterable[int]) -> PlanCounts:
    """Tiles per zoom, without enumerating them (so huge plans are cheap to refuse)."""
    zooms = sorted(set(int(z) for z in zooms))
    if isinstance(area, BBox):
        return PlanCounts({z: _bbox_count(area, z) for z in zooms})
    if not zooms:
        return PlanCounts({})
    levels = _quadtree(area, zooms[-1], budget=PLAN_WORK_BUDGET)
    per_zoom: dict[int, int] = {}
    for z in zooms:
        full = sum(len(level.full) << (2 * (z - level.z)) for level in levels[: z + 1])
        if z < len(levels):
            per_zoom[z] = full + len(levels[z].partial)
        else:  # past the work budget: the outline tiles' share is their overlapping area
            last = levels[-1]
            d = z - last.z
            per_zoom[z] = full + max(len(last.partial) << d, round(last.partial_fill * (1 << (2 * d))))
    return PlanCounts(per_zoom, exact=len(levels) > zooms[-1])


def _bbox_count(bbox: BBox, z: int) -> int:
    eps = 1e-9  # the same nudge mercantile.tiles uses so an edge on a border adds no tile
    ul = mercantile.tile(bbox.min_lon, bbox.max_lat, z)
    lr = mercantile.tile(bbox.max_lon - eps, bbox.min_lat + eps, z)
    return (lr.x - ul.x + 1) * (lr.y - ul.y + 1)


@dataclass
class _Level:
    z: int
    full: list[tuple[int, int]]  # tiles inside the polygon, first found at this zoom
    partial: list[tuple[int, int]]  # tiles crossed by its outline
    partial_fill: float = 0.0  # sum over partial tiles of the share of their area inside


def _quadtree(poly: Polygon, max_zoom: int, budget: int | None) -> list[_Level]:
    """Split tiles crossed by the outline into their four children, zoom 0 to ``max_zoom``.

    Tiles wholly inside are kept as they are (their descendants are all in the plan), tiles
    outside or only touching are dropped. Stops early when a zoom has more than ``budget``
    outline tiles; the last level then carries ``partial_fill`` for estimating deeper counts.
    """
    shapely.prepare(poly)
    levels: list[_Level] = []
    xs, ys = np.array([0]), np.array([0])
    for z in range(max_zoom + 1):
        boxes = _tile_boxes(xs, ys, z)
        hit = shapely.intersects(poly, boxes) & ~shapely.touches(poly, boxes)
        inside = hit & shapely.covers(poly, boxes)
        edge = hit & ~inside
        level = _Level(
            z,
            list(zip(xs[inside].tolist(), ys[inside].tolist(), strict=True)),
            list(zip(xs[edge].tolist(), ys[edge].tolist(), strict=True)),
        )
        levels.append(level)
        xs, ys = xs[edge], ys[edge]
        if budget is not None and len(xs) > budget and z < max_zoom:
            cut = shapely.area(shapely.intersection(poly, boxes[edge])) / shapely.area(boxes[edge])
            level.partial_fill = float(cut.sum())
            break
        # The four children of every outline tile.
        xs = np.concatenate([2 * xs, 2 * xs + 1, 2 * xs, 2 * xs + 1])
        ys = np.concatenate([2 * ys, 2 * ys, 2 * ys + 1, 2 * ys + 1])
    return levels


def _tile_boxes(xs: np.ndarray, ys: np.ndarray, z: int) -> np.ndarray:
    """Lon/lat boxes of tiles, computed exactly as `mercantile.ul` does, so borders match bit for bit."""
    n2 = math.pow(2, z)
    lon = np.concatenate([xs, xs + 1]) / n2 * 360.0 - 180.0
    uy, y_inv = np.unique(np.concatenate([ys, ys + 1]), return_inverse=True)
    # Python's math per distinct row (few), not numpy's vectorised sinh, which may round differently.
    lat = np.array([math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * int(y) / n2)))) for y in uy])[y_inv]
    n = len(xs)
    return shapely.box(lon[:n], lat[n:], lon[n:], lat[:n])


def parse_area(bbox: Iterable[float] | str | None = None, polygon: dict | None = None) -> Area:
    """An area from either a bbox or a GeoJSON polygon (exactly one of them)."""
    if (bbox is None) == (polygon is None):
        raise InvalidInput(
            "give either bbox [min_lon, min_lat, max_lon, max_lat] or polygon (a GeoJSON Polygon), not both"
        )
    return parse_bbox(bbox) if bbox is not None else parse_polygon(polygon)


def plan_summary(area: Area, zooms: list[int], limit: int) -> dict:
    """What fetching the area would take: tiles per zoom, and whether it is within ``limit``."""
    counts = plan_counts(area, zooms)
    summary = {
        "tiles": counts.total,
        "per_zoom": {str(z): n for z, n in sorted(counts.per_zoom.items())},
        "exact": counts.exact,
        "limit": limit,
        "within_limit": counts.total <= limit,
    }
    if not summary["within_limit"]:
        summary["message"] = _too_large(counts, zooms, limit)
    return summary


def check_plan_size(area: Area, zooms: list[int], limit: int) -> int:
    """Tile count of the plan, or `TooLarge` saying how many tiles it would be."""
    counts = plan_counts(area, zooms)
    if counts.total > limit:
        raise TooLarge(_too_large(counts, zooms, limit))
    return counts.total


def _too_large(counts: PlanCounts, zooms: list[int], limit: int) -> str:
    about = "" if counts.exact else "about "
    return (
        f"this area needs {about}{counts.total} tiles at zooms {zooms} ({counts.describe()}), above the "
        f"limit of {limit}; draw a smaller area or drop the highest zoom"
    )


def tile_polygon_wkt(z: int, x: int, y: int) -> str:
    """The tile's footprint as a WKT polygon in lon/lat."""
    b = mercantile.bounds(x, y, z)
    return BBox(b.west, b.south, b.east, b.north).wkt()


def pixel_to_lonlat(z: int, x: int, y: int, tile_size: int, px: float, py: float) -> tuple[float, float]:
    """Lon/lat of a pixel position inside tile (z, x, y) of ``tile_size`` pixels."""
    xy = mercantile.xy_bounds(x, y, z)
    mx = xy.left + (xy.right - xy.left) * px / tile_size
    my = xy.top - (xy.top - xy.bottom) * py / tile_size
    lon, lat = mercantile.lnglat(mx, my)
    return lon, lat
