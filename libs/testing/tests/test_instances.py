"""Private PostgreSQL+PostGIS and Redis servers: they start, carry the platform's schema,
and restarts behave as the fault tests rely on (Redis comes back empty, PostgreSQL keeps what was
committed, even after a SIGKILL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from cliprs.db.engine import sync_url
from cliprs_testing.instances import InstanceError, PostgresInstance, RedisInstance


def _query(url: str, sql: str, params: dict | None = None, write: bool = False):
    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.begin() if write else engine.connect() as conn:
            result = conn.execute(text(sql), params or {})
            return None if write else result.scalar()
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresInstance]:
    with PostgresInstance(tmp_path_factory.mktemp("pg")) as instance:
        yield instance


@pytest.fixture
def rds(tmp_path: Path) -> Iterator[RedisInstance]:
    with RedisInstance(tmp_path) as instance:
        yield instance


def test_postgres_starts_with_postgis_and_the_platform_schema(pg: PostgresInstance) -> None:
    # (How fast it starts is not asserted: a busy machine makes any bound flaky.)
    assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/cliprs"
    assert _query(pg.url, "SELECT postgis_version()")
    assert _query(pg.url, "SELECT version_num FROM alembic_version")
    assert _query(pg.url, "SELECT count(*) FROM areas") == 0
    assert _query(pg.url, "SHOW listen_addresses") == "127.0.0.1"


def test_postgres_keeps_committed_data_across_restart_immediate_stop_and_sigkill(
    pg: PostgresInstance,
) -> None:
    _query(pg.url, "CREATE TABLE IF NOT EXISTS kept (v int)", write=True)
    for n, fault in enumerate(
        [lambda: pg.restart(), lambda: pg.restart("immediate"), lambda: (pg.kill(), pg.start())]
    ):
        _query(pg.url, "INSERT INTO kept VALUES (:v)", {"v": n}, write=True)
        pid = pg.pid
        fault()
        assert pg.running and pg.pid != pid
        assert _query(pg.url, "SELECT count(*) FROM kept") == n + 1


def test_postgres_down_refuses_connections_and_comes_back_on_the_same_port(pg: PostgresInstance) -> None:
    port = pg.port
    pg.stop()
    assert not pg.running
    with pytest.raises(Exception, match=r"(?i)connect"):
        _query(pg.url, "SELECT 1")
    pg.start()
    assert pg.port == port and _query(pg.url, "SELECT 1") == 1


def test_postgres_stop_mode_is_checked(pg: PostgresInstance) -> None:
    with pytest.raises(ValueError, match="mode"):
        pg.stop("gentle")
    assert pg.running


def test_redis_restart_loses_everything(rds: RedisInstance) -> None:
    client = redis.Redis.from_url(rds.url)
    client.set("k", "v")
    client.rpush("queue", "task")
    assert client.get("k") == b"v"
    rds.restart()
    assert client.dbsize() == 0  # the client reconnects by itself
    client.set("k", "again")
    rds.kill()
    assert not rds.running
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    rds.start()
    assert client.get("k") is None
    client.close()


def test_close_removes_everything(tmp_path: Path) -> None:
    with PostgresInstance(tmp_path / "p", migrate=False) as pg, RedisInstance(tmp_path / "r") as rds:
        homes = [pg.home, rds.dir]
        assert all(h.exists() for h in homes)
        assert _query(pg.url, "SELECT extname FROM pg_extension WHERE extname = 'postgis'") == "postgis"
    assert not any(h.exists() for h in homes)
    assert not pg.running and not rds.running
    assert list((tmp_path / "p").iterdir()) == [] and list((tmp_path / "r").iterdir()) == []


def test_a_server_that_cannot_start_says_why(
    tmp_path: Path, rds: RedisInstance, pg: PostgresInstance
) -> None:
    # The port is taken: the new server exits, or is caught answering for the other one.
    with pytest.raises(InstanceError, match=f"Redis on port {rds.port}: "):
        with RedisInstance(tmp_path / "second", port=rds.port):
            pass
    with pytest.raises(InstanceError, match=f"PostgreSQL on port {pg.port}: "):
        with PostgresInstance(tmp_path / "third", port=pg.port, migrate=False):
            pass
    assert rds.running and pg.running
