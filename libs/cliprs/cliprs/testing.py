"""Pytest fixtures shared by every test suite (loaded from the root conftest.py).

They talk to the real PostgreSQL+PostGIS and Redis on loopback (``CLIPRS_TEST_DATABASE_URL``,
``CLIPRS_TEST_REDIS_URL``), create what they need and remove it afterwards: a throwaway
database per test session, a Redis database of its own (flushed before and after), a tiny CLIP checkpoint.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cliprs.db.engine import sync_url
from cliprs.db.migrate import ensure_database, upgrade
from cliprs.settings import CoreSettings

REPO_ROOT = Path(__file__).resolve().parents[3]
ADMIN_URL = os.environ.get(
    "CLIPRS_TEST_DATABASE_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)
TEST_REDIS_URL = os.environ.get("CLIPRS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A freshly migrated database of its own, dropped at the end of the session."""
    name = f"cliprs_test_{uuid.uuid4().hex[:10]}"
    url = make_url(sync_url(ADMIN_URL)).set(database=name).render_as_string(hide_password=False)
    url = url.replace("postgresql+psycopg2://", "postgresql://")
    ensure_database(url)
    upgrade(url)
    yield url
    from cliprs.db.engine import sync_engine

    sync_engine.cache_clear()
    admin = create_engine(make_url(sync_url(ADMIN_URL)), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database of this test session's own, emptied before and after.

    Celery queues are per Redis database, so two test sessions on one machine (a developer's and
    CI's) must not share one: each claims a free database among 8..15 with a lock key.
    """
    import redis

    base = urlsplit(TEST_REDIS_URL)
    pinned = os.environ.get("CLIPRS_TEST_REDIS_URL")
    candidates = [int(base.path.strip("/") or 0)] if pinned else list(range(15, 7, -1))
    token = uuid.uuid4().hex
    for db in candidates:
        url = f"redis://{base.netloc}/{db}"
        client = redis.Redis.from_url(url)
        if client.set("cliprs-test-session", token, nx=True, ex=3600):
            break
        client.close()
    else:
        pytest.fail(f"no free Redis test database among {candidates}; is another test session stuck?")
    for key in client.scan_iter():
        if key != b"cliprs-test-session":
            client.delete(key)
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny generated CLIP with the real vocabulary (built once, kept in .cache/)."""
    from cliprs.model.tiny import build_tiny_clip

    return build_tiny_clip(REPO_ROOT / ".cache/models/tiny-test", vocab_cache=REPO_ROOT / ".cache/wheels")


@pytest.fixture
def core_settings(pg_url: str, redis_url: str, tmp_path: Path) -> CoreSettings:
    """Settings pointing at the test database, the test Redis and a temporary data dir."""
    return CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        redis_namespace=f"test-{uuid.uuid4().hex[:6]}",
    )
