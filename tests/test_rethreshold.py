"""A new threshold of a detection run, against the search-api and the indexer worker as real
processes: one that gives more hits than SEARCH_MAX_SYNC_THRESHOLD_HITS is applied by the
indexer in the background (202, the run ``rethresholding`` until it is ``done`` at the new
threshold, its results readable meanwhile), a small one in the request (200); both re-measure
the held-out estimate at the new threshold."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import mercantile
import numpy as np
import pytest
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings
from cliprs_testing.synthetic import clustered_unit_vectors, delete_seeded, seed_area
from tests.support.search_app import index_seeded

CENTRE = (-63.58, 44.65)  # Halifax: far from every other test's rows
SYNC_HITS = 40


@pytest.fixture(scope="module")
def world(start_platform, pg_url: str, redis_url: str) -> Iterator[dict]:
    env = {"SEARCH_MAX_SYNC_THRESHOLD_HITS": str(SYNC_HITS)}
    with start_platform("rethreshold", env, services=["indexer-worker", "search-api"], health_only=True) as p:
        core = CoreSettings(database_url=pg_url, redis_url=redis_url, data_dir=p["data_dir"])
        t = mercantile.tile(*CENTRE, 16)
        tiles = [mercantile.Tile(t.x + dx, t.y + dy, 16) for dx in range(2) for dy in range(2)]
        area = seed_area(pg_url, tiles, name="rethreshold", source="rethreshold")
        try:
            # The class: the windows of the first tile (their vectors share a direction).
            rng = np.random.default_rng(5)
            direction = rng.standard_normal(512).astype(np.float32)
            direction /= np.linalg.norm(direction)
            positive = area.tile_of == area.tile_ids[0]
            vectors = clustered_unit_vectors(len(area.ids), 512, seed=6)
            vectors[positive] += 0.8 * direction
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            index_seeded(core, area, vectors, "test/rethreshold")
            api = p["api"]
            project = httpx.post(
                f"{api}/v1/projects", json={"name": "rethreshold", "area_ids": [area.area_id]}, timeout=30
            ).json()["id"]
            for ids, flag in ((area.ids[positive][:6], True), (area.ids[~positive][:6], False)):
                for wid in ids.tolist():
                    resp = httpx.post(
                        f"{api}/v1/projects/{project}/labels",
                        json={"window_id": wid, "positive": flag},
                        timeout=30,
                    )
                    assert resp.status_code == 201, resp.text
            yield {"api": api, "project": project, "area": area, "stack": p["stack"]}
            with sync_engine(pg_url).begin() as conn:
                conn.execute(text("DELETE FROM projects WHERE id = :p"), {"p": project})
        finally:
            delete_seeded(pg_url, [area.area_id])


def wait_done(world: dict, run_id: int, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        run = httpx.get(f"{world['api']}/v1/runs/{run_id}", timeout=30).json()
        if run["state"] not in ("queued", "running", "rethresholding"):
            assert run["state"] == "done", (run, world["stack"].log_tail("indexer-worker"))
            return run
        assert time.monotonic() < deadline, (run, world["stack"].log_tail("indexer-worker"))
        time.sleep(0.2)


def polygon_windows(world: dict, run_id: int) -> int:
    page = httpx.get(f"{world['api']}/v1/runs/{run_id}/polygons", params={"limit": 5000}, timeout=30).json()
    return sum(f["properties"]["window_count"] for f in page["features"])


@pytest.fixture
def done_run(world: dict) -> dict:
    """A finished run of the project at threshold 0.5, scored by the indexer worker."""
    resp = httpx.post(
        f"{world['api']}/v1/projects/{world['project']}/runs", json={"threshold": 0.5}, timeout=30
    )
    assert resp.status_code == 202, resp.text
    run = wait_done(world, resp.json()["id"])
    assert run["windows_scored"] == len(world["area"].ids) > SYNC_HITS
    assert run["estimate"]["threshold"] == 0.5
    return run


def test_a_big_threshold_change_is_applied_by_the_indexer_in_the_background(
    world: dict, done_run: dict
) -> None:
    api = world["api"]
    run_id, scored = done_run["id"], done_run["windows_scored"]
    # Threshold 0: every window is a hit, more than a request may make.
    moved = httpx.patch(f"{api}/v1/runs/{run_id}", json={"threshold": 0.0}, timeout=30)
    assert moved.status_code == 202, moved.text
    assert moved.json()["state"] == "rethresholding" and moved.json()["threshold"] == 0.5
    assert moved.headers["location"] == f"/v1/runs/{run_id}"
    # Meanwhile the run's results are its current threshold's, readable as before (or already
    # the new one's, when the indexer was quick).
    export = httpx.get(f"{api}/v1/runs/{run_id}/export.geojson", timeout=30)
    assert export.status_code == 200 and export.json()["run"]["threshold"] in (0.5, 0.0)
    again = httpx.patch(f"{api}/v1/runs/{run_id}", json={"threshold": 0.0}, timeout=30)
    if again.status_code == 409:  # while the first is being applied
        assert "rethresholding" in again.json()["error"]["message"]
    else:  # the indexer was quicker than this request: applied once more
        assert again.status_code == 202, again.text
    done = wait_done(world, run_id)
    assert done["threshold"] == 0.0 and done["hits"] == scored and done["error"] is None
    assert polygon_windows(world, run_id) == scored
    # The held-out estimate is re-measured at the new threshold: at 0 every positive is found.
    assert done["estimate"]["threshold"] == 0.0 and done["estimate"]["recall"] == 1.0
    assert done["stage_seconds"]["rethreshold"] >= 0


def test_a_small_threshold_change_is_applied_in_the_request_with_its_estimate(
    world: dict, done_run: dict
) -> None:
    api, run_id = world["api"], done_run["id"]
    counts = httpx.get(f"{api}/v1/runs/{run_id}/counts", params={"threshold": 0.9}, timeout=30).json()
    few = counts["counts"][0]["count"]
    assert few <= SYNC_HITS
    small = httpx.patch(f"{api}/v1/runs/{run_id}", json={"threshold": 0.9}, timeout=60)
    assert small.status_code == 200, small.text
    body = small.json()
    assert body["state"] == "done" and body["threshold"] == 0.9 and body["hits"] == few
    assert polygon_windows(world, run_id) == few
    # The held-out estimate is measured at the new threshold, not left at the old one.
    assert body["estimate"]["threshold"] == 0.9
    assert body["estimate"]["held_out_positive"] == done_run["estimate"]["held_out_positive"]
