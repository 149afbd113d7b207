"""The embedder's SQL against the real database: leases, binary COPY of window rows, counters."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, text

from cliprs.db.engine import sync_engine
from cliprs.windows import footprints, plan_windows, window_bbox, window_id
from cliprs_embedder import repository
from cliprs_embedder.repository import WindowRows
from cliprs_testing.factories import link_tiles, make_area, make_job, make_tile

LEASE_S = 60.0


@pytest.fixture(params=["psycopg2", "psycopg"])
def engine(request: pytest.FixtureRequest, pg_url: str) -> Iterator[Engine]:
    """The services' engine (psycopg2) and a psycopg 3 one: the COPY must work through both."""
    if request.param == "psycopg2":
        yield sync_engine(pg_url)
        return
    eng = create_engine("postgresql+psycopg://" + pg_url.split("://", 1)[1])
    yield eng
    eng.dispose()


@pytest.fixture
def db(pg_url: str) -> Engine:
    return sync_engine(pg_url)


def seed(
    db: Engine, seeded_areas: list[int], statuses: list[str], *, job_state: str = "embedding"
) -> tuple[int, int, list[int]]:
    """An area (tracked for clean-up) with a job and one tile per status (z14, distinct x)."""
    source = f"src-{uuid.uuid4().hex[:8]}"
    with db.begin() as conn:
        area_id = make_area(conn, source=source)
        seeded_areas.append(area_id)
        job_id = make_job(conn, area_id, state=job_state)
        tile_ids = [
            make_tile(conn, area_id, 14, 4700 + i, 6339, source=source, status=st, tile_size=256)
            for i, st in enumerate(statuses)
        ]
    return area_id, job_id, tile_ids


def set_lease(db: Engine, tile_id: int, worker: str | None, seconds_from_now: float | None) -> None:
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE tiles SET leased_by = :w, lease_until = CASE WHEN CAST(:s AS float8) IS NULL "
                "THEN NULL ELSE now() + make_interval(secs => CAST(:s AS float8)) END WHERE id = :id"
            ),
            {"w": worker, "s": seconds_from_now, "id": tile_id},
        )


def leases(db: Engine, tile_ids: list[int]) -> dict[int, tuple[str | None, float | None]]:
    """tile id -> (leased_by, seconds left on the lease)."""
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, leased_by, EXTRACT(EPOCH FROM lease_until - now()) AS left_s FROM tiles "
                "WHERE id = ANY(:t)"
            ),
            {"t": tile_ids},
        ).all()
    return {r.id: (r.leased_by, None if r.left_s is None else float(r.left_s)) for r in rows}


def job_row(db: Engine, job_id: int):
    with db.connect() as conn:
        return conn.execute(
            text(
                "SELECT state, tiles_fetched, tiles_failed, tiles_embedded, windows_embedded, windows_skipped_nodata, "
                "stage_seconds "
                "FROM ingest_jobs WHERE id = :j"
            ),
            {"j": job_id},
        ).one()


def tile_rows(tiles: list[tuple[int, int, int, int]], size: int = 256) -> WindowRows:
    """Window rows of (tile id, z, x, y) tiles, the way the pipeline builds them."""
    windows = plan_windows(size, [1.0, 0.5], 0.25)
    boxes = np.array([(w.x0, w.y0, w.x1, w.y1) for w in windows], dtype=np.int32)
    scales = np.array([w.scale for w in windows])
    n = len(windows)
    return WindowRows.concat(
        [
            WindowRows(
                ids=np.array([window_id(t, i) for i in range(n)], dtype=np.int64),
                tile_ids=np.full(n, t, dtype=np.int64),
                z=np.full(n, z, dtype=np.int16),
                boxes=boxes,
                scale=scales,
                bounds=footprints(z, x, y, size, boxes),
                valid_fraction=np.ones(n, dtype=np.float32),
                cloud_score=np.linspace(0, 1, n, dtype=np.float32),
                fingerprints=np.arange(n, dtype=np.int64) - 2**62,
            )
            for t, z, x, y in tiles
        ]
    )


# ----------------------------------------------------------------------------- claims


def test_claim_leases_only_free_fetched_tiles_of_the_jobs_area(db, seeded_areas) -> None:
    area_id, job_id, ids = seed(
        db, seeded_areas, ["fetched", "planned", "fetched", "embedded", "failed", "fetched", "fetched"]
    )
    free_a, planned, free_b, embedded, failed, held, expired = ids
    set_lease(db, held, "someone-else", 600)
    set_lease(db, expired, "dead-worker", -1)
    # A fetched tile of another area (and job) is not this job's work; one shared into this area is.
    _, _, (other,) = seed(db, seeded_areas, ["fetched"])
    _, _, (shared,) = seed(db, seeded_areas, ["fetched"])
    with db.begin() as conn:
        link_tiles(conn, area_id, [shared])

    rows = repository.claim_tiles(db, job_id, "w1", 100, LEASE_S)
    assert [r.id for r in rows] == sorted([free_a, free_b, expired, shared])
    r = rows[0]
    with db.connect() as conn:
        t = conn.execute(text("SELECT source, z, x, y FROM tiles WHERE id = :i"), {"i": r.id}).one()
    assert (r.source, r.z, r.x, r.y) == tuple(t)
    got = leases(db, [*ids, other, shared])
    for tile_id in (free_a, free_b, expired, shared):
        worker, left = got[tile_id]
        assert worker == "w1" and LEASE_S - 5 < left <= LEASE_S
    assert got[held][0] == "someone-else" and got[held][1] > 500
    for tile_id in (planned, embedded, failed, other):
        assert got[tile_id] == (None, None)
    # Everything free is leased now.
    assert repository.claim_tiles(db, job_id, "w2", 100, LEASE_S) == []


def test_claim_takes_the_lowest_ids_up_to_the_limit(db, seeded_areas) -> None:
    _, job_id, ids = seed(db, seeded_areas, ["fetched"] * 5)
    assert [r.id for r in repository.claim_tiles(db, job_id, "w1", 2, LEASE_S)] == ids[:2]
    assert [r.id for r in repository.claim_tiles(db, job_id, "w2", 2, LEASE_S)] == ids[2:4]
    assert [r.id for r in repository.claim_tiles(db, job_id, "w3", 2, LEASE_S)] == ids[4:]


def test_claim_skips_tiles_locked_by_another_transaction_without_waiting(db, seeded_areas) -> None:
    _, job_id, ids = seed(db, seeded_areas, ["fetched"] * 4)
    result: list = []
    with db.connect() as other:
        other.begin()
        # Another worker's claim in flight: its rows are locked until it commits.
        other.execute(text("SELECT id FROM tiles WHERE id = ANY(:t) FOR UPDATE"), {"t": ids[:2]})
        thread = threading.Thread(
            target=lambda: result.append(repository.claim_tiles(db, job_id, "w1", 10, LEASE_S)),
            daemon=True,
        )
        thread.start()
        thread.join(timeout=15)
        assert not thread.is_alive(), "the claim waited for the locked rows"
        other.rollback()
    assert [r.id for r in result[0]] == ids[2:]


def test_concurrent_claims_never_share_a_tile(pg_url, seeded_areas) -> None:
    db = create_engine("postgresql+psycopg2://" + pg_url.split("://", 1)[1], pool_size=8)
    _, job_id, ids = seed(db, seeded_areas, ["fetched"] * 300)
    workers = 8
    barrier = threading.Barrier(workers)
    claimed: dict[str, list[int]] = {f"w{i}": [] for i in range(workers)}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            barrier.wait()
            while rows := repository.claim_tiles(db, job_id, name, 7, LEASE_S):
                claimed[name].extend(r.id for r in rows)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    db.dispose()
    assert not errors
    every = [i for got in claimed.values() for i in got]
    assert len(every) == len(set(every)) == len(ids) and set(every) == set(ids)
    assert sum(1 for got in claimed.values() if got) > 1  # they did run side by side
    owners = leases(sync_engine(pg_url), ids)
    assert all(owners[i][0] == name for name, got in claimed.items() for i in got)


# ----------------------------------------------------------------------------- renew, stale, release


def test_renew_stale_and_release(db, seeded_areas) -> None:
    _, job_id, ids = seed(db, seeded_areas, ["fetched"] * 4)
    assert repository.stale_leases(db, job_id, LEASE_S) is None  # nothing leased
    mine = [r.id for r in repository.claim_tiles(db, job_id, "w1", 3, LEASE_S)]
    assert mine == ids[:3]
    [theirs] = [r.id for r in repository.claim_tiles(db, job_id, "w2", 3, LEASE_S)]
    # Fresh leases do not look abandoned.
    assert repository.stale_leases(db, job_id, LEASE_S) is None

    # w2 stopped renewing: its lease runs out in 5 s, less than half a lease ahead.
    set_lease(db, theirs, "w2", 5)
    left = repository.stale_leases(db, job_id, LEASE_S)
    assert left is not None and 3 < left <= 5
    # An expired lease is claimable now.
    set_lease(db, theirs, "w2", -10)
    assert repository.stale_leases(db, job_id, LEASE_S) == 0.0

    # Renewing extends every lease of the worker on tiles still fetched, and only those.
    set_lease(db, mine[0], "w1", 1)
    with db.begin() as conn:
        conn.execute(text("UPDATE tiles SET status = 'embedded' WHERE id = :i"), {"i": mine[2]})
    set_lease(db, mine[2], "w1", 1)
    assert repository.renew_leases(db, "w1", LEASE_S) == 2
    got = leases(db, ids)
    assert got[mine[0]][1] > LEASE_S - 5 and got[mine[1]][1] > LEASE_S - 5
    assert got[mine[2]][1] < 2  # embedded: not renewed
    assert got[theirs][1] < 0  # another worker's: untouched

    # A clean stop hands the leases back; another worker takes them at once.
    repository.release_leases(db, "w1")
    got = leases(db, ids)
    assert got[mine[0]] == got[mine[1]] == (None, None)
    assert got[mine[2]][0] == "w1"  # not fetched any more: left alone
    assert got[theirs][0] == "w2"
    assert [r.id for r in repository.claim_tiles(db, job_id, "w3", 10, LEASE_S)] == [
        mine[0],
        mine[1],
        theirs,
    ]
    assert repository.renew_leases(db, "w1", LEASE_S) == 0


# ----------------------------------------------------------------------------- recording windows


def test_window_rows_concat() -> None:
    rows = tile_rows([(1, 14, 4749, 6339), (2, 14, 4750, 6339)])
    assert len(rows) == 52
    assert rows.ids.dtype == np.int64 and rows.z.dtype == np.int16 and rows.boxes.dtype == np.int32
    assert rows.boxes.shape == (52, 4) and rows.bounds.shape == (52, 4)
    assert rows.tile_ids.tolist() == [1] * 26 + [2] * 26
    assert rows.ids[26] == window_id(2, 0)
    assert len(WindowRows.concat([])) == 0
    assert WindowRows.concat([]).boxes.shape == (0, 4)


def test_copy_payload_is_postgres_binary_copy() -> None:
    rows = tile_rows([(3, 14, 4749, 6339)])
    payload = repository.copy_payload(rows)
    assert payload[:11] == b"PGCOPY\n\xff\r\n\x00" and payload[-2:] == b"\xff\xff"
    # 2 (field count) + 15 fields of 4 (length) + 8 + 8 + 2 + 4 * 4 + 5 * 8 + 4 + 4 + 8 bytes per row.
    assert len(payload) == 19 + 26 * (2 + 15 * 4 + 90) + 2
    first = payload[19:]
    assert int.from_bytes(first[:2], "big") == 15
    assert int.from_bytes(first[2:6], "big") == 8 and int.from_bytes(first[6:14], "big") == window_id(3, 0)


def test_record_embedded_writes_rows_statuses_counters_and_is_idempotent(engine, db, seeded_areas) -> None:
    _, job_id, ids = seed(db, seeded_areas, ["fetched"] * 4)
    a, b, empty, other = ids
    repository.claim_tiles(db, job_id, "w1", 10, LEASE_S)
    with db.begin() as conn:  # counters from earlier units
        conn.execute(
            text(
                "UPDATE ingest_jobs SET tiles_embedded = 5, windows_embedded = 100, "
                "stage_seconds = '{\"decode\": 1.5}' WHERE id = :j"
            ),
            {"j": job_id},
        )
    tiles = [(a, 14, 4700, 6339), (b, 14, 4701, 6339)]
    rows = tile_rows(tiles)
    seconds = {"decode": 0.25, "encode": 2.0}
    # The empty tile's windows were all no-data; b had three skipped.
    moved = repository.record_embedded(engine, job_id, rows, {a: 0, b: 3, empty: 26}, seconds)
    assert moved == 3

    with db.connect() as conn:
        got = conn.execute(
            text(
                """
                SELECT w.id, w.tile_id, w.z, w.px_x0, w.px_y0, w.px_x1, w.px_y1, w.scale,
                       w.valid_fraction, w.cloud_score, w.fingerprint,
                       ST_SRID(w.footprint) AS srid, ST_AsText(w.footprint) AS fp,
                       ST_X(w.center) AS cx, ST_Y(w.center) AS cy
                FROM windows w WHERE w.tile_id = ANY(:t) ORDER BY w.id
                """
            ),
            {"t": ids},
        ).all()
        tiles_now = conn.execute(
            text(
                "SELECT id, status, embedded_at, error, lease_until, leased_by, windows_skipped "
                "FROM tiles WHERE id = ANY(:t)"
            ),
            {"t": ids},
        ).all()
    assert [r.id for r in got] == rows.ids.tolist()
    assert [r.valid_fraction for r in got] == rows.valid_fraction.tolist()
    assert [r.cloud_score for r in got] == pytest.approx(rows.cloud_score.tolist(), abs=1e-7)
    assert [r.fingerprint for r in got] == rows.fingerprints.tolist()
    windows = plan_windows(256, [1.0, 0.5], 0.25)
    for r in got:
        tile_id, index = divmod(r.id, 4096)
        w = windows[index]
        assert (r.tile_id, r.z, r.px_x0, r.px_y0, r.px_x1, r.px_y1, r.scale) == (
            tile_id,
            14,
            w.x0,
            w.y0,
            w.x1,
            w.y1,
            w.scale,
        )
        assert r.srid == 4326
        _, z, x, y = next(t for t in tiles if t[0] == tile_id)
        bb = window_bbox(z, x, y, 256, w)
        assert r.cx == pytest.approx((bb.min_lon + bb.max_lon) / 2, abs=1e-12)
        assert r.cy == pytest.approx((bb.min_lat + bb.max_lat) / 2, abs=1e-12)
    # Footprints are the polygons the WKT path wrote, geometrically.
    expected = {
        window_id(t, w.index): window_bbox(z, x, y, 256, w).wkt() for t, z, x, y in tiles for w in windows
    }
    with db.connect() as conn:
        equal = conn.execute(
            text(
                "SELECT bool_and(ST_Equals(w.footprint, ST_GeomFromText(e.wkt, 4326))), count(*) "
                "FROM windows w JOIN unnest(CAST(:ids AS bigint[]), CAST(:wkts AS text[])) AS e(id, wkt) "
                "ON e.id = w.id"
            ),
            {"ids": list(expected), "wkts": list(expected.values())},
        ).one()
    assert tuple(equal) == (True, 52)
    states = {r.id: r for r in tiles_now}
    for tile_id in (a, b, empty):
        t = states[tile_id]
        assert t.status == "embedded" and t.embedded_at is not None and t.error is None
        assert t.lease_until is None and t.leased_by is None
    assert states[other].status == "fetched" and states[other].leased_by == "w1"
    assert [states[t].windows_skipped for t in (a, b, empty, other)] == [0, 3, 26, None]
    job = job_row(db, job_id)
    assert (job.tiles_embedded, job.windows_embedded) == (5 + 3, 100 + 52)
    assert job.windows_skipped_nodata == 29
    assert job.stage_seconds == {"decode": 1.75, "encode": 2.0}

    # The same unit again (a redelivery): no rows, no tiles moved, counters as they were; the
    # time it took is still time spent.
    assert repository.record_embedded(engine, job_id, rows, {a: 0, b: 3, empty: 26}, {"write": 0.5}) == 0
    with db.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM windows WHERE tile_id = ANY(:t)"), {"t": ids})
        assert count.scalar_one() == 52
    job = job_row(db, job_id)
    assert (job.tiles_embedded, job.windows_embedded, job.windows_skipped_nodata) == (8, 152, 29)
    assert job.stage_seconds == {"decode": 1.75, "encode": 2.0, "write": 0.5}


def test_record_embedded_counts_only_the_tiles_it_moved(engine, db, seeded_areas) -> None:
    _, job_id, (a, b) = seed(db, seeded_areas, ["fetched", "fetched"])
    # Another worker recorded tile b already (its lease had expired and it was taken over).
    rows_b = tile_rows([(b, 14, 4701, 6339)])
    assert repository.record_embedded(engine, job_id, rows_b, dict.fromkeys([b], 0), {}) == 1
    rows = tile_rows([(a, 14, 4700, 6339), (b, 14, 4701, 6339)])
    assert repository.record_embedded(engine, job_id, rows, dict.fromkeys([a, b], 0), {}) == 1
    job = job_row(db, job_id)
    assert (job.tiles_embedded, job.windows_embedded) == (2, 52)
    with db.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM windows WHERE tile_id = ANY(:t)"), {"t": [a, b]}
            ).scalar_one()
            == 52
        )


def test_record_embedded_without_rows(engine, db, seeded_areas) -> None:
    _, job_id, (a,) = seed(db, seeded_areas, ["fetched"])
    assert (
        repository.record_embedded(
            engine, job_id, WindowRows.concat([]), dict.fromkeys([a], 0), {"decode": 0.1}
        )
        == 1
    )
    job = job_row(db, job_id)
    assert (job.tiles_embedded, job.windows_embedded, job.stage_seconds) == (1, 0, {"decode": 0.1})


def test_record_embedded_skips_rows_of_deleted_tiles(engine, db, seeded_areas) -> None:
    _, job_id, (a, gone) = seed(db, seeded_areas, ["fetched", "fetched"])
    rows = tile_rows([(a, 14, 4700, 6339), (gone, 14, 4701, 6339)])
    with db.begin() as conn:  # the area was deleted meanwhile, say
        conn.execute(text("DELETE FROM tiles WHERE id = :t"), {"t": gone})
    assert repository.record_embedded(engine, job_id, rows, dict.fromkeys([a, gone], 0), {}) == 1
    assert job_row(db, job_id).windows_embedded == 26


def test_copy_of_50k_rows(engine, db, seeded_areas) -> None:
    _, job_id, ids = seed(db, seeded_areas, ["fetched"] * 1924)
    tiles = [(t, 14, 4700 + i, 6339) for i, t in enumerate(ids)]
    rows = tile_rows(tiles)
    assert len(rows) == 50_024
    start = time.perf_counter()
    payload = repository.copy_payload(rows)
    build_s = time.perf_counter() - start
    with engine.begin() as conn:
        start = time.perf_counter()
        repository.copy_rows(conn, rows)
        copy_s = time.perf_counter() - start
        copied = conn.execute(text(f"SELECT count(*), min(id), max(id) FROM {repository.COPY_TABLE}")).one()
    assert tuple(copied) == (len(rows), rows.ids.min(), rows.ids.max())
    start = time.perf_counter()
    assert repository.record_embedded(engine, job_id, rows, dict.fromkeys(ids, 0), {}) == len(ids)
    total_s = time.perf_counter() - start
    print(
        f"\n{engine.dialect.driver}: {len(rows)} rows, {len(payload) / 1e6:.1f} MB: payload built in "
        f"{build_s * 1e3:.0f} ms, COPY in {copy_s * 1e3:.0f} ms, record_embedded (COPY, INSERT with "
        f"geometry and indexes, statuses, counters) in {total_s * 1e3:.0f} ms"
    )
    assert job_row(db, job_id).windows_embedded == len(rows)


# ----------------------------------------------------------------------------- end of a drain


def test_finish_drain_moves_the_job_once_and_recounts(db, seeded_areas) -> None:
    _, job_id, (a, _failed) = seed(db, seeded_areas, ["fetched", "failed"])
    assert repository.finish_drain(db, job_id) is False  # tile a still waits
    assert job_row(db, job_id).state == "embedding"
    repository.record_embedded(db, job_id, tile_rows([(a, 14, 4700, 6339)]), {a: 4}, {})
    with db.begin() as conn:  # counters that drifted (shared tiles, redone units)
        conn.execute(
            text(
                "UPDATE ingest_jobs SET tiles_embedded = 9, windows_embedded = 999, windows_skipped_nodata = 7 "
                "WHERE id = :j"
            ),
            {"j": job_id},
        )
    assert repository.finish_drain(db, job_id) is True
    job = job_row(db, job_id)
    assert (job.state, job.tiles_fetched, job.tiles_failed) == ("indexing", 1, 1)
    assert (job.tiles_embedded, job.windows_embedded, job.windows_skipped_nodata) == (1, 26, 4)
    assert repository.finish_drain(db, job_id) is False  # moved already
