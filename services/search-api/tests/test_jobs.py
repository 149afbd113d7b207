"""A job's progress as the gateway answers it: counters and the embedder's stage seconds."""

from __future__ import annotations

from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs_search import repository
from cliprs_search.schemas import Job
from cliprs_testing.factories import make_area, make_job


async def test_job_carries_stage_seconds(pg_url, pg_async_conn, seeded_areas) -> None:
    with sync_engine(pg_url).begin() as conn:
        area_id = make_area(conn, name="jobs")
        seeded_areas.append(area_id)
        fresh = make_job(conn, area_id)
        timed = make_job(conn, area_id, state="embedding")
        conn.execute(
            text('UPDATE ingest_jobs SET stage_seconds = \'{"decode": 1.25, "encode": 3}\' WHERE id = :j'),
            {"j": timed},
        )
    job = Job(**await repository.job(pg_async_conn, timed))
    assert job.stage_seconds == {"decode": 1.25, "encode": 3.0}
    assert Job(**await repository.job(pg_async_conn, fresh)).stage_seconds == {}
    latest = await repository.latest_jobs(pg_async_conn)
    assert latest[area_id]["id"] == timed and latest[area_id]["stage_seconds"]["decode"] == 1.25
    # Older rows without the field (a client's cached answer) still validate.
    row = await repository.job(pg_async_conn, fresh)
    row.pop("stage_seconds")
    assert Job(**row).stage_seconds == {}
