"""Every ingest job finishes with exact counts, whatever fails on the way.

The platform runs as real processes on loopback against a PostgreSQL+PostGIS and a Redis of this
module's own (`cliprs_testing.instances`), so the tests can stop, kill and restart them without
touching the machine's services. Each test ingests an area (its own tile source, so its tiles
are its own) and injects one fault while the area is in flight:

- Redis restarted, losing every queued task;
- PostgreSQL restarted (immediate shutdown: every connection cut, crash recovery at start);
  while it is down the search-api must answer 503, never 500;
- the tiler worker SIGKILLed mid-fetch, then started again;
- the indexer worker SIGKILLed mid-build, then started again;
- the tile cache refusing writes for a while (``chattr +i`` on the source's cache directories:
  we run as root, and root ignores permission bits but not the immutable flag, so
  `cliprs.tilecache.store_tile` really raises ``PermissionError`` — checked before relying on it).

(An embedder worker SIGKILLed mid-batch is `tests/test_embed_workers.py`.)

After each fault the job must end ``done`` with every planned tile accounted for (embedded +
failed = planned; none failed, since every fault here passes), exactly one window row and one
vector (in the tile's chunk) per window, and the index holding exactly the area's windows.

Recovery is the reconciler's: every worker process looks every ``CLIPRS_RECONCILE_S`` seconds
(and at start) for jobs that made no progress for ``CLIPRS_STALL_S`` and hands their work out
again from what PostGIS records; transient errors retry with backoff. Both are shortened here;
Celery's redelivery of a dead worker's task is not (``CLIPRS_TASK_VISIBILITY_TIMEOUT`` keeps its
default of 15 minutes), so these tests check the reconciler, not the visibility timeout. The
ingest is slowed deterministically so that each fault lands mid-flight: a rate-limited HTTP tile
source fetched one tile at a time, finer windows (195 per tile) and small work units.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from cliprs.manifest import load_manifest
from cliprs.tiles import BBox, tiles_for_bbox
from cliprs.vectors import read_chunk
from cliprs.windows import plan_windows
from cliprs_index.shardset import load_shardset
from cliprs_index.store import tile_of
from cliprs_testing.db import query
from cliprs_testing.faultserver import TileServer
from cliprs_testing.instances import PostgresInstance, RedisInstance
from cliprs_testing.loopback import wait_until
from cliprs_tools.devstack import Ports, service_specs
from tests.support.platform import ingest_area, run_platform

AREA_BBOX = [-75.70, 37.62, -75.60, 37.70]  # 30 tiles at zoom 14 of the Sentinel-2 demo scene
WARMUP_BBOX = [-75.70, 37.62, -75.68, 37.635]  # a few of them: the index exists before the faults
ZOOMS = [14]
SCALES = [1.0, 0.5, 0.25]
TILE_SIDE = 256
RECONCILE_S = 2
STALL_S = 5
FETCH_RATE = 4  # tiles per second from the tile server: fetching an area takes ~8 s
OUTAGE_S = 5  # how long PostgreSQL and the tile cache stay broken
NO_PROGRESS_S = 45  # a job that shows no progress this long after its fault is stuck
JOB_TIMEOUT_S = 240
WORKERS = ("tiler-worker", "embedder-worker-1", "indexer-worker")
LOGS = ("tiler-worker", "embedder-worker-1", "indexer-worker", "search-api")
SOURCES = ("warmup", "redis", "redis-queued", "postgres", "tiler", "indexer", "cache")
INDEX_TASK = re.compile(r"Task indexer\.index_area\[([0-9a-f-]+)\] (received|succeeded)")


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostgresInstance, RedisInstance]]:
    root = tmp_path_factory.mktemp("fault-servers")
    with PostgresInstance(root) as pg, RedisInstance(root) as rds:
        yield pg, rds


@pytest.fixture(scope="module")
def tile_server(render_tiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TileServer]:
    """The demo scene's tiles over HTTP (``/{source}/{z}/{x}/{y}.png``), so that the tiler's rate
    limit applies (a file:// source is read as fast as the disk goes)."""
    folder = render_tiles(tmp_path_factory.mktemp("fault-tiles"), tiles_for_bbox(BBox(*AREA_BBOX), ZOOMS))

    def provider(z: int, x: int, y: int) -> bytes | None:
        path = folder / str(z) / str(x) / f"{y}.png"
        return path.read_bytes() if path.exists() else None

    server = TileServer(provider=provider).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def platform(
    servers: tuple[PostgresInstance, RedisInstance],
    tile_server: TileServer,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict]:
    pg, rds = servers
    run_dir = tmp_path_factory.mktemp("fault-run")
    env = {
        "CLIPRS_TILE_SOURCES": json.dumps(
            {f"fault-{s}": f"{tile_server.base}/{s}/{{z}}/{{x}}/{{y}}.png" for s in SOURCES}
        ),
        "CLIPRS_RECONCILE_S": str(RECONCILE_S),
        "CLIPRS_STALL_S": str(STALL_S),
        "CLIP_MODEL": str(tiny_model_dir),
        "CLIP_TORCH_THREADS": "1",
        "EMBEDDER_WINDOW_SCALES": json.dumps(SCALES),
        "EMBEDDER_LEASE_TILES": "2",
        "EMBEDDER_LEASE_S": "6",
        "TILER_EMBED_BATCH": "2",
        "TILER_CONCURRENCY": "1",
        "TILER_RATE_LIMIT": str(FETCH_RATE),
    }
    with run_platform(
        run_dir,
        database_url=pg.url,
        redis_url=rds.url,
        data_dir=run_dir / "data",
        namespace=f"faults-{uuid.uuid4().hex[:8]}",
        env=env,
        embed_workers=1,
        health_only=True,  # no index yet: the search-api is alive, not ready
    ) as p:
        p.update(pg=pg, redis=rds)
        # One small area first, with no fault: the platform works, and the index the search-api
        # serves exists (so a search during an outage reaches the database).
        ingest_area(p, {"name": "warm-up", "bbox": WARMUP_BBOX, "zooms": ZOOMS, "source": "fault-warmup"})
        wait_until(
            lambda: _status(f"{p['api']}/readyz") == 200, 60, "the search-api to load the index", poll_s=0.5
        )
        yield p


@pytest.fixture
def stack(platform: dict) -> dict:
    """The shared platform, whole again: servers up, every worker alive (a failed test may have
    left one dead)."""
    for server in (platform["pg"], platform["redis"]):
        if not server.running:
            server.start()
    for name in WORKERS:
        proc = platform["stack"].procs.get(name)
        if proc is None or proc.poll() is not None:
            _start_worker(platform, name)
    return platform


# ------------------------------------------------------------------------------------- helpers


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return None


def _logs(p: dict, names: tuple[str, ...] = LOGS) -> str:
    return "\n".join(f"--- {n}\n{p['stack'].log_tail(n, 25)}" for n in names)


def _log(p: dict, name: str) -> str:
    path = p["stack"].log_dir / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _ready_lines(p: dict, name: str) -> int:
    return len(re.findall(r"@\S+ ready\.", _log(p, name)))


def _start_worker(p: dict, name: str) -> None:
    """Start a worker again (as a supervisor would) and wait until it consumes."""
    spec = {s.name: s for s in service_specs(Ports(), embed_workers=1, with_web=False)}[name]
    before = _ready_lines(p, name)
    p["stack"].start(spec)
    wait_until(
        lambda: _ready_lines(p, name) > before,
        120,
        f"{name} to be ready again",
        poll_s=0.2,
        details=lambda: p["stack"].log_tail(name),
    )


def _kill_worker(p: dict, name: str) -> None:
    proc = p["stack"].procs[name]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _start_area(p: dict, fault: str) -> dict:
    area = {"name": f"fault {fault}", "bbox": AREA_BBOX, "zooms": ZOOMS, "source": f"fault-{fault}"}
    resp = httpx.post(f"{p['api']}/v1/areas", json=area, timeout=30)
    assert resp.status_code == 202, resp.text
    return resp.json()["job"]


def _tiles(p: dict, area_id: int) -> Counter:
    """The area's tiles by status, read from PostGIS (the job's own counts move per stage)."""
    rows = query(
        p["pg"].url,
        "SELECT t.status, count(*) FROM area_tiles at JOIN tiles t ON t.id = at.tile_id "
        "WHERE at.area_id = :a GROUP BY t.status",
        a=area_id,
    )
    return Counter(dict(rows))


def _get_job(p: dict, job_id: int) -> dict:
    resp = httpx.get(f"{p['api']}/v1/jobs/{job_id}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _wait_mid_flight(p: dict, job: dict, ready: Callable[[dict, Counter], bool], what: str) -> dict:
    """Poll until ``ready(job, tiles by status)``; the job must not finish first."""
    deadline = time.monotonic() + 120
    while True:
        job = _get_job(p, job["id"])
        assert job["state"] not in ("done", "failed"), f"the job ended before {what}: {job}\n{_logs(p)}"
        if ready(job, _tiles(p, job["area_id"])):
            return job
        assert time.monotonic() < deadline, f"never reached {what}: {job}\n{_logs(p)}"
        time.sleep(0.05)


def _mid_fetch(job: dict, tiles: Counter) -> bool:
    """Some tiles fetched, many still to fetch, embedding under way."""
    return tiles["planned"] >= 8 and tiles["fetched"] + tiles["embedded"] >= 6 and tiles["embedded"] > 0


def _follow(p: dict, job: dict, fault: str) -> dict:
    """Follow the job to its end after a fault; fail early, with the logs, when it stops moving.

    A 503 from the API (a dependency coming back) is no news; any 5xx but 503 fails."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    moved = time.monotonic()
    seen: tuple | None = None
    while True:
        resp = httpx.get(f"{p['api']}/v1/jobs/{job['id']}", timeout=10)
        assert resp.status_code in (200, 503), f"{resp.status_code} {resp.text}"
        now = time.monotonic()
        if resp.status_code == 200:
            job = resp.json()
            if job["state"] in ("done", "failed"):
                return job
            key = tuple(job[k] for k in ("state", "tiles_fetched", "tiles_embedded", "tiles_failed"))
            key += (job["windows_embedded"], job["windows_indexed"], tuple(_tiles(p, job["area_id"]).items()))
            if key != seen:
                seen, moved = key, now
        assert now - moved < NO_PROGRESS_S, (
            f"after the {fault} fault the job made no progress for {NO_PROGRESS_S} s: {job}\n{_logs(p)}"
        )
        assert now < deadline, f"after the {fault} fault the job did not end in {JOB_TIMEOUT_S} s: {job}"
        time.sleep(0.5)


def _assert_accounted(p: dict, job: dict, fault: str) -> None:
    """Done; every planned tile embedded; one row and one vector per window; the index holds
    exactly the area's windows."""
    assert job["state"] == "done" and job["outcome"] == "done", f"after the {fault} fault: {job}\n{_logs(p)}"
    expected_tiles = len(list(tiles_for_bbox(BBox(*AREA_BBOX), ZOOMS)))
    per_tile = len(plan_windows(TILE_SIDE, SCALES, 0.25))  # 1 + 25 + 169 = 195
    assert job["tiles_planned"] == expected_tiles
    assert job["tiles_embedded"] + job["tiles_failed"] == job["tiles_planned"], job
    assert job["tiles_failed"] == 0, job  # every fault here passes: nothing is lost for good
    assert job["tiles_fetched"] == expected_tiles, job

    area_id = job["area_id"]
    tile_rows = query(
        p["pg"].url,
        "SELECT t.id, t.status FROM area_tiles at JOIN tiles t ON t.id = at.tile_id WHERE at.area_id = :a",
        a=area_id,
    )
    assert len(tile_rows) == expected_tiles
    assert {status for _, status in tile_rows} == {"embedded"}, Counter(s for _, s in tile_rows)
    tile_ids = sorted(tid for tid, _ in tile_rows)
    rows = query(p["pg"].url, "SELECT tile_id, id FROM windows WHERE tile_id = ANY(:t)", t=tile_ids)
    rows_by_tile: dict[int, list[int]] = {}
    for tile_id, window_id in rows:
        rows_by_tile.setdefault(tile_id, []).append(window_id)
    chunk_ids: list[int] = []
    for tile_id in tile_ids:
        chunk = read_chunk(p["data_dir"] / "vectors", tile_id)
        assert chunk is not None, f"tile {tile_id} has no vector chunk"
        ids, vectors, _ = chunk
        assert len(ids) == len(vectors) == per_tile, (tile_id, len(ids), len(vectors))
        assert sorted(ids.tolist()) == sorted(rows_by_tile.get(tile_id, [])), f"tile {tile_id}"
        chunk_ids.extend(ids.tolist())
    assert len(chunk_ids) == len(set(chunk_ids)) == len(rows) == expected_tiles * per_tile
    assert job["windows_embedded"] == job["windows_indexed"] == len(rows), job

    index_dir = p["data_dir"] / "index"
    manifest = load_manifest(index_dir)
    assert manifest is not None
    index = load_shardset(index_dir, manifest)
    picked = index.pick(area_id=area_id)
    assert picked, "no shard holds the area"
    indexed = np.concatenate([np.asarray(index.shards[i].ids) for i in picked])
    of_area = indexed[np.isin(tile_of(indexed), tile_ids)]
    assert len(of_area) == len(np.unique(of_area)), "a window is indexed twice"
    assert sorted(of_area.tolist()) == sorted(chunk_ids), "the index does not hold exactly the area's windows"


# --------------------------------------------------------------------------------------- tests


def test_redis_restart_losing_every_queued_task(stack: dict) -> None:
    job = _start_area(stack, "redis")
    at_fault = _wait_mid_flight(stack, job, _mid_fetch, "mid-fetch")
    # The tiler works on one area at a time: a second area's fetch task waits in Redis.
    rds: RedisInstance = stack["redis"]
    queued = _start_area(stack, "redis-queued")
    wait_until(lambda: _llen(rds, "tiles") > 0, 10, "the second area's fetch task to wait in the queue")
    rds.stop()
    time.sleep(2)  # publishes and acknowledgements fail meanwhile
    rds.start()
    for j in (at_fault, queued):
        j = _follow(stack, j, "Redis restart")
        _assert_accounted(stack, j, "Redis restart")


def _llen(rds: RedisInstance, key: str) -> int:
    import redis

    client = redis.Redis.from_url(rds.url)
    try:
        return client.llen(key)
    finally:
        client.close()


def test_postgres_restart_and_503_while_it_is_down(stack: dict) -> None:
    api = stack["api"]
    job = _start_area(stack, "postgres")
    at_fault = _wait_mid_flight(stack, job, _mid_fetch, "mid-fetch")
    assert _status(f"{api}/v1/search?q=x") == 200
    pg: PostgresInstance = stack["pg"]
    pg.stop("immediate")
    answers: Counter = Counter()
    try:
        until = time.monotonic() + OUTAGE_S
        while time.monotonic() < until:
            for path in ("/v1/search?q=x", f"/v1/jobs/{job['id']}"):
                resp = httpx.get(f"{api}{path}", timeout=10)
                answers[(path.split("?")[0], resp.status_code)] += 1
                if resp.status_code == 503:
                    assert resp.headers.get("Retry-After", "").isdigit(), resp.headers
                    assert resp.json()["error"]["code"] == "unavailable", resp.text
                    assert "postgres@" not in resp.text  # never the connection string
            time.sleep(0.1)
    finally:
        pg.start()
    assert answers and {status for _, status in answers} == {503}, f"during the outage: {dict(answers)}"
    job = _follow(stack, at_fault, "PostgreSQL restart")
    _assert_accounted(stack, job, "PostgreSQL restart")
    assert _status(f"{api}/v1/search?q=x") == 200


def test_tiler_worker_killed_mid_fetch(stack: dict, tile_server: TileServer) -> None:
    job = _start_area(stack, "tiler")
    at_fault = _wait_mid_flight(stack, job, _mid_fetch, "mid-fetch")
    _kill_worker(stack, "tiler-worker")
    hits = sum(n for path, n in tile_server.counts().items() if path.startswith("/tiler/"))
    assert _tiles(stack, job["area_id"])["planned"] > 0  # the kill interrupted the fetch
    _start_worker(stack, "tiler-worker")
    job = _follow(stack, at_fault, "tiler worker kill")
    _assert_accounted(stack, job, "tiler worker kill")
    # The fetch went on where it stopped: tiles already stored were not fetched again.
    refetched = sum(n - 1 for path, n in tile_server.counts().items() if path.startswith("/tiler/") and n > 1)
    assert hits > 0 and refetched <= 2, f"{refetched} tiles fetched twice"  # at most the ones in flight


def _index_tasks(p: dict) -> tuple[set[str], set[str]]:
    seen: dict[str, set[str]] = {"received": set(), "succeeded": set()}
    for task_id, event in INDEX_TASK.findall(_log(p, "indexer-worker")):
        seen[event].add(task_id)
    return seen["received"], seen["succeeded"]


def test_indexer_worker_killed_mid_build(stack: dict) -> None:
    received_before, _ = _index_tasks(stack)
    job = _start_area(stack, "indexer")
    victim = stack["stack"].procs["indexer-worker"]
    deadline = time.monotonic() + 180
    while True:  # the instant the indexer takes the job's index task
        received, succeeded = _index_tasks(stack)
        if received - received_before - succeeded:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=10)
            break
        assert time.monotonic() < deadline, f"the indexer never took the task: {_get_job(stack, job['id'])}"
        time.sleep(0.01)
    at_fault = _get_job(stack, job["id"])
    _, succeeded = _index_tasks(stack)
    killed = received - received_before - succeeded
    assert killed, "the build finished in the instant before the kill"
    assert at_fault["state"] == "indexing", at_fault
    _start_worker(stack, "indexer-worker")
    job = _follow(stack, at_fault, "indexer worker kill")
    _assert_accounted(stack, job, "indexer worker kill")


def _set_immutable(paths: list[Path], on: bool) -> None:
    if paths:
        subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], check=True, capture_output=True)


def test_tile_cache_writes_failing_for_a_while(stack: dict) -> None:
    job = _start_area(stack, "cache")
    at_fault = _wait_mid_flight(stack, job, _mid_fetch, "mid-fetch")
    source_dir = stack["data_dir"] / "tiles" / "fault-cache"
    frozen = [source_dir, *sorted(d for d in source_dir.rglob("*") if d.is_dir())]
    _set_immutable(frozen, True)
    try:
        probe = frozen[-1] / "probe"
        with pytest.raises(PermissionError):  # root included: the immutable flag stops writes
            probe.write_bytes(b"x")
        time.sleep(OUTAGE_S)  # the outage lasts at least this long...
        # ...and until the tiler has met it (a busy machine may not have tried a write yet), or
        # has nothing left to fetch (which the assertions below report).
        wait_until(
            lambda: (
                "Operation not permitted" in _log(stack, "tiler-worker")
                or _tiles(stack, job["area_id"])["planned"] == 0
            ),
            60,
            "a refused tile write",
        )
        stopped = _tiles(stack, job["area_id"])
    finally:
        _set_immutable(frozen, False)
    assert stopped["planned"] > 0, "the fetch ended during the outage; nothing was refused"
    assert "Operation not permitted" in _log(stack, "tiler-worker"), "the tiler never tried to write"
    job = _follow(stack, at_fault, "tile cache failure")
    _assert_accounted(stack, job, "tile cache failure")
