"""PostGIS side of the gateway: areas, jobs, and joining FAISS hits to window rows."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from cliprs.tiles import BBox


@dataclass
class HitFilter:
    area_id: int | None = None
    zooms: list[int] | None = None
    bbox: BBox | None = None


async def window_rows(conn: AsyncConnection, ids: list[int], flt: HitFilter) -> dict[int, dict]:
    """Rows of the windows among ``ids`` that pass the filter, keyed by id."""
    if not ids:
        return {}
    where = ["w.id = ANY(:ids)"]
    params: dict = {"ids": ids}
    if flt.area_id is not None:
        where.append(
            # Tiles overhang the area's box; only windows that touch the box belong to the area.
            "EXISTS (SELECT 1 FROM area_tiles at JOIN areas a ON a.id = at.area_id "
            "WHERE at.tile_id = w.tile_id AND at.area_id = :area AND ST_Intersects(w.footprint, a.bbox))"
        )
        params["area"] = flt.area_id
    if flt.zooms:
        where.append("w.z = ANY(:zooms)")
        params["zooms"] = flt.zooms
    if flt.bbox is not None:
        where.append("ST_Intersects(w.footprint, ST_MakeEnvelope(:w, :s, :e, :n, 4326))")
        params.update(w=flt.bbox.min_lon, s=flt.bbox.min_lat, e=flt.bbox.max_lon, n=flt.bbox.max_lat)
    rows = await conn.execute(
        text(
            "SELECT w.id, w.z, w.scale, ST_AsGeoJSON(w.footprint, 7) AS footprint, "
            "ST_X(w.center) AS lon, ST_Y(w.center) AS lat, t.source, t.z AS tz, t.x AS tx, t.y AS ty "
            "FROM windows w JOIN tiles t ON t.id = w.tile_id WHERE " + " AND ".join(where)
        ),
        params,
    )
    return {r.id: dict(r._mapping) for r in rows}


def feature(row: dict, score: float, rank: int, tiler_url: str) -> dict:
    """One search hit as a GeoJSON feature."""
    return {
        "type": "Feature",
        "id": row["id"],
        "geometry": json.loads(row["footprint"]),
        "properties": {
            "window_id": row["id"],
            "score": round(float(score), 6),
            "rank": rank,
            "z": row["z"],
            "scale": row["scale"],
            "tile": {"source": row["source"], "z": row["tz"], "x": row["tx"], "y": row["ty"]},
            "center": [round(row["lon"], 7), round(row["lat"], 7)],
            "image_url": f"{tiler_url.rstrip('/')}/windows/{row['id']}.png",
        },
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
