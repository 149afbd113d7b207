"""The CLIP-RS pytest plugin (registered through the ``pytest11`` entry point ``cliprs``).

Fixtures talk to the real PostgreSQL+PostGIS and Redis on loopback (``CLIPRS_TEST_DATABASE_URL``,
``CLIPRS_TEST_REDIS_URL``), create what they need and remove it afterwards: a throwaway database
per test session (`cliprs_testing.db`), a Redis database of its own (`cliprs_testing.redis_db`)
and the tiny CLIP (`cliprs_testing.model`). The platform as processes (``start_platform``) needs
the services, so it is a fixture of the cross-service tests (``tests/conftest.py``), not of this
plugin, which depends on no service and no tool.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from cliprs.db.engine import async_engine
from cliprs.settings import CoreSettings
from cliprs_testing.db import throwaway_database
from cliprs_testing.keys import TestKey, make_test_keys
from cliprs_testing.model import default_cache_dir, tiny_clip
from cliprs_testing.redis_db import private_redis_db
from cliprs_testing.synthetic import delete_seeded

# Access control (API keys, quotas) is off in every search-api the tests start, in-process or as
# a process, unless a test turns it on: SearchSettings(auth="on") or {"SEARCH_AUTH": "on"}.
os.environ.setdefault("SEARCH_AUTH", "off")


@pytest.fixture
def api_keys(pg_url: str) -> Iterator[dict[str, TestKey]]:
    """API keys in the test database: ``read``, ``write``, ``admin`` and ``revoked`` (each a
    `TestKey` with ``.secret`` and ``.headers``), deleted after the test."""
    with make_test_keys(pg_url) as keys:
        yield keys


@pytest.fixture(scope="session")
def repo_root(pytestconfig: pytest.Config) -> Path:
    """The repository: pytest's root directory (where pyproject.toml configures it)."""
    return pytestconfig.rootpath


@pytest.fixture(scope="session")
def cache_dir(repo_root: Path) -> Path:
    """Generated models and downloaded vocabularies: ``CLIPRS_CACHE_DIR`` or ``<repo>/.cache``."""
    return default_cache_dir(repo_root)


@pytest.fixture(scope="session")
def session_pg_url() -> Iterator[str]:
    """A freshly migrated database of this test session's own, dropped at its end."""
    with throwaway_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_url(session_pg_url: str) -> str:
    """The test database: the session's (the cross-service tests override it with one database
    per test module, so that the platform a module starts sees no other test's rows)."""
    return session_pg_url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database of this test session's own (see `private_redis_db`)."""
    with private_redis_db() as url:
        yield url


@pytest.fixture(scope="session")
def tiny_model_dir(cache_dir: Path) -> Path:
    """A tiny generated CLIP with the real vocabulary (built once, kept in the cache dir)."""
    return tiny_clip(cache_dir)


@pytest.fixture
def core_settings(pg_url: str, redis_url: str, tmp_path: Path) -> CoreSettings:
    """Settings pointing at the test database, the test Redis and a temporary data dir."""
    return CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        redis_namespace=f"test-{uuid.uuid4().hex[:6]}",
    )


@pytest.fixture
async def pg_async_conn(pg_url: str) -> AsyncIterator[AsyncConnection]:
    """An async connection to the test database (what the search-api's repository takes)."""
    engine = async_engine(pg_url)
    async with engine.connect() as conn:
        yield conn
    await engine.dispose()


@pytest.fixture
def seeded_areas(pg_url: str) -> Iterator[list[int]]:
    """Append the ids of the areas a test writes; they are deleted (with their tiles and windows)
    after the test, because the session's database is shared with the other tests."""
    area_ids: list[int] = []
    yield area_ids
    if area_ids:
        delete_seeded(pg_url, area_ids)
