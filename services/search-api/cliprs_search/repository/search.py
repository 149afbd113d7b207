"""The SQL of search: the window filter, and window rows by id (the ranking's PostGIS side)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from cliprs_search.filters import HitFilter

# The candidates by primary key first, the filter on those rows after: left to itself the planner
# may scan a broad polygon's whole GiST range (its geometry statistics span every area in the
# world, so a box inside one area looks tiny) and only then look for the few candidate ids.
BY_IDS = "SELECT * FROM windows WHERE id = ANY(:ids)"

WINDOW_COLUMNS = (
    "w.id, w.z, w.scale, w.px_x0, w.px_y0, w.px_x1, w.px_y1, ST_AsGeoJSON(w.footprint, 7) AS footprint, "
    "ST_X(w.center) AS lon, ST_Y(w.center) AS lat, ST_XMin(w.footprint) AS x0, ST_YMin(w.footprint) AS y0, "
    "ST_XMax(w.footprint) AS x1, ST_YMax(w.footprint) AS y1, t.source, t.z AS tz, t.x AS tx, t.y AS ty, "
    "w.valid_fraction, w.cloud_score, w.fingerprint"
)


# ----------------------------------------------------------------------------- filters and windows


def filter_where(flt: HitFilter) -> tuple[str, dict[str, Any]]:
    """A WHERE clause over ``windows w`` for the filter, and its parameters.

    The same clause serves three purposes: estimating how many windows pass (on a random sample
    of the indexed windows, which picks the search strategy), listing the ids that pass (for
    FAISS's ID selector), and keeping the FAISS hits that pass (over-fetch and filter)."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if flt.area_id is not None:
        where.append(
            # Tiles overhang the area's box; only windows that touch the box belong to the area.
            "EXISTS (SELECT 1 FROM area_tiles at JOIN areas a ON a.id = at.area_id "
            "WHERE at.tile_id = w.tile_id AND at.area_id = :area AND ST_Intersects(w.footprint, a.bbox))"
        )
        params["area"] = flt.area_id
    if flt.area_ids:
        where.append(
            "EXISTS (SELECT 1 FROM area_tiles at JOIN areas a ON a.id = at.area_id "
            "WHERE at.tile_id = w.tile_id AND at.area_id = ANY(:areas) AND ST_Intersects(w.footprint, a.bbox))"
        )
        params["areas"] = list(flt.area_ids)
    if flt.zooms:
        where.append("w.z = ANY(:zooms)")
        params["zooms"] = flt.zooms
    if flt.bbox is not None:
        where.append("ST_Intersects(w.footprint, ST_MakeEnvelope(:bw, :bs, :be, :bn, 4326))")
        b = flt.bbox
        params.update(bw=b.min_lon, bs=b.min_lat, be=b.max_lon, bn=b.max_lat)
    if flt.polygon is not None:
        where.append("ST_Intersects(w.footprint, ST_GeomFromText(:poly, 4326))")
        params["poly"] = flt.polygon.wkt
    # NULL: embedded before the window's quality was measured (migration 0005); unknown passes.
    if flt.max_cloud is not None:
        where.append("(w.cloud_score IS NULL OR w.cloud_score <= :max_cloud)")
        params["max_cloud"] = flt.max_cloud
    if flt.min_valid is not None:
        where.append("(w.valid_fraction IS NULL OR w.valid_fraction >= :min_valid)")
        params["min_valid"] = flt.min_valid
    return (" AND ".join(where) or "TRUE"), params


async def window_rows(conn: AsyncConnection, ids: list[int], flt: HitFilter | None = None) -> dict[int, dict]:
    """Rows of the windows among ``ids`` that pass the filter, keyed by id."""
    if not ids:
        return {}
    where, params = filter_where(flt or HitFilter())
    rows = await conn.execute(
        text(
            f"WITH w AS MATERIALIZED ({BY_IDS}) "
            f"SELECT {WINDOW_COLUMNS} FROM w JOIN tiles t ON t.id = w.tile_id WHERE {where}"
        ),
        {**params, "ids": ids},
    )
    return {r.id: dict(r._mapping) for r in rows}


async def passing_count(conn: AsyncConnection, flt: HitFilter, sample_ids: list[int]) -> int:
    """How many of ``sample_ids`` pass ``flt`` (primary-key lookups first, like `window_rows`)."""
    where, params = filter_where(flt)
    result = await conn.execute(
        text(
            f"WITH w AS MATERIALIZED (SELECT * FROM windows WHERE id = ANY(:sample)) SELECT count(*) FROM w WHERE {where}"
        ),
        {**params, "sample": sample_ids},
    )
    return int(result.scalar_one())


async def matching_ids(conn: AsyncConnection, flt: HitFilter, limit: int) -> list[int]:
    """Ids of the windows that pass ``flt`` (at most ``limit``)."""
    where, params = filter_where(flt)
    rows = await conn.execute(
        text(f"SELECT w.id FROM windows w WHERE {where} LIMIT :lim"), {**params, "lim": limit}
    )
    return list(rows.scalars())
