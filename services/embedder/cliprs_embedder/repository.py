"""Every SQL statement of the embedder: the tiles it leases, the windows and statuses it writes.

Plain functions over a SQLAlchemy engine; each write is one transaction, which is what the
pipeline's "nothing lost, nothing duplicated" ordering relies on (see `cliprs_embedder.pipeline`).

Work units: a worker leases many fetched tiles of a job at once (`claim_tiles`, ``FOR UPDATE SKIP
LOCKED``, so two workers never lease the same tile), renews its leases while it works
(`renew_leases`) and records each batch of embedded tiles in one transaction (`record_embedded`:
window rows by binary COPY, tile statuses, the job's counters and stage seconds). A lease that
is not renewed expires and any worker takes those tiles over (`stale_leases` says when).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, text

from cliprs import jobs

# A tile another worker embedded meanwhile (a redelivery racing the original) stays embedded.
MARK_FAILED = text(
    "UPDATE tiles SET status = 'failed', error = :e, lease_until = NULL, leased_by = NULL "
    "WHERE id = :id AND status <> 'embedded'"
)


def mark_failed(engine: Engine, errors: dict[int, str]) -> None:
    """Mark tiles failed with their error (tile id -> message), unless embedded meanwhile."""
    if not errors:
        return
    with engine.begin() as conn:
        conn.execute(MARK_FAILED, [{"id": tile_id, "e": error} for tile_id, error in errors.items()])


# ----------------------------------------------------------------------------- leases

# The job's fetched tiles that nobody holds (never leased, or the lease expired), lowest ids
# first; rows another worker is claiming right now are skipped, not waited for. The fetched
# tiles are walked in id order on their partial index and each is looked up in the area
# (OFFSET 0 keeps the lookup a per-row probe of area_tiles' key: joined instead, the planner may
# walk all the area's tiles from the lowest id, embedded ones included, on every claim).
JOB_TILE = """
    EXISTS (SELECT 1 FROM area_tiles at
            WHERE at.area_id = (SELECT area_id FROM ingest_jobs WHERE id = :job) AND at.tile_id = t.id
            OFFSET 0)
"""
CLAIM_TILES = text(
    f"""
    WITH c AS (
        SELECT t.id FROM tiles t
        WHERE t.status = 'fetched' AND (t.lease_until IS NULL OR t.lease_until < now()) AND {JOB_TILE}
        ORDER BY t.id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE tiles SET lease_until = now() + make_interval(secs => :lease_s), leased_by = :worker
    FROM c WHERE tiles.id = c.id
    RETURNING tiles.id, tiles.source, tiles.z, tiles.x, tiles.y
    """
)

RENEW_LEASES = text(
    "UPDATE tiles SET lease_until = now() + make_interval(secs => :lease_s) "
    "WHERE leased_by = :worker AND status = 'fetched'"
)

RELEASE_LEASES = text(
    "UPDATE tiles SET lease_until = NULL, leased_by = NULL WHERE leased_by = :worker AND status = 'fetched'"
)

# A live holder renews every lease_s / 3, so its leases stay more than lease_s / 2 ahead of now;
# a lease closer to its end than that has stopped being renewed.
STALE_LEASES = text(
    f"""
    SELECT EXTRACT(EPOCH FROM min(t.lease_until) - now()) FROM tiles t
    WHERE t.leased_by IS NOT NULL AND t.status = 'fetched' AND t.lease_until IS NOT NULL
      AND t.lease_until < now() + make_interval(secs => :half) AND {JOB_TILE}
    """
)


def claim_tiles(engine: Engine, job_id: int, worker: str, limit: int, lease_s: float) -> list[Any]:
    """Lease up to ``limit`` fetched tiles of the job's area that nobody holds, for ``lease_s``
    seconds, to ``worker``; rows (id, source, z, x, y) ordered by id (empty: nothing to lease)."""
    with engine.begin() as conn:
        # The per-row probe inflates the plan's estimated cost past where PostgreSQL compiles it
        # (JIT: tenths of a second) for a query that takes milliseconds.
        conn.exec_driver_sql("SET LOCAL jit = off")
        rows = conn.execute(
            CLAIM_TILES, {"job": job_id, "limit": limit, "lease_s": float(lease_s), "worker": worker}
        ).all()
    return sorted(rows, key=lambda r: r.id)


def renew_leases(engine: Engine, worker: str, lease_s: float) -> int:
    """Extend every lease ``worker`` holds on tiles still fetched to ``lease_s`` from now; how many."""
    with engine.begin() as conn:
        return conn.execute(RENEW_LEASES, {"worker": worker, "lease_s": float(lease_s)}).rowcount


def stale_leases(engine: Engine, job_id: int, lease_s: float) -> float | None:
    """Seconds until the soonest abandoned lease on the job's fetched tiles expires (0 when one
    has expired already), or None when no lease looks abandoned.

    "Abandoned": less than ``lease_s / 2`` left, which a holder renewing every ``lease_s / 3``
    never lets happen. A worker with nothing to claim waits that long, then claims those tiles."""
    with engine.connect() as conn:
        left = conn.execute(STALE_LEASES, {"job": job_id, "half": lease_s / 2}).scalar_one()
    return None if left is None else max(0.0, float(left))


def release_leases(engine: Engine, worker: str) -> None:
    """Hand back ``worker``'s leases on tiles still fetched (a clean stop): others may take them now."""
    with engine.begin() as conn:
        conn.execute(RELEASE_LEASES, {"worker": worker})


# ----------------------------------------------------------------------------- window rows


@dataclass
class WindowRows:
    """Window rows as numpy columns (one entry per window)."""

    ids: np.ndarray  # (n,) int64 window ids
    tile_ids: np.ndarray  # (n,) int64
    z: np.ndarray  # (n,) int16
    boxes: np.ndarray  # (n, 4) int32 pixel boxes x0, y0, x1, y1 (x1, y1 exclusive)
    scale: np.ndarray  # (n,) float64 window side / tile side
    bounds: np.ndarray  # (n, 4) float64 west, south, east, north
    valid_fraction: np.ndarray  # (n,) float32 share of pixels holding imagery
    cloud_score: np.ndarray  # (n,) float32 share of valid pixels flagged as cloud
    fingerprints: np.ndarray  # (n,) int64 hashes of the model inputs

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, keep: np.ndarray) -> WindowRows:
        """The rows where the boolean mask ``keep`` is true."""
        return WindowRows(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    @classmethod
    def empty(cls) -> WindowRows:
        return cls(
            ids=np.zeros(0, np.int64),
            tile_ids=np.zeros(0, np.int64),
            z=np.zeros(0, np.int16),
            boxes=np.zeros((0, 4), np.int32),
            scale=np.zeros(0, np.float64),
            bounds=np.zeros((0, 4), np.float64),
            valid_fraction=np.zeros(0, np.float32),
            cloud_score=np.zeros(0, np.float32),
            fingerprints=np.zeros(0, np.int64),
        )

    @classmethod
    def concat(cls, parts: Sequence[WindowRows]) -> WindowRows:
        """The rows of ``parts`` one after the other (no parts: no rows)."""
        parts = [cls.empty(), *parts]
        return cls(
            ids=np.concatenate([p.ids for p in parts]).astype(np.int64, copy=False),
            tile_ids=np.concatenate([p.tile_ids for p in parts]).astype(np.int64, copy=False),
            z=np.concatenate([p.z for p in parts]).astype(np.int16, copy=False),
            boxes=np.concatenate([np.reshape(p.boxes, (-1, 4)) for p in parts]).astype(np.int32, copy=False),
            scale=np.concatenate([p.scale for p in parts]).astype(np.float64, copy=False),
            bounds=np.concatenate([np.reshape(p.bounds, (-1, 4)) for p in parts]).astype(
                np.float64, copy=False
            ),
            valid_fraction=np.concatenate([p.valid_fraction for p in parts]).astype(np.float32, copy=False),
            cloud_score=np.concatenate([p.cloud_score for p in parts]).astype(np.float32, copy=False),
            fingerprints=np.concatenate([p.fingerprints for p in parts]).astype(np.int64, copy=False),
        )


# The temporary table the rows are copied into, its columns in COPY order with their binary
# (big-endian) types.
COPY_COLUMNS = (
    ("id", "bigint", ">i8"),
    ("tile_id", "bigint", ">i8"),
    ("z", "smallint", ">i2"),
    ("x0", "integer", ">i4"),
    ("y0", "integer", ">i4"),
    ("x1", "integer", ">i4"),
    ("y1", "integer", ">i4"),
    ("scale", "double precision", ">f8"),
    ("w", "double precision", ">f8"),
    ("s", "double precision", ">f8"),
    ("e", "double precision", ">f8"),
    ("n", "double precision", ">f8"),
    ("valid_fraction", "real", ">f4"),
    ("cloud_score", "real", ">f4"),
    ("fingerprint", "bigint", ">i8"),
)
COPY_TABLE = "embedded_windows_in"
CREATE_COPY_TABLE = (
    f"CREATE TEMP TABLE {COPY_TABLE} ("
    + ", ".join(f"{name} {sql}" for name, sql, _ in COPY_COLUMNS)
    + ") ON COMMIT DROP"
)
COPY_SQL = f"COPY {COPY_TABLE} FROM STDIN (FORMAT BINARY)"
# Each tuple: the field count, then each field's byte length and value (no nulls).
TUPLE_DTYPE = np.dtype(
    [("nfields", ">i2")]
    + [f for name, _, code in COPY_COLUMNS for f in ((f"{name}_len", ">i4"), (name, code))]
)
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)

INSERT_COPIED = text(
    f"""
    INSERT INTO windows (id, tile_id, z, px_x0, px_y0, px_x1, px_y1, scale, footprint, center,
                         valid_fraction, cloud_score, fingerprint)
    SELECT w.id, w.tile_id, w.z, w.x0, w.y0, w.x1, w.y1, w.scale, ST_MakeEnvelope(w.w, w.s, w.e, w.n, 4326),
           ST_SetSRID(ST_MakePoint((w.w + w.e) / 2, (w.s + w.n) / 2), 4326),
           w.valid_fraction, w.cloud_score, w.fingerprint
    FROM {COPY_TABLE} w
    ON CONFLICT (id) DO NOTHING
    """
)

# The batch's tiles that still exist, locked against deletion until the windows are in (what the
# windows' foreign key would do row by row, once per tile).
LOCK_TILES = text("SELECT id FROM tiles WHERE id = ANY(:ids) FOR KEY SHARE")

MARK_EMBEDDED_MANY = text(
    """
    UPDATE tiles SET status = 'embedded', embedded_at = now(), error = NULL, lease_until = NULL,
        leased_by = NULL, windows_skipped = s.skipped
    FROM unnest(CAST(:ids AS bigint[]), CAST(:skipped AS integer[])) AS s(id, skipped)
    WHERE tiles.id = s.id AND tiles.status = 'fetched'
    RETURNING tiles.id, s.skipped
    """
)

# Counters go up as work units commit (`jobs.refresh_counts` recounts them exactly when the job
# moves on); stage seconds are summed key by key.
ADD_TO_JOB = text(
    """
    UPDATE ingest_jobs SET
        tiles_embedded = tiles_embedded + :tiles,
        windows_embedded = windows_embedded + :windows,
        windows_skipped_nodata = windows_skipped_nodata + :skipped,
        stage_seconds = (
            SELECT COALESCE(jsonb_object_agg(key, total), '{}'::jsonb) FROM (
                SELECT key, sum(value::float8) AS total FROM (
                    SELECT key, value FROM jsonb_each_text(stage_seconds)
                    UNION ALL SELECT key, value FROM jsonb_each_text(CAST(:seconds AS jsonb))
                ) e GROUP BY key
            ) s
        ),
        updated_at = now()
    WHERE id = :job
    """
)


def copy_payload(rows: WindowRows) -> bytes:
    """``rows`` in PostgreSQL's binary COPY format (columns as in `COPY_COLUMNS`), built with
    one numpy structured array: no Python per row."""
    n = len(rows)
    data = np.empty(n, dtype=TUPLE_DTYPE)
    data["nfields"] = len(COPY_COLUMNS)
    columns = {
        "id": rows.ids,
        "tile_id": rows.tile_ids,
        "z": rows.z,
        "scale": rows.scale,
        "valid_fraction": rows.valid_fraction,
        "cloud_score": rows.cloud_score,
        "fingerprint": rows.fingerprints,
        **{k: rows.boxes[:, i] for i, k in enumerate(("x0", "y0", "x1", "y1"))},
        **{k: rows.bounds[:, i] for i, k in enumerate(("w", "s", "e", "n"))},
    }
    for name, _, code in COPY_COLUMNS:
        data[f"{name}_len"] = np.dtype(code).itemsize
        data[name] = columns[name]
    return COPY_HEADER + data.tobytes() + COPY_TRAILER


def copy_rows(conn: Connection, rows: WindowRows) -> None:
    """COPY ``rows`` into the transaction's temporary table (created here, dropped at commit)."""
    conn.exec_driver_sql(CREATE_COPY_TABLE)
    payload = copy_payload(rows)
    # The driver's own connection, inside the same transaction as ``conn``.
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        if hasattr(cursor, "copy"):  # psycopg 3
            with cursor.copy(COPY_SQL) as copy:
                copy.write(payload)
        else:  # psycopg2 (the engines of `cliprs.db.engine`)
            cursor.copy_expert(COPY_SQL, io.BytesIO(payload), size=1 << 20)
    finally:
        cursor.close()


def record_embedded(
    engine: Engine,
    job_id: int,
    rows: WindowRows,
    skipped: dict[int, int],
    stage_seconds: dict[str, float],
) -> int:
    """Record a batch of embedded tiles in one transaction: their window rows (COPY; rows already
    there are kept), the tiles embedded (their leases cleared, with how many of their windows
    were ``skipped`` for no-data: tile id -> count), the job's counters and stage seconds.
    Returns how many tiles this call moved to embedded: a tile embedded by someone else
    meanwhile counts (and adds windows) once, for whoever moved it. ``stage_seconds`` is added
    whatever moved: it is time spent. Tiles without windows are legal."""
    seconds = json.dumps({k: float(v) for k, v in stage_seconds.items()})
    tile_ids = list(skipped)
    wanted = np.union1d(np.asarray(tile_ids, dtype=np.int64), rows.tile_ids)
    with engine.begin() as conn:
        # Rows of a tile deleted meanwhile (its area removed) are dropped, not a foreign key error.
        present = np.asarray(
            conn.execute(LOCK_TILES, {"ids": wanted.tolist()}).scalars().all(), dtype=np.int64
        )
        if len(present) < len(wanted):
            rows = rows.take(np.isin(rows.tile_ids, present))
        marked = conn.execute(
            MARK_EMBEDDED_MANY,
            {"ids": [int(t) for t in tile_ids], "skipped": [int(skipped[t]) for t in tile_ids]},
        ).all()
        moved = [r.id for r in marked]
        if len(rows):
            copy_rows(conn, rows)
            conn.execute(INSERT_COPIED)
        windows = int(np.isin(rows.tile_ids, np.asarray(moved, dtype=np.int64)).sum()) if moved else 0
        conn.execute(
            ADD_TO_JOB,
            {
                "job": job_id,
                "tiles": len(moved),
                "windows": windows,
                "skipped": sum(r.skipped for r in marked),
                "seconds": seconds,
            },
        )
    return len(moved)


def finish_drain(engine: Engine, job_id: int) -> bool:
    """Move the job to indexing when no tile of its area waits for embedding, and then recount
    its counters exactly (once per job); True when this call moved it (the caller queues it)."""
    with engine.begin() as conn:
        if not jobs.claim_indexing(conn, job_id):
            return False
        jobs.refresh_counts(conn, job_id)
        return True


# The first worker to embed a job's tiles records its window configuration; later ones read it.
BIND_WINDOW_CONFIG = text(
    """
    UPDATE ingest_jobs SET window_config = COALESCE(window_config, :config)
    WHERE id = :job RETURNING window_config
    """
)


def bind_window_config(engine: Engine, job_id: int, config: str) -> str | None:
    """The job's window configuration (this one, if none was recorded); None if the job is gone."""
    with engine.begin() as conn:
        return conn.execute(BIND_WINDOW_CONFIG, {"job": job_id, "config": config}).scalar_one_or_none()


def record_job_error(engine: Engine, job_id: int, error: str) -> None:
    """Show why work on a job is stuck, without failing it (another worker may do the work)."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE ingest_jobs SET error = :e WHERE id = :job"), {"e": error[:500], "job": job_id}
        )


# A tile whose cached file vanished goes back to the fetch stage once; missing again, it fails.
REFETCH = text(
    """
    UPDATE tiles SET status = CASE WHEN error = :note THEN 'failed' ELSE 'planned' END,
        error = CASE WHEN error = :note THEN :failed ELSE :note END,
        lease_until = NULL, leased_by = NULL
    WHERE id = ANY(:ids) AND status = 'fetched'
    RETURNING status
    """
)
REFETCH_NOTE = "tile file missing from the cache; fetching it again"


def send_back_to_fetch(engine: Engine, tile_ids: list[int]) -> int:
    """Tiles whose file is missing from the cache: back to ``planned`` (the fetch stage fetches
    them again), or ``failed`` when that already happened once. Returns how many go back."""
    if not tile_ids:
        return 0
    with engine.begin() as conn:
        statuses = conn.execute(
            REFETCH,
            {
                "ids": list(tile_ids),
                "note": REFETCH_NOTE,
                "failed": "tile file missing from the cache after fetching it again",
            },
        ).scalars()
        return sum(1 for s in statuses if s == "planned")
