"""Celery tasks of the indexer (queue ``index``)."""

from __future__ import annotations

import logging

from sqlalchemy import text

from cliprs import jobs
from cliprs.db.engine import sync_engine
from cliprs.queue import TASK_INDEX_AREA, make_celery
from cliprs.settings import CoreSettings
from cliprs_indexer.build import collect_area_vectors, publish_area

log = logging.getLogger("cliprs.indexer")
core = CoreSettings()
app = make_celery("cliprs-indexer", core)


@app.task(name=TASK_INDEX_AREA)
def index_area(job_id: int) -> dict:
    """Build the job's area shard, publish a new index version, and finish the job."""
    engine = sync_engine(core.database_url)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT area_id, state FROM ingest_jobs WHERE id = :j"), {"j": job_id}
        ).one_or_none()
    if row is None or row.state != "indexing":
        log.info("job %s is not waiting for indexing (%s); skipped", job_id, row.state if row else "gone")
        return {}
    try:
        vectors = collect_area_vectors(core, row.area_id)
        if vectors is None:
            raise RuntimeError("no tile of the area could be embedded; see the tile errors")
        manifest = publish_area(core, row.area_id, vectors)
    except Exception as exc:
        log.exception("job %s: indexing failed", job_id)
        with engine.begin() as conn:
            jobs.set_state(conn, job_id, "failed", error=f"indexing failed: {exc}"[:500])
            conn.execute(text("UPDATE areas SET status = 'failed' WHERE id = :a"), {"a": row.area_id})
        raise
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE ingest_jobs SET windows_indexed = :n WHERE id = :j"),
            {"n": len(vectors.ids), "j": job_id},
        )
        jobs.refresh_counts(conn, job_id)
        jobs.set_state(conn, job_id, "done", expected="indexing")
        conn.execute(text("UPDATE areas SET status = 'ready' WHERE id = :a"), {"a": row.area_id})
    return {"version": manifest.version, "vectors": len(vectors.ids)}
