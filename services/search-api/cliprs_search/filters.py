"""Search filters (area, zoom levels, bounding box, GeoJSON polygon) and their SQL.

The same WHERE clause serves three purposes: estimating how many windows pass (on a random
sample of the indexed windows, which picks the search strategy), listing the ids that pass (for
FAISS's ID selector), and keeping the FAISS hits that pass (over-fetch and filter).
"""

from __future__ import annotations

from dataclasses import dataclass

import shapely
from shapely.geometry import MultiPolygon, Polygon
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from cliprs.errors import InvalidInput, TooLarge
from cliprs.tiles import BBox
from cliprs.tiles import parse_polygon as parse_area_polygon


@dataclass
class HitFilter:
    area_id: int | None = None
    zooms: list[int] | None = None
    bbox: BBox | None = None
    polygon: Polygon | MultiPolygon | None = None

    @property
    def narrows(self) -> bool:
        """True when rows beyond the searched shards' own must be checked (zoom or geometry)."""
        return bool(self.zooms) or self.bbox is not None or self.polygon is not None

    def sql(self) -> tuple[str, dict]:
        """A WHERE clause over ``windows w`` and its parameters."""
        where: list[str] = []
        params: dict = {}
        if self.area_id is not None:
            where.append(
                # Tiles overhang the area's box; only windows that touch the box belong to the area.
                "EXISTS (SELECT 1 FROM area_tiles at JOIN areas a ON a.id = at.area_id "
                "WHERE at.tile_id = w.tile_id AND at.area_id = :area AND ST_Intersects(w.footprint, a.bbox))"
            )
            params["area"] = self.area_id
        if self.zooms:
            where.append("w.z = ANY(:zooms)")
            params["zooms"] = self.zooms
        if self.bbox is not None:
            where.append("ST_Intersects(w.footprint, ST_MakeEnvelope(:bw, :bs, :be, :bn, 4326))")
            b = self.bbox
            params.update(bw=b.min_lon, bs=b.min_lat, be=b.max_lon, bn=b.max_lat)
        if self.polygon is not None:
            where.append("ST_Intersects(w.footprint, ST_GeomFromText(:poly, 4326))")
            params["poly"] = self.polygon.wkt
        return (" AND ".join(where) or "TRUE"), params

    def fingerprint(self) -> dict:
        """What identifies the filter in a pagination cursor."""
        return {
            "area": self.area_id,
            "zooms": sorted(self.zooms) if self.zooms else None,
            "bbox": self.bbox.as_list() if self.bbox else None,
            "polygon": self.polygon.wkt if self.polygon is not None else None,
        }


def parse_polygon(geojson: dict, max_vertices: int) -> Polygon | MultiPolygon:
    """A GeoJSON Polygon or MultiPolygon (bare, or a Feature holding one) in lon/lat degrees,
    each polygon checked by the same rules as an area's (`cliprs.tiles.parse_polygon`)."""
    geom = (
        geojson.get("geometry") if isinstance(geojson, dict) and geojson.get("type") == "Feature" else geojson
    )
    if isinstance(geom, dict) and geom.get("type") == "MultiPolygon":
        coords = geom.get("coordinates")
        if not isinstance(coords, list) or not coords:
            raise InvalidInput("a MultiPolygon needs a list of polygons, each a list of [lon, lat] rings")
        parts = [parse_area_polygon({"type": "Polygon", "coordinates": c}) for c in coords]
        result: Polygon | MultiPolygon = MultiPolygon(parts)
        if not result.is_valid:
            raise InvalidInput(
                f"the MultiPolygon is not valid ({shapely.is_valid_reason(result)}); its parts overlap"
            )
    else:
        try:
            result = parse_area_polygon(geom)
        except InvalidInput as exc:
            raise InvalidInput(
                str(exc).replace("; split a MultiPolygon into one area per part", "")
            ) from None
    vertices = shapely.get_num_coordinates(result)
    if vertices > max_vertices:
        raise TooLarge(f"the polygon has {vertices} vertices; the limit is {max_vertices} (simplify it)")
    return result


async def passing_fraction(conn: AsyncConnection, flt: HitFilter, sample_ids: list[int]) -> float | None:
    """The fraction of ``sample_ids`` (random indexed windows) that pass ``flt``: an unbiased
    estimate of the filter's selectivity, from a few thousand primary-key lookups. PostgreSQL's
    own estimate is no substitute: its geometry histogram spans every area in the world, so a
    filter inside one small area looks far more selective than it is."""
    if not sample_ids:
        return None
    where, params = flt.sql()
    passing = (
        await conn.execute(
            # The sample rows by primary key first (see cliprs_search.queries.BY_IDS).
            text(
                "WITH w AS MATERIALIZED (SELECT * FROM windows WHERE id = ANY(:sample)) "
                f"SELECT count(*) FROM w WHERE {where}"
            ),
            {**params, "sample": sample_ids},
        )
    ).scalar_one()
    return passing / len(sample_ids)


async def matching_ids(conn: AsyncConnection, flt: HitFilter, limit: int) -> list[int]:
    """Ids of the windows that pass ``flt`` (at most ``limit``)."""
    where, params = flt.sql()
    rows = await conn.execute(
        text(f"SELECT w.id FROM windows w WHERE {where} LIMIT :lim"), {**params, "lim": limit}
    )
    return list(rows.scalars())
