"""Every SQL statement of projects and labels (and the run summaries a project lists).

Functions take an open connection (the caller decides where a transaction begins and ends) and
return plain dicts, or ids; nothing here knows about HTTP.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

PROJECT_COLUMNS = (
    "p.id, p.name, p.query, p.created_at, p.updated_at, "
    "COALESCE((SELECT array_agg(pa.area_id ORDER BY pa.area_id) FROM project_areas pa "
    "WHERE pa.project_id = p.id), '{}') AS area_ids, "
    "(SELECT count(*) FROM labels l WHERE l.project_id = p.id AND l.positive) AS positive, "
    "(SELECT count(*) FROM labels l WHERE l.project_id = p.id AND NOT l.positive) AS negative"
)
RUN_COLUMNS = "r.id, r.state, r.threshold, r.windows_scored, r.hits, r.created_at, r.finished_at"
LABEL_COLUMNS = (
    "l.window_id, l.positive, l.created_at, l.created_by, w.z, ST_X(w.center) AS lon, ST_Y(w.center) AS lat"
)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _project(r: Any) -> dict:
    return {
        "id": r.id,
        "name": r.name,
        "query": r.query,
        "area_ids": list(r.area_ids),
        "labels": {"positive": int(r.positive), "negative": int(r.negative)},
        "created_at": _iso(r.created_at),
        "updated_at": _iso(r.updated_at),
    }


# ----------------------------------------------------------------------------- projects


async def project(conn: AsyncConnection, project_id: int, lock: bool = False) -> dict | None:
    """One project with its area ids and label counts, or None (``lock``: hold its row until
    the transaction ends, so labels and areas change one request at a time)."""
    if lock:
        found = await conn.execute(
            text("SELECT id FROM projects WHERE id = :id FOR UPDATE"), {"id": project_id}
        )
        if found.one_or_none() is None:
            return None
    row = (
        await conn.execute(
            text(f"SELECT {PROJECT_COLUMNS} FROM projects p WHERE p.id = :id"), {"id": project_id}
        )
    ).one_or_none()
    return _project(row) if row is not None else None


async def projects(conn: AsyncConnection) -> list[dict]:
    """Every project, by id."""
    rows = await conn.execute(text(f"SELECT {PROJECT_COLUMNS} FROM projects p ORDER BY p.id"))
    return [_project(r) for r in rows]


async def insert_project(conn: AsyncConnection, name: str, query: str | None) -> int:
    result = await conn.execute(
        text("INSERT INTO projects (name, query) VALUES (:n, :q) RETURNING id"), {"n": name, "q": query}
    )
    return int(result.scalar_one())


async def update_project(conn: AsyncConnection, project_id: int, changes: dict[str, Any]) -> None:
    """Set the given columns (``name``, ``query``) and ``updated_at``."""
    sets = ", ".join(f"{column} = :{column}" for column in changes if column in ("name", "query"))
    await conn.execute(
        text(f"UPDATE projects SET {sets + ', ' if sets else ''}updated_at = now() WHERE id = :id"),
        {**changes, "id": project_id},
    )


async def set_project_areas(conn: AsyncConnection, project_id: int, area_ids: list[int]) -> None:
    """Replace the project's areas."""
    await conn.execute(text("DELETE FROM project_areas WHERE project_id = :p"), {"p": project_id})
    if area_ids:
        await conn.execute(
            text("INSERT INTO project_areas (project_id, area_id) SELECT :p, unnest(CAST(:a AS integer[]))"),
            {"p": project_id, "a": sorted(set(area_ids))},
        )


async def run_ids(conn: AsyncConnection, project_id: int) -> list[int]:
    """The ids of the project's runs."""
    rows = await conn.execute(text("SELECT id FROM detect_runs WHERE project_id = :p"), {"p": project_id})
    return list(rows.scalars())


async def delete_project(conn: AsyncConnection, project_id: int) -> None:
    """Remove a project; its areas, labels and runs go with it (ON DELETE CASCADE)."""
    await conn.execute(text("DELETE FROM projects WHERE id = :id"), {"id": project_id})


async def existing_areas(conn: AsyncConnection, area_ids: list[int]) -> set[int]:
    """Those of ``area_ids`` that exist."""
    rows = await conn.execute(text("SELECT id FROM areas WHERE id = ANY(:a)"), {"a": list(area_ids)})
    return set(rows.scalars())


async def runs(conn: AsyncConnection, project_id: int) -> list[dict]:
    """The project's detection runs in short, newest first."""
    rows = await conn.execute(
        text(f"SELECT {RUN_COLUMNS} FROM detect_runs r WHERE r.project_id = :p ORDER BY r.id DESC"),
        {"p": project_id},
    )
    out = []
    for r in rows:
        d = dict(r._mapping)
        d["created_at"], d["finished_at"] = _iso(d["created_at"]), _iso(d["finished_at"])
        out.append(d)
    return out


# ----------------------------------------------------------------------------- labels


def _label(r: Any, footprint: bool) -> dict:
    out = {
        "window_id": r.window_id,
        "positive": r.positive,
        "created_at": _iso(r.created_at),
        "created_by": r.created_by,
        "z": r.z,
        "center": [round(r.lon, 7), round(r.lat, 7)],
    }
    if footprint:
        out["footprint"] = json.loads(r.footprint)
    return out


async def labels(conn: AsyncConnection, project_id: int, footprint: bool = True) -> list[dict]:
    """The project's labels, oldest first."""
    extra = ", ST_AsGeoJSON(w.footprint, 7) AS footprint" if footprint else ""
    rows = await conn.execute(
        text(
            f"SELECT {LABEL_COLUMNS}{extra} FROM labels l JOIN windows w ON w.id = l.window_id "
            "WHERE l.project_id = :p ORDER BY l.created_at, l.id"
        ),
        {"p": project_id},
    )
    return [_label(r, footprint) for r in rows]


async def label(conn: AsyncConnection, project_id: int, window_id: int) -> dict | None:
    row = (
        await conn.execute(
            text(
                f"SELECT {LABEL_COLUMNS}, ST_AsGeoJSON(w.footprint, 7) AS footprint FROM labels l "
                "JOIN windows w ON w.id = l.window_id WHERE l.project_id = :p AND l.window_id = :w"
            ),
            {"p": project_id, "w": window_id},
        )
    ).one_or_none()
    return _label(row, True) if row is not None else None


async def label_ids(conn: AsyncConnection, project_id: int) -> tuple[list[int], list[int]]:
    """(positive window ids, negative window ids) of the project, ascending."""
    rows = await conn.execute(
        text("SELECT window_id, positive FROM labels WHERE project_id = :p ORDER BY window_id"),
        {"p": project_id},
    )
    positive, negative = [], []
    for r in rows:
        (positive if r.positive else negative).append(int(r.window_id))
    return positive, negative


async def window_placement(conn: AsyncConnection, window_id: int, area_ids: list[int]) -> dict | None:
    """Whether the window exists and lies in one of ``area_ids``: None when there is no such
    window, else ``{"inside": bool, "area_ids": the areas it lies in}``."""
    row = (
        await conn.execute(
            text(
                "SELECT COALESCE((SELECT array_agg(DISTINCT at.area_id ORDER BY at.area_id) FROM area_tiles at "
                "JOIN areas a ON a.id = at.area_id WHERE at.tile_id = w.tile_id "
                "AND ST_Intersects(w.footprint, a.bbox)), '{}') AS areas FROM windows w WHERE w.id = :w"
            ),
            {"w": window_id},
        )
    ).one_or_none()
    if row is None:
        return None
    areas = list(row.areas)
    return {"inside": any(a in area_ids for a in areas), "area_ids": areas}


async def upsert_label(
    conn: AsyncConnection, project_id: int, window_id: int, positive: bool, by: str | None
) -> None:
    """Label a window; labelling it again replaces the label (and its time and author)."""
    await conn.execute(
        text(
            "INSERT INTO labels (project_id, window_id, positive, created_by) VALUES (:p, :w, :pos, :by) "
            "ON CONFLICT (project_id, window_id) DO UPDATE SET positive = EXCLUDED.positive, "
            "created_by = EXCLUDED.created_by, created_at = now()"
        ),
        {"p": project_id, "w": window_id, "pos": positive, "by": by},
    )
    await touch(conn, project_id)


async def delete_label(conn: AsyncConnection, project_id: int, window_id: int) -> bool:
    """Remove a label; False when the window had none."""
    result = await conn.execute(
        text("DELETE FROM labels WHERE project_id = :p AND window_id = :w"), {"p": project_id, "w": window_id}
    )
    if result.rowcount:
        await touch(conn, project_id)
    return bool(result.rowcount)


async def touch(conn: AsyncConnection, project_id: int) -> None:
    await conn.execute(text("UPDATE projects SET updated_at = now() WHERE id = :id"), {"id": project_id})
