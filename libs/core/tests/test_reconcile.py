"""The reconciler against the real database: what it hands out again for each kind of stalled job,
and what it leaves alone."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, text

from cliprs.db.engine import sync_engine
from cliprs.queue import TASK_EMBED_JOB, TASK_FETCH_AREA, TASK_INDEX_AREA
from cliprs.reconcile import RECONCILE_LOCK_KEY, reconcile
from cliprs_testing.factories import make_area, make_job, make_tile

STALL_S = 60


@pytest.fixture
def db(pg_url: str) -> Engine:
    return sync_engine(pg_url)


def seed(
    db: Engine, seeded_areas: list[int], state: str, statuses: list[str], *, stalled: bool = True
) -> int:
    """A job in ``state`` over tiles with ``statuses``; its last progress an hour ago (or now)."""
    source = f"src-{uuid.uuid4().hex[:8]}"
    with db.begin() as conn:
        area_id = make_area(conn, source=source)
        seeded_areas.append(area_id)
        job_id = make_job(conn, area_id, state=state)
        for i, status in enumerate(statuses):
            make_tile(conn, area_id, 14, 4700 + i, 6339, source=source, status=status)
        if stalled:
            conn.execute(
                text("UPDATE ingest_jobs SET updated_at = now() - interval '1 hour' WHERE id = :j"),
                {"j": job_id},
            )
    return job_id


def run(db: Engine, job_id: int) -> list[tuple[str, list]]:
    """One reconciler round; the tasks it queued for this job."""
    sent: list[tuple[str, list]] = []
    reconcile(db, lambda task, args: sent.append((task, args)), STALL_S)
    return [(task, args) for task, args in sent if args == [job_id]]


def state_of(db: Engine, job_id: int) -> str:
    with db.connect() as conn:
        return conn.execute(text("SELECT state FROM ingest_jobs WHERE id = :j"), {"j": job_id}).scalar_one()


def test_a_job_whose_fetch_task_was_lost_is_fetched_again(db, seeded_areas) -> None:
    queued = seed(db, seeded_areas, "queued", [])
    assert run(db, queued) == [(TASK_FETCH_AREA, [queued])]
    fetching = seed(db, seeded_areas, "fetching", ["fetched", "planned"])
    # Tiles left to fetch and fetched tiles nobody embeds: both stages get their task.
    assert run(db, fetching) == [(TASK_FETCH_AREA, [fetching]), (TASK_EMBED_JOB, [fetching])]


def test_fetched_tiles_nobody_holds_wake_the_embedders(db, seeded_areas) -> None:
    job = seed(db, seeded_areas, "embedding", ["embedded", "fetched"])
    assert run(db, job) == [(TASK_EMBED_JOB, [job])]
    # A live lease: a worker is on it; nothing to hand out (expired: handed out again).
    held = seed(db, seeded_areas, "embedding", ["embedded", "fetched"])
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE tiles SET leased_by = 'w', lease_until = now() + interval '1 minute' WHERE id IN "
                "(SELECT tile_id FROM area_tiles at JOIN ingest_jobs j ON j.area_id = at.area_id WHERE j.id = :j)"
            ),
            {"j": held},
        )
    assert run(db, held) == []


def test_a_job_with_nothing_left_to_embed_moves_to_indexing_once(db, seeded_areas) -> None:
    job = seed(db, seeded_areas, "embedding", ["embedded", "failed"])
    assert run(db, job) == [(TASK_INDEX_AREA, [job])]
    assert state_of(db, job) == "indexing"
    # A stalled index build is queued again.
    with db.begin() as conn:
        conn.execute(
            text("UPDATE ingest_jobs SET updated_at = now() - interval '1 hour' WHERE id = :j"), {"j": job}
        )
    assert run(db, job) == [(TASK_INDEX_AREA, [job])]


def test_jobs_in_progress_or_finished_are_left_alone(db, seeded_areas) -> None:
    live = seed(db, seeded_areas, "embedding", ["fetched"], stalled=False)
    done = seed(db, seeded_areas, "done", ["embedded"])
    failed = seed(db, seeded_areas, "failed", ["failed"])
    assert [run(db, j) for j in (live, done, failed)] == [[], [], []]


def test_handed_out_work_gets_time_before_the_next_round_acts(db, seeded_areas) -> None:
    job = seed(db, seeded_areas, "embedding", ["fetched"])
    assert run(db, job) == [(TASK_EMBED_JOB, [job])]
    assert run(db, job) == []  # touched by the first round: not stalled any more


def test_one_reconciler_at_a_time(db, seeded_areas) -> None:
    job = seed(db, seeded_areas, "embedding", ["fetched"])
    with db.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": RECONCILE_LOCK_KEY})
        assert run(db, job) == []  # another process holds the round: this one skips it
    assert run(db, job) == [(TASK_EMBED_JOB, [job])]
