"""Every SQL statement of the search-api: window rows and filters, tiles, areas, ingest jobs.

Functions take an open connection (the caller decides where a transaction begins and ends) and
return plain dicts, or ids; nothing here knows about HTTP.
"""

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
AREA_COLUMNS = (
    "a.id, a.name, a.source, a.status, a.zooms, a.created_at, "
    "ST_XMin(a.bbox) AS w, ST_YMin(a.bbox) AS s, ST_XMax(a.bbox) AS e, ST_YMax(a.bbox) AS n"
)
JOB_COLUMNS = (
    "j.id, j.area_id, j.state, j.tiles_planned, j.tiles_fetched, j.tiles_cached, j.tiles_failed, "
    "j.tiles_embedded, j.windows_embedded, j.windows_indexed, j.windows_skipped_nodata, j.stage_seconds, j.error, j.created_at, "
    "j.updated_at, j.finished_at"
)


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT 1"))


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


# ----------------------------------------------------------------------------- tiles


async def tile_at(conn: AsyncConnection, source: str, z: int, x: int, y: int) -> dict | None:
    """The ingested tile ``source/z/x/y`` (``id``, ``tile_size``), or None."""
    row = (
        await conn.execute(
            text("SELECT id, tile_size FROM tiles WHERE source = :s AND z = :z AND x = :x AND y = :y"),
            {"s": source, "z": z, "x": x, "y": y},
        )
    ).one_or_none()
    return dict(row._mapping) if row is not None else None


async def tile_windows(conn: AsyncConnection, tile_id: int) -> list[dict]:
    """Every window row of one tile, by id."""
    rows = await conn.execute(
        text(
            f"SELECT {WINDOW_COLUMNS} FROM windows w JOIN tiles t ON t.id = w.tile_id WHERE w.tile_id = :t ORDER BY w.id"
        ),
        {"t": tile_id},
    )
    return [dict(r._mapping) for r in rows]


# ----------------------------------------------------------------------------- areas and jobs


def _area(r: Any) -> dict:
    return {
        "id": r.id,
        "name": r.name,
        "source": r.source,
        "status": r.status,
        "zooms": list(r.zooms),
        "bbox": [r.w, r.s, r.e, r.n],
        "created_at": r.created_at.isoformat(),
    }


def _job(r: Any) -> dict:
    out = dict(r._mapping)
    for key in ("created_at", "updated_at", "finished_at"):
        out[key] = out[key].isoformat() if out[key] else None
    return out


async def area(conn: AsyncConnection, area_id: int) -> dict | None:
    row = (
        await conn.execute(text(f"SELECT {AREA_COLUMNS} FROM areas a WHERE a.id = :id"), {"id": area_id})
    ).one_or_none()
    return _area(row) if row is not None else None


async def areas(conn: AsyncConnection) -> list[dict]:
    """Every area, by id."""
    return [_area(r) for r in await conn.execute(text(f"SELECT {AREA_COLUMNS} FROM areas a ORDER BY a.id"))]


async def latest_jobs(conn: AsyncConnection) -> dict[int, dict]:
    """Each area's latest ingest job, keyed by area id."""
    rows = await conn.execute(
        text(f"SELECT DISTINCT ON (j.area_id) {JOB_COLUMNS} FROM ingest_jobs j ORDER BY j.area_id, j.id DESC")
    )
    return {r.area_id: _job(r) for r in rows}


async def job(conn: AsyncConnection, job_id: int) -> dict | None:
    row = (
        await conn.execute(text(f"SELECT {JOB_COLUMNS} FROM ingest_jobs j WHERE j.id = :id"), {"id": job_id})
    ).one_or_none()
    return _job(row) if row is not None else None


async def insert_area(conn: AsyncConnection, name: str, wkt: str, zooms: list[int], source: str) -> int:
    """A new pending area; its id."""
    result = await conn.execute(
        text(
            "INSERT INTO areas (name, bbox, zooms, source, status) VALUES "
            "(:name, ST_GeomFromText(:wkt, 4326), :zooms, :source, 'pending') RETURNING id"
        ),
        {"name": name, "wkt": wkt, "zooms": zooms, "source": source},
    )
    return int(result.scalar_one())


async def insert_job(conn: AsyncConnection, area_id: int, tiles_planned: int) -> int:
    """A new queued ingest job of the area; its id."""
    result = await conn.execute(
        text("INSERT INTO ingest_jobs (area_id, tiles_planned) VALUES (:a, :n) RETURNING id"),
        {"a": area_id, "n": tiles_planned},
    )
    return int(result.scalar_one())


async def delete_unstarted_area(conn: AsyncConnection, area_id: int) -> None:
    """Remove an area whose ingestion never started (its job goes with it: ON DELETE CASCADE)."""
    await conn.execute(text("DELETE FROM areas WHERE id = :a AND status = 'pending'"), {"a": area_id})


async def lock_area(conn: AsyncConnection, area_id: int) -> dict | None:
    """Lock the area's row until the transaction ends; its ``status`` and latest ``job_state``
    (None when it has no job), or None when there is no such area."""
    row = (
        await conn.execute(
            text(
                "SELECT a.status, (SELECT j.state FROM ingest_jobs j WHERE j.area_id = a.id "
                "ORDER BY j.id DESC LIMIT 1) AS job_state FROM areas a WHERE a.id = :a FOR UPDATE"
            ),
            {"a": area_id},
        )
    ).one_or_none()
    return dict(row._mapping) if row is not None else None


async def set_area_status(conn: AsyncConnection, area_id: int, status: str) -> None:
    await conn.execute(text("UPDATE areas SET status = :s WHERE id = :a"), {"s": status, "a": area_id})
