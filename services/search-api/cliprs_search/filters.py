"""Search filters (area, zoom levels, bounding box, GeoJSON polygon, window quality) and the
polygon check.

A `HitFilter` says what passes; `cliprs_search.repository.search.filter_where` turns it into SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import shapely
from shapely.geometry import MultiPolygon, Polygon

from cliprs.errors import InvalidInput, TooLarge
from cliprs.tiles import BBox
from cliprs.tiles import parse_polygon as parse_area_polygon


@dataclass
class HitFilter:
    area_id: int | None = None
    # Several areas (a project's): a window passes when it belongs to any of them.
    area_ids: list[int] | None = None
    zooms: list[int] | None = None
    bbox: BBox | None = None
    polygon: Polygon | MultiPolygon | None = None
    # Window quality (None: not checked). A window passes with cloud_score <= max_cloud and
    # valid_fraction >= min_valid; NULL scores (windows embedded before they were measured) pass.
    max_cloud: float | None = None
    min_valid: float | None = None

    def areas(self) -> list[int] | None:
        """The areas a window must belong to (one of), or None when any area will do: ``area_id``
        alone when given (it narrows a project's areas to one), else ``area_ids``."""
        if self.area_id is not None:
            return [self.area_id]
        return list(self.area_ids) if self.area_ids else None

    @property
    def geometry(self) -> bool:
        """True when a bounding box or a polygon limits where hits may lie."""
        return self.bbox is not None or self.polygon is not None

    def bounds(self) -> tuple[float, float, float, float] | None:
        """The lon/lat box [w, s, e, n] every passing footprint touches (the bounding box's and
        the polygon's extents intersected; w > e or s > n when they are disjoint), or None
        without a geometry."""
        boxes = []
        if self.bbox is not None:
            boxes.append(self.bbox.as_list())
        if self.polygon is not None:
            boxes.append(list(self.polygon.bounds))
        if not boxes:
            return None
        w, s, e, n = (
            max(b[0] for b in boxes),
            max(b[1] for b in boxes),
            min(b[2] for b in boxes),
            min(b[3] for b in boxes),
        )
        return (w, s, e, n)

    def fingerprint(self) -> dict:
        """What identifies the filter in a pagination cursor."""
        out = {
            "area": self.area_id,
            "zooms": sorted(self.zooms) if self.zooms else None,
            "bbox": self.bbox.as_list() if self.bbox else None,
            "polygon": self.polygon.wkt if self.polygon is not None else None,
            "max_cloud": self.max_cloud,
            "min_valid": self.min_valid,
        }
        if self.area_ids:  # only when set: cursors of filters without it keep their fingerprint
            out["areas"] = sorted(self.area_ids)
        return out


def parse_polygon(geojson: dict, max_vertices: int) -> Polygon | MultiPolygon:
    """A GeoJSON Polygon or MultiPolygon (bare, or a Feature holding one) in lon/lat degrees.

    Each polygon is checked by core's `cliprs.tiles.parse_polygon` (the rules of an area's
    polygon: closed rings, valid, within the Web-Mercator latitudes); a search filter may also
    be a MultiPolygon, whose parts must not overlap, and has a vertex limit."""
    geom = (
        geojson.get("geometry") if isinstance(geojson, dict) and geojson.get("type") == "Feature" else geojson
    )
    kind = geom.get("type") if isinstance(geom, dict) else None
    if kind == "MultiPolygon":
        coords = geom.get("coordinates")
        if not isinstance(coords, list) or not coords:
            raise InvalidInput("a MultiPolygon needs a list of polygons, each a list of [lon, lat] rings")
        parts = [parse_area_polygon({"type": "Polygon", "coordinates": c}) for c in coords]
        result: Polygon | MultiPolygon = MultiPolygon(parts)
        if not result.is_valid:
            raise InvalidInput(
                f"the MultiPolygon is not valid ({shapely.is_valid_reason(result)}); its parts overlap"
            )
    elif kind == "Polygon":
        result = parse_area_polygon(geom)
    else:
        raise InvalidInput(
            'polygon must be a GeoJSON Polygon or MultiPolygon ({"type": "Polygon", "coordinates": '
            "[[[lon, lat], ...]]}) or a Feature holding one"
        )
    vertices = shapely.get_num_coordinates(result)
    if vertices > max_vertices:
        raise TooLarge(f"the polygon has {vertices} vertices; the limit is {max_vertices} (simplify it)")
    return result
