"""Every SQL statement of the embedder: the tiles it reads, the windows and statuses it writes.

Plain functions over a SQLAlchemy engine; each write is one transaction, which is what the batch
pipeline's "nothing lost, nothing duplicated" ordering relies on (see `cliprs_embedder.pipeline`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, text

from cliprs import jobs

FETCHED_TILES = text(
    "SELECT id, source, z, x, y FROM tiles WHERE id = ANY(:ids) AND status = 'fetched' ORDER BY id"
)

# One INSERT per tile however many windows: the rows travel as column arrays (`WindowRows`).
INSERT_WINDOWS = text(
    """
    INSERT INTO windows (id, tile_id, z, px_x0, px_y0, px_x1, px_y1, scale, footprint, center)
    SELECT w.id, :tile_id, :z, w.x0, w.y0, w.x1, w.y1, w.scale, ST_GeomFromText(w.fp, 4326),
           ST_SetSRID(ST_MakePoint(w.cx, w.cy), 4326)
    FROM unnest(CAST(:ids AS bigint[]), CAST(:x0 AS int[]), CAST(:y0 AS int[]), CAST(:x1 AS int[]),
                CAST(:y1 AS int[]), CAST(:scale AS float8[]), CAST(:fp AS text[]),
                CAST(:cx AS float8[]), CAST(:cy AS float8[]))
         AS w(id, x0, y0, x1, y1, scale, fp, cx, cy)
    ON CONFLICT (id) DO NOTHING
    """
)

MARK_EMBEDDED = text("UPDATE tiles SET status = 'embedded', embedded_at = now(), error = NULL WHERE id = :id")

# A tile another worker embedded meanwhile (a redelivery racing the original) stays embedded.
MARK_FAILED = text("UPDATE tiles SET status = 'failed', error = :e WHERE id = :id AND status <> 'embedded'")

# Keys of the parameters of INSERT_WINDOWS besides tile_id and z: one list per column.
WINDOW_COLUMNS = ("ids", "x0", "y0", "x1", "y1", "scale", "fp", "cx", "cy")


def fetched_tiles(engine: Engine, tile_ids: Sequence[int]) -> list[Any]:
    """Rows (id, source, z, x, y) of the given tiles still waiting to be embedded, by id.

    Tiles embedded already (a redelivered task) or never fetched are left out: nothing to do.
    """
    with engine.connect() as conn:
        return list(conn.execute(FETCHED_TILES, {"ids": list(tile_ids)}).all())


def record_embedded_tile(engine: Engine, tile_id: int, z: int, windows: dict[str, list]) -> None:
    """Insert a tile's window rows (``windows``: one list per `WINDOW_COLUMNS` key; rows already
    there are kept) and mark the tile embedded, in one transaction."""
    with engine.begin() as conn:
        conn.execute(INSERT_WINDOWS, {"tile_id": tile_id, "z": z, **windows})
        conn.execute(MARK_EMBEDDED, {"id": tile_id})


def mark_failed(engine: Engine, errors: dict[int, str]) -> None:
    """Mark tiles failed with their error (tile id -> message), unless embedded meanwhile."""
    if not errors:
        return
    with engine.begin() as conn:
        conn.execute(MARK_FAILED, [{"id": tile_id, "e": error} for tile_id, error in errors.items()])


def advance_job(engine: Engine, job_id: int) -> bool:
    """Refresh the job's counts; True when this call moved it to indexing (the caller queues it)."""
    with engine.begin() as conn:
        jobs.refresh_counts(conn, job_id)
        return jobs.claim_indexing(conn, job_id)
