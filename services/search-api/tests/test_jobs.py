"""A job's progress as the gateway answers it: counters and the embedder's stage seconds."""

from __future__ import annotations

from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs_search.repository import areas as repository
from cliprs_search.schemas.areas import Job
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


def _job(state: str, planned: int, embedded: int, failed: int) -> Job:
    counts = dict(tiles_planned=planned, tiles_fetched=embedded, tiles_cached=0, tiles_failed=failed)
    return Job(
        id=1,
        area_id=1,
        state=state,
        **counts,
        tiles_embedded=embedded,
        windows_embedded=0,
        windows_indexed=0,
        error=None,
        created_at=None,
        updated_at=None,
        finished_at=None,
    )


def test_outcome_says_how_the_job_ended() -> None:
    assert _job("embedding", 4, 2, 0).outcome is None
    assert _job("done", 4, 4, 0).outcome == "done"
    assert _job("done", 4, 3, 1).outcome == "done_with_failures"
    assert _job("failed", 4, 0, 4).outcome == "failed"
    assert _job("done", 4, 3, 1).model_dump()["outcome"] == "done_with_failures"  # in the answer
