"""The SQL of areas and their ingest jobs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

AREA_COLUMNS = (
    "a.id, a.name, a.source, a.status, a.zooms, a.created_at, "
    "ST_XMin(a.bbox) AS w, ST_YMin(a.bbox) AS s, ST_XMax(a.bbox) AS e, ST_YMax(a.bbox) AS n"
)
JOB_COLUMNS = (
    "j.id, j.area_id, j.state, j.tiles_planned, j.tiles_fetched, j.tiles_cached, j.tiles_failed, "
    "j.tiles_embedded, j.windows_embedded, j.windows_indexed, j.windows_skipped_nodata, j.stage_seconds, j.error, j.created_at, "
    "j.updated_at, j.finished_at"
)


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
