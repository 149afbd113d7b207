"""Ingest job bookkeeping shared by the tiler, the embedder and the indexer.

Counts are incremented as work units commit (the embedder adds the tiles it moved to embedded
and their windows in the same transaction, so a unit redone after a crash adds nothing), and
recomputed exactly from the tiles table (the source of truth) by `refresh_counts` when the job
moves on (once per job, not per unit: a recount reads every window of the area). State changes
are conditional updates, so when several workers race to start the next stage exactly one of
them wins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

log = logging.getLogger("cliprs.jobs")

JOB_STATES = ("queued", "fetching", "embedding", "indexing", "done", "failed")


def refresh_counts(conn: Connection, job_id: int) -> dict:
    """Recompute a job's tile and window counts from the tiles of its area."""
    row = (
        conn.execute(
            text(
                """
            WITH t AS (
                SELECT tl.id, tl.status FROM ingest_jobs j
                JOIN area_tiles at ON at.area_id = j.area_id
                JOIN tiles tl ON tl.id = at.tile_id
                WHERE j.id = :job
            )
            UPDATE ingest_jobs SET
                tiles_fetched = (SELECT count(*) FROM t WHERE status IN ('fetched', 'embedded')),
                tiles_failed = (SELECT count(*) FROM t WHERE status = 'failed'),
                tiles_embedded = (SELECT count(*) FROM t WHERE status = 'embedded'),
                windows_embedded = (SELECT count(*) FROM windows w JOIN t ON w.tile_id = t.id),
                windows_skipped_nodata = (
                    SELECT COALESCE(sum(tl.windows_skipped), 0) FROM tiles tl JOIN t ON tl.id = t.id
                ),
                updated_at = now()
            WHERE id = :job
            RETURNING tiles_planned, tiles_fetched, tiles_cached, tiles_failed, tiles_embedded,
                      windows_embedded, windows_skipped_nodata, state
            """
            ),
            {"job": job_id},
        )
        .mappings()
        .one()
    )
    return dict(row)


def touch(conn: Connection, job_id: int) -> None:
    """Record that the job made progress now (the reconciler leaves it alone for a while)."""
    conn.execute(text("UPDATE ingest_jobs SET updated_at = now() WHERE id = :job"), {"job": job_id})


class Periodic:
    """Calls ``beat()`` every ``every_s`` seconds on a daemon thread while the block runs; a
    failing beat is logged and the next one tries again (a database blip must not stop work)."""

    def __init__(self, name: str, every_s: float, beat: Callable[[], object]):
        self.name, self.every_s, self.beat = name, every_s, beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
            except Exception:
                log.warning("%s failed; retrying in %.0f s", self.name, self.every_s, exc_info=True)

    def __enter__(self) -> Periodic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def job_heartbeat(engine: Engine, job_id: int, every_s: float) -> Periodic:
    """Touches the job every ``every_s`` seconds while long work runs for it (a big index build,
    a slow embedding batch on a CPU), so the reconciler does not take that work for lost."""

    def beat() -> None:
        with engine.begin() as conn:
            touch(conn, job_id)

    return Periodic(f"job-{job_id}-heartbeat", every_s, beat)


def set_state(
    conn: Connection, job_id: int, new: str, *, expected: str | None = None, error: str | None = None
) -> bool:
    """Move a job to ``new`` (only from ``expected`` when given); True if this call moved it."""
    finished = new in ("done", "failed")
    result = conn.execute(
        text(
            """
            UPDATE ingest_jobs SET state = :new, error = COALESCE(:error, error), updated_at = now(),
                finished_at = CASE WHEN :finished THEN now() ELSE finished_at END
            WHERE id = :job AND (CAST(:expected AS text) IS NULL OR state = :expected)
            """
        ),
        {"new": new, "job": job_id, "expected": expected, "error": error, "finished": finished},
    )
    return result.rowcount == 1


def claim_indexing(conn: Connection, job_id: int) -> bool:
    """Move a job from embedding to indexing when no tile of its area waits for embedding.

    Called by whoever might have finished the last piece of work (the tiler after its last fetch,
    each embedder worker after draining the job); the single conditional update picks one winner.
    """
    result = conn.execute(
        text(
            """
            UPDATE ingest_jobs j SET state = 'indexing', updated_at = now()
            WHERE j.id = :job AND j.state = 'embedding' AND NOT EXISTS (
                SELECT 1 FROM area_tiles at JOIN tiles t ON t.id = at.tile_id
                WHERE at.area_id = j.area_id AND t.status IN ('planned', 'fetched')
            )
            """
        ),
        {"job": job_id},
    )
    return result.rowcount == 1
