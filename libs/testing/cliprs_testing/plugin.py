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
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cliprs.db.engine import sync_engine, sync_url
from cliprs.db.migrate import ensure_database, upgrade
from cliprs.settings import CoreSettings

REPO_ROOT = Path(__file__).resolve().parents[3]
ADMIN_URL = os.environ.get(
    "CLIPRS_TEST_DATABASE_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)
LOCK_KEY = "cliprs-test-session"
TEST_REDIS_URL = os.environ.get("CLIPRS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def throwaway_database(admin_url: str = ADMIN_URL, prefix: str = "cliprs_test") -> Iterator[str]:
    """A freshly migrated database of its own, dropped afterwards (tests and benchmarks)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = make_url(sync_url(admin_url)).set(database=name).render_as_string(hide_password=False)
    url = url.replace("postgresql+psycopg2://", "postgresql://")
    ensure_database(url)
    try:
        upgrade(url)
        yield url
    finally:
        sync_engine.cache_clear()  # close this process's pools before dropping
        admin = create_engine(make_url(sync_url(admin_url)), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def private_redis_db(base_url: str = TEST_REDIS_URL, owner: str = "tests") -> Iterator[str]:
    """A Redis database nobody else uses, emptied before and after.

    Celery queues are per Redis database, so two runs on one machine (a developer's tests, CI's,
    a benchmark) must not share one: each claims a free database among 8..15 with a lock key,
    unless ``CLIPRS_TEST_REDIS_URL`` pins one.
    """
    import redis

    base = urlsplit(base_url)
    pinned = os.environ.get("CLIPRS_TEST_REDIS_URL")
    candidates = [int(base.path.strip("/") or 0)] if pinned else list(range(15, 7, -1))
    for db in candidates:
        url = f"redis://{base.netloc}/{db}"
        client = redis.Redis.from_url(url)
        if client.set(LOCK_KEY, owner, nx=True, ex=3600):
            break
        client.close()
    else:
        raise RuntimeError(f"no free Redis database among {candidates}; is another run stuck?")
    for key in client.scan_iter():
        if key != LOCK_KEY.encode():
            client.delete(key)
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A freshly migrated database of its own, dropped at the end of the session."""
    with throwaway_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database of this test session's own (see `private_redis_db`)."""
    with private_redis_db() as url:
        yield url


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny generated CLIP with the real vocabulary (built once, kept in .cache/)."""
    from cliprs_model.tiny import build_tiny_clip

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
