"""A test platform sees only its own module's rows (issue 23, item 9).

The platforms of different test modules used to share the session's database: one platform's
reconciler handed out another test's stalled jobs and its tiler failed them for a source it did
not know, and a browser test then listed those failed jobs. Each test module of ``tests/`` now
has a database of its own (``pg_url``), and its platform runs on it.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs_testing.db import query
from cliprs_testing.factories import make_area, make_job
from cliprs_testing.synthetic import delete_seeded

STALLED = "UPDATE ingest_jobs SET updated_at = now() - interval '1 hour' WHERE id = :j"


def stalled_job(url: str, source: str) -> tuple[int, int]:
    """(area, job): a queued ingest job whose last progress was an hour ago, for an area of
    ``source``."""
    with sync_engine(url).begin() as conn:
        area = make_area(conn, name=f"isolation {source}", source=source)
        job = make_job(conn, area)
        conn.execute(text(STALLED), {"j": job})
    return area, job


def job_row(url: str, job: int) -> tuple:
    return tuple(query(url, "SELECT state, error, updated_at FROM ingest_jobs WHERE id = :j", j=job)[0])


def test_a_platform_never_hands_out_another_tests_jobs(
    start_platform, session_pg_url: str, pg_url: str
) -> None:
    assert pg_url != session_pg_url  # this module's database is not the session's
    foreign_area, foreign = stalled_job(session_pg_url, "another-tests-source")  # another test's
    try:
        before = job_row(session_pg_url, foreign)
        _, own = stalled_job(pg_url, "no-such-source")
        env = {
            "CLIPRS_TILE_SOURCES": json.dumps({"known": "file:///nonexistent/{z}/{x}/{y}.png"}),
            "CLIPRS_RECONCILE_S": "0.5",
            "CLIPRS_STALL_S": "1",
        }
        with start_platform("isolation", env, services=["tiler-worker"]) as platform:
            assert platform["database_url"] == pg_url
            # The platform's reconciler hands out its own stalled job, which fails for its
            # unknown source: proof that it ran, many rounds over.
            deadline = time.monotonic() + 120
            while job_row(pg_url, own)[0] != "failed":
                assert time.monotonic() < deadline, platform["stack"].log_tail("tiler-worker")
                time.sleep(0.3)
            time.sleep(2)  # a few more rounds
        assert job_row(session_pg_url, foreign) == before  # never handed out, never failed
    finally:
        delete_seeded(session_pg_url, [foreign_area])
