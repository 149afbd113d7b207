"""Hot swap under load, against real processes: clients hammer the search-api while three new
index versions are published; no request may fail and every answer must be exactly what its
version holds. Then an area is deleted through the API and the real indexer worker, and the
versions no searcher holds any more are garbage-collected."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import mercantile
import numpy as np
import pytest

from cliprs.manifest import Manifest, list_versions
from cliprs.settings import CoreSettings
from cliprs_indexer.build import apply, collect_area_vectors, publish_area
from cliprs_indexer.settings import IndexerSettings
from cliprs_testing.loopback import wait_until
from cliprs_testing.synthetic import (
    SeededArea,
    clustered_unit_vectors,
    seed_area,
    write_area_chunks,
)
from tests.support.platform import run_platform

DIM = 64
K = 10
MODEL = "test/hot-swap"


@pytest.fixture(scope="module")
def core(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> CoreSettings:
    return CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("hot-swap") / "data",
        redis_namespace=f"swap-{uuid.uuid4().hex[:6]}",
    )


@pytest.fixture(scope="module")
def stack(core: CoreSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The search-api and the indexer worker as real processes (alive: no index yet)."""
    env = {
        "SEARCH_GEOCODER": "none",
        "SEARCH_HEARTBEAT_S": "0.5",
        "SEARCH_SEARCHER_TTL_S": "3",
        "INDEXER_GC_MIN_AGE_S": "0",
        "INDEXER_GC_RETRY_S": "1",
    }
    with run_platform(
        tmp_path_factory.mktemp("run"),
        database_url=core.database_url,
        redis_url=core.redis_url,
        data_dir=core.data_dir,
        namespace=core.redis_namespace,
        env=env,
        services={"search-api", "indexer-worker"},
        health_only=True,
        ready_timeout_s=120,
    ) as platform:
        yield platform["api"]


def seeded(
    core: CoreSettings, area_ids: list[int], tiles: list[mercantile.Tile], name: str, vectors: np.ndarray
) -> SeededArea:
    area = seed_area(core.database_url, tiles, name=name, source=f"swap-{name}")
    area_ids.append(area.area_id)
    write_area_chunks(core.vectors_dir, area, vectors[: len(area.ids)], MODEL)
    return area


def row_of_tiles(x0: int, n: int, y: int = 20_000) -> list[mercantile.Tile]:
    return [mercantile.Tile(x0 + i % 40, y + i // 40, 16) for i in range(n)]


def served_version(api: str) -> int | None:
    return httpx.get(f"{api}/v1/index", timeout=5).json()["version"]


def test_hot_swap_under_load_then_delete_and_collect(
    core: CoreSettings, stack: str, seeded_areas: list[int]
) -> None:
    api = stack
    base_vectors = clustered_unit_vectors(300 * 26, DIM, seed=41)
    base = seeded(core, seeded_areas, row_of_tiles(30_000, 300), "base", base_vectors)  # 7,800 windows
    query_row = 1234
    wid = int(base.ids[query_row])
    q = base_vectors[query_row].astype(np.float16).astype(np.float32)  # the stored (float16) vector
    rng = np.random.default_rng(42)

    def near_query(n: int) -> np.ndarray:  # windows that enter the query's top 10
        v = q + rng.normal(scale=0.02, size=(n, DIM)).astype(np.float32)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    extra_b = seeded(core, seeded_areas, row_of_tiles(31_000, 1), "b", near_query(26))
    extra_c = seeded(core, seeded_areas, row_of_tiles(32_000, 1), "c", near_query(26))
    vectors = {
        a.area_id: (a.ids, collect_area_vectors(core, a.area_id).vectors) for a in (base, extra_b, extra_c)
    }

    def expected(areas: list[int]) -> list[int]:
        ids = np.concatenate([vectors[a][0] for a in areas])
        scores = np.concatenate([vectors[a][1] for a in areas]) @ q
        return ids[np.argsort(-scores, kind="stable")[:K]].tolist()

    v1 = publish_area(core, base.area_id, collect_area_vectors(core, base.area_id)).version
    wait_until(lambda: served_version(api) == v1, 30, "version 1")
    contents = {v1: [base.area_id]}

    results: list[tuple[int, object]] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    resp = client.get(
                        f"{api}/v1/windows/{wid}/similar",
                        params={"k": K, "merge": "false", "address": "false"},
                    )
                    results.append((resp.status_code, resp.json()))
                except Exception as exc:  # a dropped connection is a failed request too
                    results.append((-1, repr(exc)))

    def hammered(n: int = 20) -> None:
        """Wait until ``n`` more searches were answered (not a fixed time: a busy machine is slower)."""
        start = len(results)
        wait_until(lambda: len(results) >= start + n, 60, f"{n} more searches")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        hammered()
        for step in ([base.area_id, extra_b.area_id], [base.area_id, extra_b.area_id, extra_c.area_id]):
            new = step[-1]
            version = publish_area(core, new, collect_area_vectors(core, new)).version
            contents[version] = step
            wait_until(lambda v=version: served_version(api) == v, 30, f"version {version}")
            hammered()
        # b's windows leave again (what deleting the area does to the index)
        version = apply(core, IndexerSettings(), remove_tiles=extra_b.tile_ids.tolist()).version
        contents[version] = [base.area_id, extra_c.area_id]
        wait_until(lambda: served_version(api) == version, 30, f"version {version}")
        hammered()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)

    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:3]
    assert len(results) > 50
    answers = {v: expected(areas) for v, areas in contents.items()}
    assert len({tuple(a) for a in answers.values()}) == 4  # each version answers differently
    seen = set()
    for _, body in results:
        version = body["index_version"]
        assert [f["properties"]["window_id"] for f in body["features"]] == answers[version], version
        seen.add(version)
    assert seen == set(contents)  # every version served some of the requests

    # Delete area c through the API: the indexer worker publishes a version without it, removes
    # its rows, and garbage-collects every version no searcher holds any more.
    resp = httpx.delete(f"{api}/v1/areas/{extra_c.area_id}")
    assert resp.status_code == 202, resp.text
    wait_until(lambda: httpx.get(f"{api}/v1/areas/{extra_c.area_id}").status_code == 404, 60, "the deletion")
    final = max(contents) + 1
    wait_until(lambda: served_version(api) == final, 30, "the version without area c")
    body = httpx.get(f"{api}/v1/windows/{wid}/similar", params={"k": K, "merge": "false"}).json()
    assert [f["properties"]["window_id"] for f in body["features"]] == expected([base.area_id])
    wait_until(lambda: list_versions(core.index_dir) == [final], 30, "garbage collection")
    shards = {p.name for p in (core.index_dir / "shards").iterdir()}
    manifest = Manifest.from_json((core.index_dir / "manifests" / f"v{final:08d}.json").read_bytes())
    assert shards == {Path(f).name for f in manifest.files()}
