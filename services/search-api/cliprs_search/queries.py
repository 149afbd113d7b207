"""PostGIS side of the gateway: areas, jobs, and joining FAISS hits to window rows."""

from __future__ import annotations

import json

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from cliprs_search.filters import HitFilter


async def window_rows(conn: AsyncConnection, ids: list[int], flt: HitFilter | None = None) -> dict[int, dict]:
    """Rows of the windows among ``ids`` that pass the filter, keyed by id."""
    if not ids:
        return {}
    where, params = (flt or HitFilter()).sql()
    rows = await conn.execute(
        text(
            f"WITH w AS MATERIALIZED ({BY_IDS}) "
            f"SELECT {WINDOW_COLUMNS} FROM w JOIN tiles t ON t.id = w.tile_id WHERE {where}"
        ),
        {**params, "ids": ids},
    )
    return {r.id: dict(r._mapping) for r in rows}


# The candidates by primary key first, the filter on those rows after: left to itself the planner
# may scan a broad polygon's whole GiST range (its geometry statistics span every area in the
# world, so a box inside one area looks tiny) and only then look for the few candidate ids.
BY_IDS = "SELECT * FROM windows WHERE id = ANY(:ids)"

WINDOW_COLUMNS = (
    "w.id, w.z, w.scale, w.px_x0, w.px_y0, w.px_x1, w.px_y1, ST_AsGeoJSON(w.footprint, 7) AS footprint, "
    "ST_X(w.center) AS lon, ST_Y(w.center) AS lat, ST_XMin(w.footprint) AS x0, ST_YMin(w.footprint) AS y0, "
    "ST_XMax(w.footprint) AS x1, ST_YMax(w.footprint) AS y1, t.source, t.z AS tz, t.x AS tx, t.y AS ty"
)


def feature(
    row: dict,
    score: float,
    rank: int,
    tiler_url: str,
    merged: list[int] | None = None,
    place: dict | None = None,
) -> dict:
    """One search hit as a GeoJSON feature (``merged``: windows merged into it)."""
    props = {
        "window_id": row["id"],
        "score": round(float(score), 6),
        "rank": rank,
        "z": row["z"],
        "scale": row["scale"],
        "tile": {"source": row["source"], "z": row["tz"], "x": row["tx"], "y": row["ty"]},
        "center": [round(row["lon"], 7), round(row["lat"], 7)],
        "image_url": f"{tiler_url.rstrip('/')}/windows/{row['id']}.png",
    }
    if merged is not None:
        props["merged"] = len(merged)
        props["merged_ids"] = merged
    if place is not None:
        props["address"] = place["label"]
        props["place"] = place
    return {
        "type": "Feature",
        "id": row["id"],
        "geometry": json.loads(row["footprint"]),
        "properties": props,
    }


AREA_COLUMNS = (
    "a.id, a.name, a.source, a.status, a.zooms, a.created_at, "
    "ST_XMin(a.bbox) AS w, ST_YMin(a.bbox) AS s, ST_XMax(a.bbox) AS e, ST_YMax(a.bbox) AS n"
)
JOB_COLUMNS = (
    "j.id, j.area_id, j.state, j.tiles_planned, j.tiles_fetched, j.tiles_cached, j.tiles_failed, "
    "j.tiles_embedded, j.windows_embedded, j.windows_indexed, j.error, j.created_at, j.updated_at, j.finished_at"
)


def area_dict(r) -> dict:
    return {
        "id": r.id,
        "name": r.name,
        "source": r.source,
        "status": r.status,
        "zooms": list(r.zooms),
        "bbox": [r.w, r.s, r.e, r.n],
        "created_at": r.created_at.isoformat(),
    }


def job_dict(r) -> dict:
    out = dict(r._mapping)
    for key in ("created_at", "updated_at", "finished_at"):
        out[key] = out[key].isoformat() if out[key] else None
    return out
