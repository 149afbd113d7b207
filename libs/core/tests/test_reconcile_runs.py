"""The reconciler covers detection runs (issue 23, item 6): a run whose task was lost is queued
again, a run whose worker died is handed out again and, after ``run_handouts`` of those, fails
with its reason; live and finished runs are left alone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from cliprs.db.engine import sync_engine
from cliprs.queue import TASK_DETECT_RUN
from cliprs.reconcile import reconcile

STALL_S = 60
HANDOUTS = 2


@pytest.fixture
def db(pg_url: str) -> Engine:
    return sync_engine(pg_url)


@pytest.fixture
def project(db: Engine) -> Iterator[int]:
    """A project of the test's own, deleted (with its runs) afterwards."""
    with db.begin() as conn:
        project_id = conn.execute(
            text("INSERT INTO projects (name) VALUES (:n) RETURNING id"),
            {"n": f"runs-{uuid.uuid4().hex[:8]}"},
        ).scalar_one()
    yield project_id
    with db.begin() as conn:
        conn.execute(text("DELETE FROM projects WHERE id = :p"), {"p": project_id})


def make_run(db: Engine, project_id: int, state: str, *, stalled: bool = True) -> int:
    """A run in ``state`` whose last sign of life (creation, start, heartbeat) was an hour ago
    (or is now)."""
    age = "interval '1 hour'" if stalled else "interval '0'"
    with db.begin() as conn:
        return conn.execute(
            text(
                "INSERT INTO detect_runs (project_id, state, created_at, updated_at, heartbeat_at) "
                f"VALUES (:p, :s, now() - {age}, now() - {age}, now() - {age}) RETURNING id"
            ),
            {"p": project_id, "s": state},
        ).scalar_one()


def stall(db: Engine, run_id: int) -> None:
    """The run's heartbeat stops: its last one an hour ago."""
    with db.begin() as conn:
        conn.execute(
            text("UPDATE detect_runs SET heartbeat_at = now() - interval '1 hour' WHERE id = :r"),
            {"r": run_id},
        )


def run(db: Engine, run_id: int) -> list[tuple[str, list]]:
    """One reconciler round; the tasks it queued for this run."""
    sent: list[tuple[str, list]] = []
    reconcile(db, lambda task, args: sent.append((task, args)), STALL_S, run_handouts=HANDOUTS)
    return [(task, args) for task, args in sent if task == TASK_DETECT_RUN and args == [run_id]]


def row(db: Engine, run_id: int):
    with db.connect() as conn:
        return conn.execute(
            text("SELECT state, error, handouts, finished_at FROM detect_runs WHERE id = :r"), {"r": run_id}
        ).one()


def test_a_run_whose_task_was_lost_is_queued_again(db: Engine, project: int) -> None:
    lost = make_run(db, project, "queued")
    assert run(db, lost) == [(TASK_DETECT_RUN, [lost])]
    # Handed out: the next round gives that task another stall period.
    assert run(db, lost) == []
    assert row(db, lost).state == "queued"
    # A queued run waits behind other work without limit: it is never failed for waiting.
    for _ in range(HANDOUTS + 1):
        stall(db, lost)
        assert run(db, lost) == [(TASK_DETECT_RUN, [lost])]
    assert row(db, lost).state == "queued" and row(db, lost).error is None


def test_a_run_whose_worker_died_is_handed_out_again_then_fails_with_its_reason(
    db: Engine, project: int
) -> None:
    stalled = make_run(db, project, "running")
    for n in range(1, HANDOUTS + 1):
        assert run(db, stalled) == [(TASK_DETECT_RUN, [stalled])]
        assert run(db, stalled) == []  # not again within the stall period
        assert row(db, stalled).state == "running" and row(db, stalled).handouts == n
        stall(db, stalled)  # the worker it went to died too (or its retries ran out)
    assert run(db, stalled) == []
    failed = row(db, stalled)
    assert failed.state == "failed" and failed.finished_at is not None
    assert f"handed out {HANDOUTS} times" in failed.error and "start a new run" in failed.error


def test_live_fresh_and_finished_runs_are_left_alone(db: Engine, project: int) -> None:
    fresh = make_run(db, project, "queued", stalled=False)
    live = make_run(db, project, "running", stalled=False)  # its worker's heartbeat is recent
    done = make_run(db, project, "done")
    failed = make_run(db, project, "failed")
    for run_id in (fresh, live, done, failed):
        assert run(db, run_id) == []
    assert [row(db, r).state for r in (fresh, live, done, failed)] == ["queued", "running", "done", "failed"]


def test_a_lost_rethreshold_goes_back_to_done_with_its_reason(db: Engine, project: int) -> None:
    # The search-api marked the run rethresholding and queued the indexer's task, which was lost.
    lost = make_run(db, project, "rethresholding")
    fresh = make_run(db, project, "rethresholding", stalled=False)  # its task may still come
    assert run(db, lost) == [] and run(db, fresh) == []  # nothing to hand out: the threshold was in the task
    back = row(db, lost)
    assert back.state == "done" and "not applied" in back.error and "apply the threshold again" in back.error
    assert row(db, fresh).state == "rethresholding" and row(db, fresh).error is None


def test_a_rethreshold_the_indexer_is_applying_is_not_taken_for_lost(db: Engine, project: int) -> None:
    # The indexer holds the run's row lock while it applies a threshold, however long that takes.
    working = make_run(db, project, "rethresholding")
    with db.begin() as conn:
        conn.execute(text("SELECT id FROM detect_runs WHERE id = :r FOR UPDATE"), {"r": working})
        assert run(db, working) == []
    assert row(db, working).state == "rethresholding"
