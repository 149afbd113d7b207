"""Every SQL statement of the indexer. Functions take an open connection; the caller owns the
transaction (and with it what must happen atomically, e.g. under the publish lock)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection, Row

# Serialises version numbering (and garbage collection) across indexer processes.
PUBLISH_LOCK_KEY = 0x434C49505253


def _column(conn: Connection, sql: str, **params: Any) -> list:
    """The first column of the rows ``sql`` answers, in the order it gives them."""
    return list(conn.execute(text(sql), params).scalars())


# ---- the publish lock and index versions ----


def lock_publishing(conn: Connection) -> None:
    """Take the publish lock until the end of the current transaction."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PUBLISH_LOCK_KEY})


def last_index_version(conn: Connection) -> int:
    """The highest version ever recorded (0 when none)."""
    return conn.execute(text("SELECT coalesce(max(version), 0) FROM index_versions")).scalar()


def record_index_version(
    conn: Connection,
    version: int,
    manifest_path: str,
    shard_files: list[str],
    vector_count: int,
    model_id: str,
) -> None:
    conn.execute(
        text(
            "INSERT INTO index_versions (version, manifest_path, shard_files, vector_count, model_id) "
            "VALUES (:v, :p, CAST(:f AS jsonb), :n, :m)"
        ),
        {"v": version, "p": manifest_path, "f": json.dumps(shard_files), "n": vector_count, "m": model_id},
    )


def mark_versions_removed(conn: Connection, versions: Sequence[int]) -> None:
    conn.execute(
        text("UPDATE index_versions SET removed_at = now() WHERE version = ANY(:v)"), {"v": list(versions)}
    )


# ---- areas ----


def embedded_tile_ids(conn: Connection, area_id: int) -> list[int]:
    """The area's tiles that have vectors, in id order."""
    return _column(
        conn,
        "SELECT t.id FROM area_tiles at JOIN tiles t ON t.id = at.tile_id "
        "WHERE at.area_id = :a AND t.status = 'embedded' ORDER BY t.id",
        a=area_id,
    )


def tile_positions(conn: Connection, tile_ids: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """(id, z, x, y) of each of these tiles."""
    rows = conn.execute(text("SELECT id, z, x, y FROM tiles WHERE id = ANY(:t)"), {"t": list(tile_ids)})
    return [tuple(r) for r in rows]


def live_areas_of_tiles(conn: Connection) -> dict[int, list[int]]:
    """Tile id -> the areas (not being deleted) that use it."""
    rows = conn.execute(
        text(
            "SELECT at.tile_id, at.area_id FROM area_tiles at JOIN areas a ON a.id = at.area_id "
            "WHERE a.status <> 'deleting'"
        )
    )
    out: dict[int, list[int]] = {}
    for tile_id, area_id in rows:
        out.setdefault(tile_id, []).append(area_id)
    return out


def live_area_ids(conn: Connection, area_ids: Sequence[int]) -> set[int]:
    """Those of ``area_ids`` that exist and are not being deleted."""
    return set(
        conn.execute(
            text("SELECT id FROM areas WHERE id = ANY(:ids) AND status <> 'deleting'"),
            {"ids": list(area_ids)},
        ).scalars()
    )


def all_live_area_ids(conn: Connection) -> list[int]:
    """Every area not being deleted, in id order."""
    return _column(conn, "SELECT id FROM areas WHERE status <> 'deleting' ORDER BY id")


def existing_area_ids(conn: Connection, area_ids: Sequence[int]) -> set[int]:
    return set(conn.execute(text("SELECT id FROM areas WHERE id = ANY(:a)"), {"a": list(area_ids)}).scalars())


def mark_area_deleting(conn: Connection, area_id: int) -> bool:
    """Flag the area as being deleted; False when there is no such area."""
    found = conn.execute(
        text("UPDATE areas SET status = 'deleting' WHERE id = :a RETURNING id"), {"a": area_id}
    ).scalar()
    return found is not None


def set_area_failed(conn: Connection, area_id: int) -> None:
    conn.execute(text("UPDATE areas SET status = 'failed' WHERE id = :a"), {"a": area_id})


def set_area_ready(conn: Connection, area_id: int) -> None:
    """Mark the area searchable, unless a delete has started meanwhile."""
    conn.execute(
        text("UPDATE areas SET status = 'ready' WHERE id = :a AND status <> 'deleting'"), {"a": area_id}
    )


def delete_area_row(conn: Connection, area_id: int) -> None:
    conn.execute(text("DELETE FROM areas WHERE id = :a"), {"a": area_id})


# ---- tiles and windows ----


def unshared_tile_ids(conn: Connection, area_id: int) -> list[int]:
    """The area's tiles that no other area uses."""
    return _column(
        conn,
        """
        SELECT at.tile_id FROM area_tiles at WHERE at.area_id = :a AND NOT EXISTS (
            SELECT 1 FROM area_tiles o WHERE o.tile_id = at.tile_id AND o.area_id <> :a)
        """,
        a=area_id,
    )


def existing_tile_ids(conn: Connection, tile_ids: Sequence[int]) -> set[int]:
    """Which of these tile ids are still in the tiles table."""
    return set(
        conn.execute(text("SELECT id FROM tiles WHERE id = ANY(:ids)"), {"ids": list(tile_ids)}).scalars()
    )


def area_tile_ids(conn: Connection, area_id: int) -> list[int]:
    return _column(conn, "SELECT tile_id FROM area_tiles WHERE area_id = :a", a=area_id)


def lock_tiles(conn: Connection, tile_ids: Sequence[int]) -> None:
    """Lock tile rows until the end of the transaction (in id order: no deadlock between two
    lockers); planning an area over them (its upsert) waits meanwhile."""
    conn.execute(
        text("SELECT id FROM tiles WHERE id = ANY(:t) ORDER BY id FOR UPDATE"), {"t": list(tile_ids)}
    ).all()


def count_windows(conn: Connection, tile_ids: Sequence[int]) -> int:
    return conn.execute(
        text("SELECT count(*) FROM windows WHERE tile_id = ANY(:t)"), {"t": list(tile_ids)}
    ).scalar_one()


def delete_tiles(conn: Connection, tile_ids: Sequence[int]) -> None:
    """Delete tiles; their windows go with them (ON DELETE CASCADE)."""
    conn.execute(text("DELETE FROM tiles WHERE id = ANY(:t)"), {"t": list(tile_ids)})


def hand_over_shared_tiles(conn: Connection, area_id: int) -> None:
    """Tiles the area planned first but others share now belong to one of those others."""
    conn.execute(
        text(
            """
            UPDATE tiles t SET area_id = (
                SELECT min(o.area_id) FROM area_tiles o WHERE o.tile_id = t.id AND o.area_id <> :a)
            WHERE t.area_id = :a AND EXISTS (
                SELECT 1 FROM area_tiles o WHERE o.tile_id = t.id AND o.area_id <> :a)
            """
        ),
        {"a": area_id},
    )


def analyze_windows(conn: Connection) -> None:
    """Refresh the planner's statistics of the windows table (needs an autocommit connection)."""
    conn.execute(text("ANALYZE windows"))


# ---- ingest jobs ----


def job_for_indexing(conn: Connection, job_id: int) -> Row | None:
    """The job's ``area_id`` and ``state`` (None when the job is gone)."""
    return conn.execute(
        text("SELECT area_id, state FROM ingest_jobs WHERE id = :j"), {"j": job_id}
    ).one_or_none()


def set_windows_indexed(conn: Connection, job_id: int, count: int) -> None:
    conn.execute(text("UPDATE ingest_jobs SET windows_indexed = :n WHERE id = :j"), {"n": count, "j": job_id})


# ---- detection runs ----


def existing_run_ids(conn: Connection, run_ids: Sequence[int]) -> set[int]:
    """Which of these run ids are still in ``detect_runs``."""
    return set(
        conn.execute(
            text("SELECT id FROM detect_runs WHERE id = ANY(:ids)"), {"ids": list(run_ids)}
        ).scalars()
    )


def lock_run(conn: Connection, run_id: int) -> Row | None:
    """The run's ``id``, ``project_id``, ``state`` and ``threshold``, locked until the end of the
    transaction (None when the run is gone)."""
    return conn.execute(
        text("SELECT id, project_id, state, threshold FROM detect_runs WHERE id = :id FOR UPDATE"),
        {"id": run_id},
    ).one_or_none()


def mark_run_running(conn: Connection, run_id: int) -> None:
    """queued (or running, when redelivered) -> running, clearing an earlier error; its first
    heartbeat."""
    conn.execute(
        text(
            "UPDATE detect_runs SET state = 'running', error = NULL, updated_at = now(), heartbeat_at = now() "
            "WHERE id = :id"
        ),
        {"id": run_id},
    )


def beat_run(conn: Connection, run_id: int) -> None:
    """The run's worker is alive and on it (the reconciler leaves it alone for a while)."""
    conn.execute(
        text("UPDATE detect_runs SET heartbeat_at = now() WHERE id = :id AND state = 'running'"),
        {"id": run_id},
    )


def finish_run(
    conn: Connection,
    run_id: int,
    *,
    model: dict[str, Any],
    estimate: dict[str, Any],
    histogram: list[int],
    windows_scored: int,
    hits: int,
    stage_seconds: dict[str, float],
) -> None:
    """running -> done, with what the run found."""
    conn.execute(
        text(
            "UPDATE detect_runs SET state = 'done', model = :model, estimate = :estimate, "
            "histogram = :histogram, windows_scored = :windows_scored, hits = :hits, "
            "stage_seconds = :stage_seconds, finished_at = now(), updated_at = now() WHERE id = :id"
        ),
        {
            "model": json.dumps(model),
            "estimate": json.dumps(estimate),
            "histogram": json.dumps(histogram),
            "windows_scored": windows_scored,
            "hits": hits,
            "stage_seconds": json.dumps(stage_seconds),
            "id": run_id,
        },
    )


def run_estimate(conn: Connection, run_id: int) -> dict[str, Any] | None:
    """The run's held-out estimate (None when it has none)."""
    value = conn.execute(text("SELECT estimate FROM detect_runs WHERE id = :id"), {"id": run_id}).scalar_one()
    return json.loads(value) if isinstance(value, str) else value


def finish_rethreshold(
    conn: Connection,
    run_id: int,
    threshold: float,
    hits: int,
    estimate: dict[str, Any] | None,
    seconds: float,
) -> None:
    """rethresholding -> done at the new threshold: its hits count, estimate and a new version
    (``updated_at``: what exports and tile ETags compare)."""
    conn.execute(
        text(
            "UPDATE detect_runs SET state = 'done', threshold = :t, hits = :h, estimate = :e, error = NULL, "
            "updated_at = clock_timestamp(), stage_seconds = stage_seconds || CAST(:s AS jsonb) WHERE id = :id"
        ),
        {
            "t": threshold,
            "h": hits,
            "e": json.dumps(estimate) if estimate is not None else None,
            "s": json.dumps({"rethreshold": seconds}),
            "id": run_id,
        },
    )


def abandon_rethreshold(conn: Connection, run_id: int, error: str) -> None:
    """rethresholding -> done with the results it had, and why the new threshold was not applied."""
    conn.execute(
        text("UPDATE detect_runs SET state = 'done', error = :e WHERE id = :id AND state = 'rethresholding'"),
        {"e": error, "id": run_id},
    )


def fail_run(conn: Connection, run_id: int, error: str) -> None:
    """-> failed, with the reason."""
    conn.execute(
        text(
            "UPDATE detect_runs SET state = 'failed', error = :e, finished_at = now(), "
            "updated_at = now() WHERE id = :id"
        ),
        {"e": error, "id": run_id},
    )


def project_area_ids(conn: Connection, project_id: int) -> list[int]:
    """The project's areas, in id order."""
    return _column(
        conn, "SELECT area_id FROM project_areas WHERE project_id = :p ORDER BY area_id", p=project_id
    )


def project_labels(conn: Connection, project_id: int) -> list[Row]:
    """The project's labels (``window_id``, ``positive``), in window order."""
    return list(
        conn.execute(
            text("SELECT window_id, positive FROM labels WHERE project_id = :p ORDER BY window_id"),
            {"p": project_id},
        ).all()
    )


def tile_ids_of_areas(conn: Connection, area_ids: Sequence[int]) -> list[int]:
    """The tiles of ``area_ids`` (a tile shared by two of them appears twice)."""
    return _column(conn, "SELECT tile_id FROM area_tiles WHERE area_id = ANY(:a)", a=list(area_ids))


def replace_run_hits(conn: Connection, run_id: int, ids: np.ndarray, scores: np.ndarray) -> None:
    """Replace the run's hits (COPY in the connection's transaction)."""
    conn.execute(text("DELETE FROM run_hits WHERE run_id = :r"), {"r": run_id})
    if len(ids) == 0:
        return
    buf = io.StringIO()
    np.savetxt(
        buf,
        np.column_stack([np.full(len(ids), run_id, dtype=np.int64), ids, scores.astype(np.float32)]),
        fmt=["%d", "%d", "%.6g"],
        delimiter="\t",
    )
    buf.seek(0)
    cur = conn.connection.cursor()
    cur.copy_expert("COPY run_hits (run_id, window_id, score) FROM STDIN", buf)
