"""IndexHolder / LoadedIndex over manifests and FAISS shards written the way the indexer writes them."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from cliprs.fsutil import atomic_write_bytes
from cliprs.manifest import Codec, Manifest, Shard, held_versions, manifest_path, publish
from cliprs_index.store import CodecPlan, train_codec, write_codec
from cliprs_index.store import write_shard as write_shard_files
from cliprs_search.index import IndexHolder, LoadedIndex, Registration
from cliprs_testing.loopback import wait_until

DIM = 8
MODEL = "test/tiny-clip"


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def wids(tile: int, n: int) -> list[int]:
    """``n`` window ids of a tile (tile id * 4096 + index), as the embedder makes them."""
    return [tile * 4096 + i for i in range(n)]


def stored(vectors: np.ndarray) -> np.ndarray:
    """The vectors as the shards hold them (float16)."""
    return np.asarray(vectors, dtype=np.float16).astype(np.float32)


def write_shard(index_dir: Path, area_id: int, ids: list[int], vectors: np.ndarray) -> Shard:
    """A flat shard as the indexer writes a small index's shards."""
    stem, kind = write_shard_files(index_dir, np.asarray(ids, dtype=np.int64), vectors)
    return Shard(stem=stem, count=len(ids), kind=kind, area_ids=[area_id], tiles=1)


def make_version(
    index_dir: Path,
    version: int,
    areas: dict[int, tuple[list[int], np.ndarray]],
    current: bool = True,
    keep: tuple[Shard, ...] = (),
) -> Manifest:
    """Write the shards and manifest of ``version`` (with ``keep``: shards of an earlier version
    it shares); point CURRENT at it unless ``current`` is False."""
    shards = [*keep, *(write_shard(index_dir, a, ids, vecs) for a, (ids, vecs) in areas.items())]
    manifest = Manifest(version=version, model_id=MODEL, dim=DIM, shards=shards)
    if current:
        publish(index_dir, manifest)
    else:
        atomic_write_bytes(manifest_path(index_dir, version), manifest.to_json())
    return manifest


def make_ivfpq_version(index_dir: Path, version: int, current: bool = True) -> Manifest:
    """A version of one compressed shard (IVF-PQ codes in a ``.faiss`` file, a trained codec)."""
    vectors = unit_vectors(256, 100 + version)
    codec = write_codec(index_dir, train_codec(vectors, CodecPlan(nlist=4, pq=2), iterations=4))
    ids = wids(200 + version, 256)
    stem, kind = write_shard_files(index_dir, np.asarray(ids, dtype=np.int64), vectors, codec)
    assert kind == "ivfpq"
    shard = Shard(stem=stem, count=len(ids), kind=kind, area_ids=[7], tiles=1)
    manifest = Manifest(
        version=version,
        model_id=MODEL,
        dim=DIM,
        shards=[shard],
        codec=Codec(file=codec.file, nlist=4, pq=2, nprobe=4, k_factor=4, trained_on=256),
    )
    if current:
        publish(index_dir, manifest)
    else:
        atomic_write_bytes(manifest_path(index_dir, version), manifest.to_json())
    return manifest


def count_reads(holder: IndexHolder, monkeypatch: pytest.MonkeyPatch, before=None) -> list[int]:
    """The versions ``holder`` reads from disk, in order (``before(version)`` runs first)."""
    reads: list[int] = []
    real = holder._read

    def read(version: int) -> LoadedIndex:
        reads.append(version)
        if before is not None:
            before(version)
        return real(version)

    monkeypatch.setattr(holder, "_read", read)
    return reads


def set_current(index_dir: Path, version: int) -> None:
    atomic_write_bytes(index_dir / "CURRENT", str(version).encode())


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    path = tmp_path / "index"
    path.mkdir()
    return path


# Three versions of a small index, each with different window ids so answers show their version
# (each shard's windows are of its own tile: a tile is in exactly one shard).
V1 = {1: (wids(10, 3), unit_vectors(3, 1))}
V2 = {1: (wids(20, 4), unit_vectors(4, 2)), 2: (wids(25, 2), unit_vectors(2, 3))}
V3 = {2: (wids(30, 2), unit_vectors(2, 4))}


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
    assert loaded.total() == 6 == sum(s.index.ntotal for s in loaded.shards)
    assert sorted(a for s in loaded.manifest.shards for a in s.area_ids) == [1, 2]
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


def test_load_reads_only_the_newest_of_the_announced_version_and_current(
    index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_version(index_dir, 1, V1)
    holder = IndexHolder(index_dir)
    reads = count_reads(holder, monkeypatch)
    assert holder.load().version == 1
    make_version(index_dir, 2, V2)
    make_version(index_dir, 3, V3)  # CURRENT moved on before the announcement of 2 was handled
    assert holder.load(2).version == 3
    assert reads == [1, 3]


def test_a_version_with_a_missing_file_is_remembered_and_current_served_instead(
    index_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    make_version(index_dir, 1, V1)
    holder = IndexHolder(index_dir, retry_broken_s=3600)
    reads = count_reads(holder, monkeypatch)
    assert holder.load().version == 1
    make_version(index_dir, 2, V2)
    broken = make_ivfpq_version(index_dir, 3, current=False)  # announced ahead of CURRENT
    lost = f"{broken.shards[0].stem}.faiss"
    (index_dir / lost).unlink()  # faiss raises RuntimeError for it, not FileNotFoundError
    with caplog.at_level(logging.WARNING, logger="cliprs.search.index"):
        assert holder.load(3).version == 2  # CURRENT instead
        for _ in range(5):  # announced again, polled: not read again
            assert holder.load(3).version == 2
            assert holder.load().version == 2
    assert reads == [1, 3, 2]
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and lost in warned[0] and "3" in warned[0], warned
    # CURRENT names it now: tried once more (still broken), then left alone again.
    set_current(index_dir, 3)
    assert holder.load().version == 2
    assert holder.load().version == 2
    assert reads == [1, 3, 2, 3]
    make_version(index_dir, 4, V1)
    assert holder.load().version == 4


def test_a_broken_version_is_retried_after_the_backoff(
    index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = make_ivfpq_version(index_dir, 1)
    codec = index_dir / broken.codec.file
    saved = codec.read_bytes()
    codec.write_bytes(saved[: len(saved) // 2])  # corrupt
    holder = IndexHolder(index_dir, retry_broken_s=0.3)
    reads = count_reads(holder, monkeypatch)
    assert holder.load() is None and holder.load() is None
    assert reads == [1]
    time.sleep(0.4)
    codec.write_bytes(saved)  # e.g. a storage hiccup that went away
    assert holder.load().version == 1
    assert reads == [1, 1]


# --------------------------------------------------------------------------- LoadedIndex


def test_search_merges_shards_and_orders_by_score(index_dir: Path) -> None:
    rng = np.random.default_rng(7)
    va, vb, vc = unit_vectors(6, 10), unit_vectors(5, 11), unit_vectors(4, 12)
    shards = {1: (wids(40, 6), va), 2: (wids(41, 5), vb), 3: (wids(90, 4), vc)}
    make_version(index_dir, 1, shards)
    index = IndexHolder(index_dir).load()
    assert index is not None
    pairs = [(wid, vec) for ids, vecs in shards.values() for wid, vec in zip(ids, stored(vecs), strict=True)]
    for _ in range(5):
        q = rng.standard_normal(DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        expected = sorted(((wid, float(vec @ q)) for wid, vec in pairs), key=lambda kv: -kv[1])
        for k in (1, 3, 6, 9, 15, 50):
            got = index.search(q, k)
            ids = [wid for wid, _ in got]
            assert len(ids) == len(set(ids)) == min(k, 15)
            scores = [s for _, s in got]
            assert scores == sorted(scores, reverse=True)
            assert ids == [wid for wid, _ in expected[:k]]
            np.testing.assert_allclose(scores, [s for _, s in expected[:k]], atol=1e-5)
        # Only the picked shards are searched.
        got = index.search(q, 50, picked=index.pick(area_id=2))
        assert [wid for wid, _ in got] == [wid for wid, _ in expected if wid in shards[2][0]]


def test_search_exact_self_query_scores_one(index_dir: Path) -> None:
    make_version(index_dir, 1, V2)
    index = IndexHolder(index_dir).load()
    ids, vecs = V2[2]
    got = index.search(vecs[1], 3)
    assert got[0][0] == ids[1]
    assert got[0][1] == pytest.approx(1.0, abs=1e-3)  # float16 rows


def test_vector_of_finds_vectors_in_any_shard(index_dir: Path) -> None:
    make_version(index_dir, 1, V2)
    index = IndexHolder(index_dir).load()
    for ids, vecs in V2.values():
        for wid, vec in zip(ids, vecs, strict=True):
            got = index.vector_of(wid)
            assert got is not None
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, vec, atol=1e-3)  # float16 rows
    assert index.vector_of(wids(20, 5)[4]) is None  # a tile indexed, not this window
    assert index.vector_of(999_999_999) is None
    assert index.vector_of(V1[1][0][0]) is None  # a version-1 id
    empty = LoadedIndex.empty(Manifest(version=9, model_id=MODEL, dim=DIM))
    assert empty.vector_of(V2[1][0][0]) is None and empty.search(V2[1][1][0], 5) == []


def test_a_snapshot_keeps_answering_from_its_own_version(index_dir: Path) -> None:
    m1 = make_version(index_dir, 1, V1)
    holder = IndexHolder(index_dir)
    snapshot = holder.load()
    q = V1[1][1][0]
    before = snapshot.search(q, 10)
    make_version(index_dir, 2, V2)
    assert holder.load().version == 2
    for shard in m1.shards:  # even the files of version 1 going away does not matter
        for rel in shard.files():
            (index_dir / rel).unlink()
    assert snapshot.version == 1
    assert snapshot.search(q, 10) == before
    assert {wid for wid, _ in before} == set(V1[1][0])
    assert snapshot.vector_of(V2[1][0][0]) is None
    np.testing.assert_allclose(snapshot.vector_of(V1[1][0][0]), q, atol=1e-3)
    assert {wid for wid, _ in holder.current.search(q, 10)} == set(V2[1][0] + V2[2][0])


def test_a_new_version_reuses_the_shards_it_shares_with_the_live_one(index_dir: Path) -> None:
    m1 = make_version(index_dir, 1, V2)
    holder = IndexHolder(index_dir)
    v1 = holder.load()
    shared = next(s for s in m1.shards if s.area_ids == [2])
    # Version 2: area 1's shard replaced by V3's windows, area 2's shard kept as it was.
    make_version(index_dir, 2, {1: V3[2]}, keep=(shared,))
    for rel in shared.files():  # gone from disk: only the live version's copy can serve it
        (index_dir / rel).unlink()
    v2 = holder.load()
    assert v2.version == 2 and holder.current is v2
    old = next(s for s in v1.shards if s.meta.stem == shared.stem)
    new = next(s for s in v2.shards if s.meta.stem == shared.stem)
    assert new.index is old.index and new.ids is old.ids
    assert all(s.index is not old.index for s in v2.shards if s.meta.stem != shared.stem)
    q = V2[2][1][1]
    assert v2.search(q, 1)[0][0] == V2[2][0][1]
    assert {wid for wid, _ in v2.search(q, 10)} == set(V2[2][0] + V3[2][0])
    assert {wid for wid, _ in v1.search(q, 10)} == set(V2[1][0] + V2[2][0])  # the old snapshot too
    # A searcher starting now cannot load version 2: the shared shard's files are gone. It serves
    # nothing (not ready) rather than failing to start.
    fresh = IndexHolder(index_dir)
    assert fresh.load() is None and fresh.current is None


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
    # A poll interval far beyond every wait below: only the announcement can bring a new version in.
    thread = holder.follow(redis_url, channel, poll_s=600.0)
    try:
        catch_up = "version 1, published before following started"
        wait_until(lambda: holder.current is not None and holder.current.version == 1, 5, catch_up)
        wait_until(lambda: subscribed(rclient, channel), 5, "the subscription")
        make_version(index_dir, 2, V2)
        rclient.publish(channel, json.dumps({"version": 2}))
        # (How quickly is for the benchmarks: a wall-clock bound here would be flaky.)
        wait_until(lambda: holder.current.version == 2, 60, "the announced version 2")
        # An announced version is loaded even when CURRENT has not moved to it (yet).
        make_version(index_dir, 3, V3, current=False)
        rclient.publish(channel, json.dumps({"version": 3}))
        wait_until(lambda: holder.current.version == 3, 60, "the announced version 3")
        # A stale announcement changes nothing.
        rclient.publish(channel, json.dumps({"version": 1}))
        time.sleep(0.3)
        assert holder.current.version == 3
        assert {wid for wid, _ in holder.current.search(V3[2][1][0], 5)} == set(V3[2][0])
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
        wait_until(lambda: holder.current is not None and holder.current.version == 1, 60, "polled version 1")
        make_version(index_dir, 2, V2)
        wait_until(lambda: holder.current.version == 2, 60, "polled version 2")
    finally:
        stop_follower(holder, thread, rclient, channel)


def test_follow_reads_only_the_newest_of_the_queued_announcements(
    index_dir: Path, redis_url: str, rclient: redis.Redis, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_version(index_dir, 1, V1)
    holder = IndexHolder(index_dir)
    release = threading.Event()
    reads = count_reads(holder, monkeypatch, before=lambda v: v == 2 and release.wait(10))
    thread = holder.follow(redis_url, channel, poll_s=30.0)
    try:
        wait_until(lambda: holder.current is not None and holder.current.version == 1, 5, "version 1")
        wait_until(lambda: subscribed(rclient, channel), 5, "the subscription")
        # Announced ahead of CURRENT (which stays at 1): only the announcements name them.
        for v in range(2, 6):
            make_version(index_dir, v, {v: (wids(50 + v, 2), unit_vectors(2, 50 + v))}, current=False)
        rclient.publish(channel, json.dumps({"version": 2}))
        wait_until(lambda: 2 in reads, 5, "the load of version 2")
        for v in (3, 4, 5):  # queued while version 2 loads
            rclient.publish(channel, json.dumps({"version": v}))
        time.sleep(0.2)
        release.set()
        wait_until(lambda: holder.current.version == 5, 5, "version 5")
        time.sleep(0.3)
        assert reads == [1, 2, 5]
    finally:
        release.set()
        stop_follower(holder, thread, rclient, channel)


def test_the_registration_outlives_a_load_longer_than_its_ttl(
    index_dir: Path, redis_url: str, rclient: redis.Redis, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    holder = IndexHolder(index_dir, Registration(redis_url, namespace, ttl_s=1.0))
    make_version(index_dir, 1, V1)
    loading = threading.Event()

    def slow(version: int) -> None:
        if version == 2:
            loading.set()
            time.sleep(3.0)  # three times the TTL

    count_reads(holder, monkeypatch, before=slow)
    thread = holder.follow(redis_url, channel, poll_s=30.0, heartbeat_s=0.2)
    try:
        wait_until(lambda: holder.current is not None and holder.current.version == 1, 5, "version 1")
        wait_until(lambda: subscribed(rclient, channel), 5, "the subscription")
        assert held_versions(rclient, namespace) == {1}
        make_version(index_dir, 2, V2)
        rclient.publish(channel, json.dumps({"version": 2}))
        wait_until(loading.is_set, 5, "the load of version 2")
        samples = []
        while holder.current.version != 2:
            samples.append(held_versions(rclient, namespace))
            time.sleep(0.1)
        assert len(samples) >= 10
        assert all(s == {1, 2} for s in samples), samples
        # The live version only, renewed past the TTL (once version 1's registration expired).
        wait_until(lambda: held_versions(rclient, namespace) == {2}, 30, "version 1's registration to expire")
        assert held_versions(rclient, namespace) == {2}
    finally:
        stop_follower(holder, thread, rclient, channel)
    assert held_versions(rclient, namespace) == set()  # stopping unregisters


def test_follow_skips_a_version_with_a_missing_file_without_spinning(
    index_dir: Path,
    redis_url: str,
    rclient: redis.Redis,
    channel: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_version(index_dir, 1, V1)
    holder = IndexHolder(index_dir)
    reads = count_reads(holder, monkeypatch)
    thread = holder.follow(redis_url, channel, poll_s=0.1)  # polls CURRENT often
    try:
        wait_until(lambda: holder.current is not None and holder.current.version == 1, 5, "version 1")
        wait_until(lambda: subscribed(rclient, channel), 5, "the subscription")
        with caplog.at_level(logging.WARNING, logger="cliprs.search.index"):
            broken = make_ivfpq_version(index_dir, 2, current=False)
            lost = f"{broken.shards[0].stem}.faiss"
            (index_dir / lost).unlink()
            set_current(index_dir, 2)  # only now: the poll must not find it whole
            rclient.publish(channel, json.dumps({"version": 2}))
            wait_until(lambda: 2 in reads, 5, "an attempt at version 2")
            time.sleep(3.0)  # announced once, polled about 30 times
            assert holder.current.version == 1
            assert reads.count(2) == 1, reads
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
            warned = [r.getMessage() for r in caplog.records if lost in r.getMessage()]
            assert len(warned) == 1, warned
        make_version(index_dir, 3, V3)
        rclient.publish(channel, json.dumps({"version": 3}))
        wait_until(lambda: holder.current.version == 3, 5, "the next good version")
    finally:
        stop_follower(holder, thread, rclient, channel)
