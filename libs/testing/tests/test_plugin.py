"""The plugin's own pieces: throwaway databases, factories, the private Redis database, polling."""

from __future__ import annotations

import os

import mercantile
import pytest
import redis
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs_testing.db import TEMPLATE_PREFIX, migrations_hash, throwaway_database
from cliprs_testing.factories import link_tiles, make_area, make_job, make_tile, make_window
from cliprs_testing.loopback import wait_until
from cliprs_testing.redis_db import LOCK_KEY, private_redis_db


def _databases(url: str) -> set[str]:
    with sync_engine(url).connect() as conn:
        return set(conn.execute(text("SELECT datname FROM pg_database")).scalars())


def test_throwaway_databases_are_migrated_copies_of_one_template_and_are_dropped(pg_url: str) -> None:
    with throwaway_database() as url:
        name = url.rsplit("/", 1)[1]
        with sync_engine(url).connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM areas")).scalar() == 0
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        names = _databases(pg_url)
        assert name in names and TEMPLATE_PREFIX + migrations_hash() in names
    assert name not in _databases(pg_url)


def test_factories_write_rows_that_agree(pg_url: str) -> None:
    tile = mercantile.Tile(4700, 6300, 14)
    with sync_engine(pg_url).begin() as conn:
        triangle = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 1], [0, 0]]]}
        a = make_area(conn, polygon=triangle, zooms=[13, 14], source="factories", status="ready")
        b = make_area(conn, source="factories")
        t = make_tile(conn, a, tile.z, tile.x, tile.y, source="factories")
        make_window(conn, t * 4096, t, px=(0, 0, 128, 128), scale=0.5)
        link_tiles(conn, b, [t])
        job = make_job(conn, a, state="embedding")
        default_job = make_job(conn, b)
        area_rows = conn.execute(
            text("SELECT id, status, zooms FROM areas WHERE id = ANY(:ids) ORDER BY id"), {"ids": [a, b]}
        ).all()
        inside = conn.execute(
            text(
                "SELECT ST_Contains(ST_Buffer(t.polygon, 1e-9), w.center) FROM windows w "
                "JOIN tiles t ON t.id = w.tile_id WHERE w.id = :w"
            ),
            {"w": t * 4096},
        ).scalar()
        links = conn.execute(text("SELECT area_id FROM area_tiles WHERE tile_id = :t ORDER BY 1"), {"t": t})
        states = dict(
            conn.execute(
                text("SELECT id, state FROM ingest_jobs WHERE id IN (:j, :k)"), {"j": job, "k": default_job}
            ).all()
        )
        conn.execute(text("DELETE FROM areas WHERE id = ANY(:ids)"), {"ids": [a, b]})
    assert [(r.status, r.zooms) for r in area_rows] == [("ready", [13, 14]), ("pending", [14])]
    assert inside is True
    assert list(links.scalars()) == [a, b]
    assert states == {job: "embedding", default_job: "queued"}


@pytest.mark.skipif("CLIPRS_TEST_REDIS_URL" in os.environ, reason="one pinned Redis database only")
def test_private_redis_db_is_locked_and_emptied(redis_url: str) -> None:
    with private_redis_db(owner="plugin-test") as url:
        assert url != redis_url  # the session holds its own database
        client = redis.Redis.from_url(url)
        assert client.get(LOCK_KEY) == b"plugin-test"
        client.set("left-over", 1)
    assert client.dbsize() == 0
    client.close()


def test_wait_until_returns_or_names_what_it_waited_for() -> None:
    calls = iter([False, False, True])
    wait_until(lambda: next(calls), 5, "the third call", poll_s=0)
    with pytest.raises(TimeoutError, match=r"waiting for never\nit said no"):
        wait_until(lambda: False, 0.05, "never", poll_s=0.01, details=lambda: "it said no")
