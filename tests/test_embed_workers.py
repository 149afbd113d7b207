"""Two embedder workers on one queue, one killed with SIGKILL in the middle of an area: when the
job ends, every window of every fetched tile has exactly one vector and one row, and the index
holds exactly those windows.

The killed worker's leased tiles go back to work when its lease, no longer renewed, runs out
(``EMBEDDER_LEASE_S``); its wake-up task is redelivered after the Redis visibility timeout,
shortened to a few seconds for this test (``CLIPRS_TASK_VISIBILITY_TIMEOUT``): those are the
mechanisms production relies on (a dead host never restarts its worker), so the test exercises
them rather than a restart. Embedding is slowed deterministically with finer windows (195 per tile instead of 26)
and small tasks, not with sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.manifest import load_manifest
from cliprs.tiles import BBox, tiles_for_bbox
from cliprs.vectors import read_chunk
from cliprs.windows import plan_windows
from cliprs_index.shardset import load_shardset
from cliprs_index.store import tile_of
from cliprs_testing.loopback import wait_until
from cliprs_tools.devstack import Stack, follow_job

AREA_BBOX = [-75.70, 37.62, -75.60, 37.70]  # 30 tiles at zoom 14 of the Sentinel-2 demo scene
ZOOMS = [14]
SOURCE = "kill-test"
SCALES = [1.0, 0.5, 0.25]
VISIBILITY_TIMEOUT_S = 10  # well above one task (2 tiles, about a second), far below the default
WORKERS = ("embedder-worker-1", "embedder-worker-2")
TASK = re.compile(r"Task embedder\.embed_job\[([0-9a-f-]+)\] (received|succeeded)")


@pytest.fixture(scope="module")
def tile_folder(render_tiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_tiles(tmp_path_factory.mktemp("tiles"), tiles_for_bbox(BBox(*AREA_BBOX), ZOOMS))


@pytest.fixture(scope="module")
def stack(start_platform, tiny_model_dir: Path, tile_folder: Path) -> Iterator[dict]:
    env = {
        # A source name of its own: tiles are shared by source and z/x/y across areas, and
        # other tests of the session cut the same tiles with other window scales.
        "CLIPRS_TILE_SOURCES": json.dumps({SOURCE: f"file://{tile_folder}/{{z}}/{{x}}/{{y}}.png"}),
        "CLIPRS_TASK_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
        "CLIP_MODEL": str(tiny_model_dir),
        # Two workers share the machine's cores: one torch thread each.
        "CLIP_TORCH_THREADS": "1",
        "EMBEDDER_WINDOW_SCALES": json.dumps(SCALES),
        "TILER_EMBED_BATCH": "2",
        # Small work units and short leases, so both workers hold tiles and the dead worker's
        # lease expires within the test.
        "EMBEDDER_LEASE_TILES": "2",
        "EMBEDDER_LEASE_S": "4",
    }
    with start_platform("workers", env, embed_workers=2) as platform:
        yield platform


def _tasks(log: str) -> tuple[set[str], set[str]]:
    """Ids of embedding tasks a worker received, and of those it finished."""
    seen: dict[str, set[str]] = {"received": set(), "succeeded": set()}
    for task_id, event in TASK.findall(log):
        seen[event].add(task_id)
    return seen["received"], seen["succeeded"]


def _worker_log(stack: Stack, name: str) -> str:
    return (stack.log_dir / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def killed_run(stack: dict) -> dict:
    """Ingest the area; SIGKILL worker 1 while it holds a task; follow the job to its end."""
    api, s = stack["api"], stack["stack"]
    # Both workers up (model loaded, consuming) before the area starts, so both get tasks.
    wait_until(
        lambda: all(re.search(r"embedder\d@\S+ ready\.", _worker_log(s, n)) for n in WORKERS),
        120,
        "both embedder workers to be ready",
        poll_s=0.2,
        details=lambda: "\n".join(s.log_tail(n) for n in WORKERS),
    )
    resp = httpx.post(
        f"{api}/v1/areas", json={"name": "workers", "bbox": AREA_BBOX, "zooms": ZOOMS, "source": SOURCE}
    )
    assert resp.status_code == 202, resp.text
    job = resp.json()["job"]
    victim = s.procs["embedder-worker-1"]
    deadline = time.monotonic() + 300
    while True:
        assert time.monotonic() < deadline, f"worker 1 never held a task mid-area: {job}"
        job = httpx.get(f"{api}/v1/jobs/{job['id']}").json()
        assert job["state"] not in ("done", "failed"), f"the area finished before the kill: {job}"
        received, succeeded = _tasks(_worker_log(s, "embedder-worker-1"))
        if job["state"] == "embedding" and job["windows_embedded"] > 0 and received - succeeded:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=10)
            break
        time.sleep(0.05)
    at_kill = dict(job)
    # Read again after its death: what it received and never finished (Celery logs success
    # before acknowledging, so a task not logged as succeeded was not acknowledged either).
    received, succeeded = _tasks(_worker_log(s, "embedder-worker-1"))
    killed_tasks = received - succeeded
    assert killed_tasks, "worker 1 finished its task in the instant before the kill; nothing to redeliver"
    job = follow_job(api, job, timeout_s=max(0.0, deadline - time.monotonic()))
    logs = "\n".join(s.log_tail(n) for n in ("embedder-worker-2", "indexer-worker", "tiler-worker"))
    assert job["state"] == "done", f"{job}\n{logs}"
    # Worker 1 may have stored its tiles and died before acknowledging: then the job can finish
    # before the redelivery, which still has to come (after the visibility timeout) and find
    # nothing left to do. Wait for it, boundedly.
    redelivery_deadline = time.monotonic() + 6 * VISIBILITY_TIMEOUT_S + 30
    while not killed_tasks <= _tasks(_worker_log(s, "embedder-worker-2"))[1]:
        if time.monotonic() > redelivery_deadline:
            break  # the assertion in the test reports it
        time.sleep(0.5)
    return {"job": job, "at_kill": at_kill, "killed_tasks": killed_tasks, "area_id": job["area_id"]}


def test_the_kill_happened_mid_area_and_the_task_was_redelivered(stack: dict, killed_run: dict) -> None:
    s = stack["stack"]
    assert killed_run["at_kill"]["state"] == "embedding"
    assert 0 < killed_run["at_kill"]["windows_embedded"] < killed_run["job"]["windows_embedded"]
    # The task worker 1 held when it died was redelivered to worker 2, which finished it.
    _, finished_by_2 = _tasks(_worker_log(s, "embedder-worker-2"))
    assert killed_run["killed_tasks"] and killed_run["killed_tasks"] <= finished_by_2


def test_every_window_has_exactly_one_vector_and_one_row(stack: dict, killed_run: dict, pg_url: str) -> None:
    job, data_dir = killed_run["job"], stack["data_dir"]
    expected_tiles = len(list(tiles_for_bbox(BBox(*AREA_BBOX), ZOOMS)))
    per_tile = len(plan_windows(256, SCALES, 0.25))  # 1 + 25 + 169 = 195
    assert job["tiles_planned"] == job["tiles_fetched"] == job["tiles_embedded"] == expected_tiles
    assert job["tiles_failed"] == 0
    with sync_engine(pg_url).connect() as conn:
        tile_ids = (
            conn.execute(
                text(
                    "SELECT t.id FROM area_tiles at JOIN tiles t ON t.id = at.tile_id "
                    "WHERE at.area_id = :a AND t.status = 'embedded' ORDER BY t.id"
                ),
                {"a": killed_run["area_id"]},
            )
            .scalars()
            .all()
        )
        rows = conn.execute(
            text("SELECT tile_id, id FROM windows WHERE tile_id = ANY(:t)"), {"t": tile_ids}
        ).all()
    assert len(tile_ids) == expected_tiles
    rows_by_tile: dict[int, list[int]] = {}
    for tile_id, wid in rows:
        rows_by_tile.setdefault(tile_id, []).append(wid)
    chunk_ids = []
    for tile_id in tile_ids:
        chunk = read_chunk(data_dir / "vectors", tile_id)
        assert chunk is not None, f"tile {tile_id} has no vector chunk"
        ids, vectors, _ = chunk
        assert len(ids) == len(vectors) == per_tile
        assert sorted(ids.tolist()) == sorted(rows_by_tile[tile_id])
        chunk_ids.extend(ids.tolist())
    assert len(chunk_ids) == len(set(chunk_ids)) == len(rows) == expected_tiles * per_tile
    assert job["windows_embedded"] == job["windows_indexed"] == len(rows)


def test_the_index_holds_exactly_those_windows(stack: dict, killed_run: dict, pg_url: str) -> None:
    index_dir = stack["data_dir"] / "index"
    manifest = load_manifest(index_dir)
    assert manifest is not None
    index = load_shardset(index_dir, manifest)
    picked = index.pick(area_id=killed_run["area_id"])
    assert picked, "no shard holds the area"
    ids = np.concatenate([np.asarray(index.shards[i].ids) for i in picked])
    with sync_engine(pg_url).connect() as conn:
        tile_ids = (
            conn.execute(
                text("SELECT tile_id FROM area_tiles WHERE area_id = :a"), {"a": killed_run["area_id"]}
            )
            .scalars()
            .all()
        )
        window_ids = (
            conn.execute(text("SELECT id FROM windows WHERE tile_id = ANY(:t)"), {"t": tile_ids})
            .scalars()
            .all()
        )
    assert len(ids) == len(np.unique(ids))  # no window twice
    of_area = ids[np.isin(tile_of(ids), tile_ids)]
    assert sorted(of_area.tolist()) == sorted(window_ids)  # every row indexed, nothing else of its tiles
