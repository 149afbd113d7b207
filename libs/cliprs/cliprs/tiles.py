"""Web-Mercator XYZ tile math (via `mercantile`) and bounding-box validation."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import mercantile

from cliprs.errors import InvalidInput, TooLarge

# Web-Mercator is undefined at the poles; tiles stop at this latitude.
MAX_LATITUDE = 85.0511287798066


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


def validate_zooms(zooms: Iterable[int], max_zoom: int = 22) -> list[int]:
    """Sorted unique zoom levels, each within 0..max_zoom."""
    out = sorted(set(int(z) for z in zooms))
    if not out:
        raise InvalidInput("give at least one zoom level")
    bad = [z for z in out if not 0 <= z <= max_zoom]
    if bad:
        raise InvalidInput(f"zoom levels must be within 0..{max_zoom}, got {bad}")
    return out


def tiles_for_bbox(bbox: BBox, zooms: Iterable[int]) -> Iterator[mercantile.Tile]:
    """Every tile that intersects ``bbox`` at each zoom, zoom by zoom."""
    for z in zooms:
        yield from mercantile.tiles(*bbox.as_list(), zooms=[z])


def count_tiles(bbox: BBox, zooms: Iterable[int]) -> int:
    """Number of tiles in the plan, from tile ranges (no enumeration, so huge plans are cheap)."""
    eps = 1e-9  # the same nudge mercantile.tiles uses so an edge on a border adds no tile
    total = 0
    for z in zooms:
        ul = mercantile.tile(bbox.min_lon, bbox.max_lat, z)
        lr = mercantile.tile(bbox.max_lon - eps, bbox.min_lat + eps, z)
        total += (lr.x - ul.x + 1) * (lr.y - ul.y + 1)
    return total


def check_plan_size(bbox: BBox, zooms: list[int], limit: int) -> int:
    """Tile count of the plan, or `TooLarge` saying how many tiles it would be."""
    n = count_tiles(bbox, zooms)
    if n > limit:
        raise TooLarge(
            f"this area needs {n} tiles at zooms {zooms}, above the limit of {limit}; "
            "draw a smaller box or drop the highest zoom"
        )
    return n


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
