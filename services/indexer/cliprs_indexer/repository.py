"""Every SQL statement of the indexer. Functions take an open connection; the caller owns the
transaction (and with it what must happen atomically, e.g. under the publish lock)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.engine import Connection, Row

# Serialises version numbering (and garbage collection) across indexer processes.
PUBLISH_LOCK_KEY = 0x434C49505253


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
    return list(
        conn.execute(
            text(
                "SELECT t.id FROM area_tiles at JOIN tiles t ON t.id = at.tile_id "
                "WHERE at.area_id = :a AND t.status = 'embedded' ORDER BY t.id"
            ),
            {"a": area_id},
        ).scalars()
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
    return list(conn.execute(text("SELECT id FROM areas WHERE status <> 'deleting' ORDER BY id")).scalars())


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
    return list(
        conn.execute(
            text(
                """
                SELECT at.tile_id FROM area_tiles at WHERE at.area_id = :a AND NOT EXISTS (
                    SELECT 1 FROM area_tiles o WHERE o.tile_id = at.tile_id AND o.area_id <> :a)
                """
            ),
            {"a": area_id},
        ).scalars()
    )


def existing_tile_ids(conn: Connection, tile_ids: Sequence[int]) -> set[int]:
    """Which of these tile ids are still in the tiles table."""
    return set(
        conn.execute(text("SELECT id FROM tiles WHERE id = ANY(:ids)"), {"ids": list(tile_ids)}).scalars()
    )


def area_tile_ids(conn: Connection, area_id: int) -> list[int]:
    return list(
        conn.execute(text("SELECT tile_id FROM area_tiles WHERE area_id = :a"), {"a": area_id}).scalars()
    )


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
