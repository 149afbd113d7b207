"""IndexHolder / LoadedIndex over manifests and FAISS shards written the way the indexer writes them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
import redis

from cliprs.fsutil import atomic_write_bytes
from cliprs.manifest import Manifest, Shard, manifest_path, publish
from cliprs_search.index import IndexHolder, LoadedIndex
from cliprs_testing.platform import wait_until

DIM = 8
MODEL = "test/tiny-clip"


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_shard(index_dir: Path, area_id: int, ids: list[int], vectors: np.ndarray) -> Shard:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    rel = f"shards/area-{area_id}-{uuid.uuid4().hex[:8]}.faiss"
    (index_dir / "shards").mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(index_dir / rel))
    return Shard(area_id=area_id, file=rel, count=len(ids), kind="flat")


def make_version(
    index_dir: Path, version: int, areas: dict[int, tuple[list[int], np.ndarray]], current: bool = True
) -> Manifest:
    """Write the shards and manifest of ``version``; point CURRENT at it unless ``current`` is False."""
    shards = [write_shard(index_dir, a, ids, vecs) for a, (ids, vecs) in areas.items()]
    manifest = Manifest(version=version, model_id=MODEL, dim=DIM, shards=shards)
    if current:
        publish(index_dir, manifest)
    else:
        atomic_write_bytes(manifest_path(index_dir, version), manifest.to_json())
    return manifest


def set_current(index_dir: Path, version: int) -> None:
    atomic_write_bytes(index_dir / "CURRENT", str(version).encode())


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    path = tmp_path / "index"
    path.mkdir()
    return path


# Three versions of a small index, each with different window ids so answers show their version.
V1 = {1: ([101, 102, 103], unit_vectors(3, 1))}
V2 = {1: ([201, 202, 203, 204], unit_vectors(4, 2)), 2: ([251, 252], unit_vectors(2, 3))}
V3 = {2: ([301, 302], unit_vectors(2, 4))}


# --------------------------------------------------------------------------- load


def test_load_with_nothing_published_is_none(index_dir: Path) -> None:
    holder = IndexHolder(index_dir)
    assert holder.load() is None
    assert holder.current is None


def test_load_picks_current(index_dir: Path) -> None:
    make_version(index_dir, 1, V1)
    make_version(index_dir, 2, V2)
    make_version(index_dir, 3, V3, current=False)  # written but not (yet) current
    holder = IndexHolder(index_dir)
    loaded = holder.load()
    assert loaded is holder.current
    assert loaded is not None and loaded.version == 2
    assert len(loaded.shards) == 2
    assert sum(s.ntotal for s in loaded.shards) == 6
    assert holder.load() is loaded  # same version again: nothing reloaded
    assert holder.load(3).version == 3  # an announced version, even ahead of CURRENT


def test_an_older_version_is_never_swapped_in(index_dir: Path) -> None:
    make_version(index_dir, 1, V1)
    make_version(index_dir, 2, V2)
    holder = IndexHolder(index_dir)
    newest = holder.load()
    assert newest.version == 2
    assert holder.load(1) is newest
    assert holder.load(2) is newest
    set_current(index_dir, 1)  # e.g. a stale writer, or CURRENT read before a late announcement
    assert holder.load() is newest
    assert holder.current.version == 2
    make_version(index_dir, 3, V3)
    assert holder.load().version == 3


# --------------------------------------------------------------------------- LoadedIndex


def test_search_merges_shards_dedupes_and_orders_by_score(index_dir: Path) -> None:
    rng = np.random.default_rng(7)
    va, vb = unit_vectors(6, 10), unit_vectors(5, 11)
    vb[0] = va[4]  # id 5 in both shards with the same vector
    ids_a, ids_b = [1, 2, 3, 4, 5, 6], [5, 6, 7, 8, 9]  # id 6 in both with different vectors
    make_version(index_dir, 1, {1: (ids_a, va), 2: (ids_b, vb)})
    index = IndexHolder(index_dir).load()
    assert index is not None
    pairs = list(zip(ids_a, va, strict=True)) + list(zip(ids_b, vb, strict=True))
    for _ in range(5):
        q = rng.standard_normal(DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        best: dict[int, float] = {}
        for wid, vec in pairs:
            best[wid] = max(best.get(wid, -np.inf), float(vec @ q))
        expected = sorted(best.items(), key=lambda kv: -kv[1])
        for k in (1, 3, 6, 9, 50):
            got = index.search(q, k)
            ids = [wid for wid, _ in got]
            assert len(ids) == len(set(ids)) == min(k, 9)
            scores = [s for _, s in got]
            assert scores == sorted(scores, reverse=True)
            assert ids == [wid for wid, _ in expected[:k]]
            np.testing.assert_allclose(scores, [s for _, s in expected[:k]], atol=1e-5)


def test_search_exact_self_query_scores_one(index_dir: Path) -> None:
    make_version(index_dir, 1, V2)
    index = IndexHolder(index_dir).load()
    ids, vecs = V2[2]
    got = index.search(vecs[1], 3)
    assert got[0][0] == ids[1]
    assert got[0][1] == pytest.approx(1.0, abs=1e-5)


def test_vector_of_finds_vectors_in_any_shard(index_dir: Path) -> None:
    make_version(index_dir, 1, V2)
    index = IndexHolder(index_dir).load()
    for ids, vecs in V2.values():
        for wid, vec in zip(ids, vecs, strict=True):
            got = index.vector_of(wid)
            assert got is not None
            np.testing.assert_allclose(got, vec, atol=1e-6)
    assert index.vector_of(999_999) is None
    assert index.vector_of(101) is None  # a version-1 id
    assert LoadedIndex(Manifest(version=9, model_id=MODEL, dim=DIM)).vector_of(201) is None


def test_a_snapshot_keeps_answering_from_its_own_version(index_dir: Path) -> None:
    m1 = make_version(index_dir, 1, V1)
    holder = IndexHolder(index_dir)
    snapshot = holder.load()
    q = V1[1][1][0]
    before = snapshot.search(q, 10)
    make_version(index_dir, 2, V2)
    assert holder.load().version == 2
    for shard in m1.shards:  # even the files of version 1 going away does not matter
        (index_dir / shard.file).unlink()
    assert snapshot.version == 1
    assert snapshot.search(q, 10) == before
    assert {wid for wid, _ in before} == {101, 102, 103}
    assert snapshot.vector_of(201) is None
    np.testing.assert_allclose(snapshot.vector_of(101), q, atol=1e-6)
    assert {wid for wid, _ in holder.current.search(q, 10)} == {201, 202, 203, 204, 251, 252}


# --------------------------------------------------------------------------- follow


@pytest.fixture
def channel() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:index-updates"


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def subscribed(client: redis.Redis, channel: str) -> bool:
    return client.pubsub_numsub(channel)[0][1] >= 1


def stop_follower(holder: IndexHolder, thread: threading.Thread, client: redis.Redis, channel: str) -> None:
    holder.stop()
    client.publish(channel, json.dumps({"version": 0}))  # wakes it from a long poll wait
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_follow_loads_an_announced_version(
    index_dir: Path, redis_url: str, rclient: redis.Redis, channel: str
) -> None:
    make_version(index_dir, 1, V1)
    holder = IndexHolder(index_dir)
    # A long poll interval: only the announcement can bring a new version in quickly.
    thread = holder.follow(redis_url, channel, poll_s=30.0)
    try:
        catch_up = "version 1, published before following started"
        wait_until(lambda: holder.current is not None and holder.current.version == 1, 5, catch_up)
        wait_until(lambda: subscribed(rclient, channel), 5, "the subscription")
        make_version(index_dir, 2, V2)
        rclient.publish(channel, json.dumps({"version": 2}))
        start = time.monotonic()
        wait_until(lambda: holder.current.version == 2, 2.0, "the announced version 2")
        took = time.monotonic() - start
        assert took < 2.0
        # An announced version is loaded even when CURRENT has not moved to it (yet).
        make_version(index_dir, 3, V3, current=False)
        rclient.publish(channel, json.dumps({"version": 3}))
        wait_until(lambda: holder.current.version == 3, 2.0, "the announced version 3")
        # A stale announcement changes nothing.
        rclient.publish(channel, json.dumps({"version": 1}))
        time.sleep(0.3)
        assert holder.current.version == 3
        assert {wid for wid, _ in holder.current.search(V3[2][1][0], 5)} == {301, 302}
    finally:
        stop_follower(holder, thread, rclient, channel)


def test_follow_polls_when_no_announcement_comes(
    index_dir: Path, redis_url: str, rclient: redis.Redis, channel: str
) -> None:
    holder = IndexHolder(index_dir)
    thread = holder.follow(redis_url, channel, poll_s=0.2)
    try:
        wait_until(lambda: subscribed(rclient, channel), 5, "the subscription")
        time.sleep(0.3)
        assert holder.current is None  # nothing published yet
        make_version(index_dir, 1, V1)
        wait_until(
            lambda: holder.current is not None and holder.current.version == 1, 2.0, "polled version 1"
        )
        make_version(index_dir, 2, V2)
        wait_until(lambda: holder.current.version == 2, 2.0, "polled version 2")
    finally:
        stop_follower(holder, thread, rclient, channel)
