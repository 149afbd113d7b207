"""Every SQL statement of the detection-run endpoints: runs, their hits and polygons.

Functions take an open connection (the caller decides the transaction) and return plain dicts;
nothing here knows about HTTP. The polygon dissolve is `cliprs.runs.replace_run_polygons`, the same
function the indexer calls after scoring.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from cliprs import runs

RUN_COLUMNS = (
    "id, project_id, state, threshold, windows_scored, hits, estimate, model, stage_seconds, error, "
    "created_at, updated_at, finished_at"
)


async def project_facts(conn: AsyncConnection, project_id: int) -> dict[str, Any] | None:
    """A project's area ids and label counts, or None when there is no such project."""
    row = (
        (
            await conn.execute(
                text(
                    "SELECT p.id, "
                    "ARRAY(SELECT area_id FROM project_areas WHERE project_id = p.id ORDER BY area_id) AS area_ids, "
                    "(SELECT count(*) FROM labels WHERE project_id = p.id AND positive) AS positive, "
                    "(SELECT count(*) FROM labels WHERE project_id = p.id AND NOT positive) AS negative "
                    "FROM projects p WHERE p.id = :p"
                ),
                {"p": project_id},
            )
        )
        .mappings()
        .one_or_none()
    )
    return dict(row) if row else None


async def insert_run(conn: AsyncConnection, project_id: int, threshold: float) -> int:
    return (
        await conn.execute(
            text("INSERT INTO detect_runs (project_id, threshold) VALUES (:p, :t) RETURNING id"),
            {"p": project_id, "t": threshold},
        )
    ).scalar_one()


async def delete_run(conn: AsyncConnection, run_id: int) -> None:
    await conn.execute(text("DELETE FROM detect_runs WHERE id = :r"), {"r": run_id})


async def run(conn: AsyncConnection, run_id: int, lock: bool = False) -> dict[str, Any] | None:
    sql = f"SELECT {RUN_COLUMNS} FROM detect_runs WHERE id = :r" + (" FOR UPDATE" if lock else "")
    row = (await conn.execute(text(sql), {"r": run_id})).mappings().one_or_none()
    return dict(row) if row else None


async def histogram(conn: AsyncConnection, run_id: int) -> list[int] | None:
    return (
        await conn.execute(text("SELECT histogram FROM detect_runs WHERE id = :r"), {"r": run_id})
    ).scalar_one_or_none()


async def replace_hits(conn: AsyncConnection, run_id: int, ids: list[int], scores: list[float]) -> None:
    """Replace the run's hits with these (one statement over two arrays) and re-dissolve its
    polygons."""
    await conn.execute(text("DELETE FROM run_hits WHERE run_id = :r"), {"r": run_id})
    if len(ids):
        await conn.execute(
            text(
                "INSERT INTO run_hits (run_id, window_id, score) "
                "SELECT :r, unnest(CAST(:ids AS bigint[])), unnest(CAST(:scores AS real[]))"
            ),
            {"r": run_id, "ids": ids, "scores": scores},
        )
    await conn.run_sync(runs.replace_run_polygons, run_id)


async def set_threshold(
    conn: AsyncConnection, run_id: int, threshold: float, hits: int, estimate: dict | None, seconds: float
) -> None:
    """The run's new threshold, hits count and estimate, and a new version of its results
    (``updated_at``: what exports and tile ETags compare)."""
    await conn.execute(
        text(
            "UPDATE detect_runs SET threshold = :t, hits = :h, estimate = :e, error = NULL, updated_at = clock_timestamp(), "
            "stage_seconds = stage_seconds || CAST(:s AS jsonb) WHERE id = :r"
        ),
        {
            "t": threshold,
            "h": hits,
            "e": json.dumps(estimate) if estimate is not None else None,
            "s": json.dumps({"rethreshold": round(seconds, 4)}),
            "r": run_id,
        },
    )


async def set_state(conn: AsyncConnection, run_id: int, state: str) -> None:
    """A change of state that leaves the results as they are (``updated_at``, their version,
    is kept: downloads and tile ETags of the current results stay valid). It is a sign of life
    (``heartbeat_at``): the reconciler gives a ``rethresholding`` run that long for its task."""
    await conn.execute(
        text("UPDATE detect_runs SET state = :s, error = NULL, heartbeat_at = now() WHERE id = :r"),
        {"s": state, "r": run_id},
    )


async def polygon_count(conn: AsyncConnection, run_id: int) -> int:
    return (
        await conn.execute(text("SELECT count(*) FROM run_polygons WHERE run_id = :r"), {"r": run_id})
    ).scalar_one()


async def polygons(conn: AsyncConnection, run_id: int, limit: int, offset: int) -> list[dict[str, Any]]:
    """A page of the run's polygons, best first (max score, then id)."""
    rows = await conn.execute(
        text(
            "SELECT id, z, ST_AsGeoJSON(geom, 7) AS geometry, area_m2, max_score, mean_score, window_count, "
            "window_ids, ST_X(ST_PointOnSurface(geom)) AS lon, ST_Y(ST_PointOnSurface(geom)) AS lat "
            "FROM run_polygons WHERE run_id = :r ORDER BY max_score DESC, id LIMIT :l OFFSET :o"
        ),
        {"r": run_id, "l": limit, "o": offset},
    )
    return [dict(r) for r in rows.mappings()]
