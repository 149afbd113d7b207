"""ShardSet over shard files written by `cliprs_index.store` (no database: the manifests are
made by hand): search against exact search, vectors by id, samples, picking and reuse on swap."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from cliprs.manifest import Codec, Manifest, Shard
from cliprs_index.shardset import (
    UNTUNED_TEXT_NPROBE,
    UNTUNED_TEXT_RERANK,
    Probe,
    SearchEffort,
    ShardSet,
    load_shardset,
)
from cliprs_index.store import (
    KIND_FLAT,
    KIND_IVFPQ,
    plan_codec,
    tile_of,
    train_codec,
    write_codec,
    write_shard,
)
from cliprs_testing.synthetic import clustered_unit_vectors, split_queries

DIM = 64
PER_TILE = 16
MODEL = "test/model"
# Tiles per shard: unequal on purpose (3,200, 2,000 and 800 windows).
SHARD_TILES = (200, 125, 50)


@dataclass
class Written:
    index_dir: Path
    ids: np.ndarray  # every indexed window id, in shard order
    vectors: np.ndarray  # float32, as given to write_shard
    queries: np.ndarray  # held-out queries
    parts: list[tuple[np.ndarray, np.ndarray]]  # (ids, vectors) of each shard
    ivf: Manifest  # every shard IVF-PQ, sharing one codec
    flat: Manifest  # the same windows as exact flat shards


def window_ids(first_tile: int, n_tiles: int) -> np.ndarray:
    """``PER_TILE`` windows per tile, ids as the embedder makes them (tile id * 4096 + index)."""
    tiles = np.repeat(np.arange(first_tile, first_tile + n_tiles, dtype=np.int64), PER_TILE)
    return tiles * 4096 + np.tile(np.arange(PER_TILE, dtype=np.int64), n_tiles)


def exact(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Exact top ``k`` against the float16-rounded rows (what the shards store)."""
    scores = vectors.astype(np.float16).astype(np.float32) @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return list(zip(ids[order].tolist(), scores[order].tolist(), strict=True))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    index_dir = tmp_path_factory.mktemp("index")
    n = sum(SHARD_TILES) * PER_TILE
    data, queries = split_queries(clustered_unit_vectors(n + 100, DIM, seed=31), 100, seed=32)
    parts, start_tile, start_row = [], 5000, 0
    for n_tiles in SHARD_TILES:
        ids = window_ids(start_tile, n_tiles)
        parts.append((ids, data[start_row : start_row + len(ids)]))
        start_tile += n_tiles + 7  # gaps between the shards' tiles
        start_row += len(ids)
    plan = plan_codec(n, DIM, lists_per_sqrt=2.0, planned_vectors=n)
    codec = write_codec(index_dir, train_codec(data, plan))
    manifest_codec = Codec(
        file=codec.file,
        nlist=plan.nlist,
        pq=plan.pq,
        nprobe=max(1, plan.nlist // 8),
        k_factor=32,
        trained_on=n,
    )
    ivf_shards, flat_shards = [], []
    for i, (ids, vecs) in enumerate(parts):
        # Rows in a shuffled order: the shard stores them by ascending id whatever the order given.
        order = np.random.default_rng(i).permutation(len(ids))
        stem, kind = write_shard(index_dir, ids[order], vecs[order], codec)
        assert kind == KIND_IVFPQ
        ivf_shards.append(Shard(stem=stem, count=len(ids), kind=kind, area_ids=[i + 1], tiles=SHARD_TILES[i]))
        stem, kind = write_shard(index_dir, ids, vecs)
        assert kind == KIND_FLAT
        flat_shards.append(
            Shard(stem=stem, count=len(ids), kind=kind, area_ids=[i + 1], tiles=SHARD_TILES[i])
        )
    all_ids = np.concatenate([p[0] for p in parts])
    all_vecs = np.concatenate([p[1] for p in parts])
    return Written(
        index_dir=index_dir,
        ids=all_ids,
        vectors=all_vecs,
        queries=queries,
        parts=parts,
        ivf=Manifest(version=1, model_id=MODEL, dim=DIM, shards=ivf_shards, codec=manifest_codec),
        flat=Manifest(version=1, model_id=MODEL, dim=DIM, shards=flat_shards),
    )


@pytest.fixture(scope="module")
def ivf(written: Written) -> ShardSet:
    return load_shardset(written.index_dir, written.ivf)


@pytest.fixture(scope="module")
def flat(written: Written) -> ShardSet:
    return load_shardset(written.index_dir, written.flat)


# --------------------------------------------------------------------------- files


def test_shard_files_hold_ascending_ids_and_float16_rows(written: Written, ivf: ShardSet) -> None:
    for shard, (ids, vecs) in zip(ivf.shards, written.parts, strict=True):
        assert shard.ids.dtype == np.int64 and np.all(np.diff(shard.ids) > 0)
        assert np.array_equal(shard.ids, np.sort(ids))
        assert shard.rows.dtype == np.float16 and shard.rows.shape == (len(ids), DIM)
        order = np.argsort(ids)
        assert np.array_equal(shard.rows, vecs[order].astype(np.float16))
        assert np.array_equal(shard.tiles, np.unique(tile_of(ids)))
        assert shard.index.ntotal == len(ids)
    assert (ivf.total(), ivf.dim, ivf.model_id, ivf.version) == (len(written.ids), DIM, MODEL, 1)
    assert ivf.total([1, 2]) == len(written.parts[1][0]) + len(written.parts[2][0])


# --------------------------------------------------------------------------- search


def test_flat_search_is_exact(written: Written, flat: ShardSet) -> None:
    for q in written.queries[:20]:
        got = flat.search(q, 10)
        want = exact(written.vectors, written.ids, q, 10)
        assert [w for w, _ in got] == [w for w, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


def test_effort_scales_the_tuned_search(written: Written) -> None:
    """A codec tuned to one list and a minimal re-rank misses neighbours of queries away from the
    data; an effort that probes every list and re-ranks every vector finds the exact answer."""
    codec = replace(written.ivf.codec, nprobe=1, k_factor=1)
    index = load_shardset(written.index_dir, replace(written.ivf, codec=codec))
    rng = np.random.default_rng(5)
    gap = rng.standard_normal(DIM).astype(np.float32)
    queries = written.queries[:30] * 0.3 + gap / np.linalg.norm(gap)  # off the data's cone
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    everything = SearchEffort(nprobe=codec.nlist, rerank=len(written.ids))
    tuned_hits = full_hits = 0
    for q in queries:
        want = [w for w, _ in exact(written.vectors, written.ids, q, 10)]
        tuned_hits += len({w for w, _ in index.search(q, 10)} & set(want))
        full = index.search(q, 10, effort=everything)
        assert [w for w, _ in full] == want
        full_hits += 10
    assert tuned_hits < full_hits  # the default effort really is the tuned one


def test_ivf_search_over_shards_sharing_a_codec_matches_exact_search(written: Written, ivf: ShardSet) -> None:
    hits = 0
    for q in written.queries:
        got = ivf.search(q, 10)
        ids = [w for w, _ in got]
        assert len(ids) == len(set(ids)) == 10
        scores = [s for _, s in got]
        assert scores == sorted(scores, reverse=True)
        # Candidates are re-ranked exactly: every score is the float16 row's cosine.
        _, vecs = ivf.vectors_of(ids)
        np.testing.assert_allclose(scores, [float(ivf.vector_of(w) @ q) for w in ids], rtol=1e-5, atol=1e-5)
        assert len(vecs) == 10
        hits += len(set(ids) & {w for w, _ in exact(written.vectors, written.ids, q, 10)})
    recall = hits / (10 * len(written.queries))
    print(f"recall@10 over {len(ivf.shards)} IVF-PQ shards: {recall:.3f}")
    assert recall >= 0.9


def test_ivf_search_of_picked_shards_stays_inside_them(written: Written, ivf: ShardSet) -> None:
    ids, vecs = written.parts[2]
    for q in written.queries[:10]:
        got = ivf.search(q, 10, picked=[2])
        assert np.isin([w for w, _ in got], ids).all()
        truth = {w for w, _ in exact(vecs, ids, q, 10)}
        assert len(truth & {w for w, _ in got}) >= 8
    assert ivf.search(written.queries[0], 10, picked=[]) == []
    assert ivf.search(written.queries[0], 0) == []


def test_a_large_k_escalates_nprobe_until_it_is_answered(written: Written) -> None:
    # One list probed and almost no re-rank depth: one list holds far fewer than k.
    codec = replace(written.ivf.codec, nprobe=1, k_factor=1)
    shardset = load_shardset(written.index_dir, replace(written.ivf, codec=codec))
    q = written.queries[3]
    small_ids = written.parts[2][0]
    for k, picked, available in (
        (1000, None, len(written.ids)),
        (len(small_ids) - 1, [2], len(small_ids)),
        (len(small_ids) + 50, [2], len(small_ids)),  # more than the shard holds: all of it
        (len(written.ids) + 10, None, len(written.ids)),
    ):
        got = shardset.search(q, k, picked=picked)
        ids = [w for w, _ in got]
        assert len(ids) == len(set(ids)) == min(k, available)
        scores = [s for _, s in got]
        assert scores == sorted(scores, reverse=True)
    # Every vector asked for: exactly the exact ranking.
    got = shardset.search(q, len(small_ids), picked=[2])
    assert {w for w, _ in got} == set(small_ids.tolist())


def test_search_ids_is_exact_and_ignores_unknown_ids(written: Written, ivf: ShardSet) -> None:
    rng = np.random.default_rng(5)
    rows = rng.choice(len(written.ids), 700, replace=False)
    unknown = np.array([1, 4999 * 4096, 5000 * 4096 + PER_TILE, 10**12], dtype=np.int64)
    ids = np.concatenate([written.ids[rows], unknown, written.ids[rows[:50]]])  # duplicates too
    for q in written.queries[:10]:
        got = ivf.search_ids(q, ids, 25)
        want = exact(written.vectors[rows], written.ids[rows], q, 25)
        assert [w for w, _ in got] == [w for w, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    assert len(ivf.search_ids(written.queries[0], ids, 10_000)) == 700
    assert ivf.search_ids(written.queries[0], unknown, 5) == []


# --------------------------------------------------------------------------- vectors by id


def test_vectors_of_finds_ids_in_every_shard_and_skips_missing_ones(written: Written, ivf: ShardSet) -> None:
    rows = np.concatenate([np.arange(0, len(written.ids), 97), [len(written.ids) - 1]])
    missing = np.array([-5, 0, 4999 * 4096, 5000 * 4096 + PER_TILE, 10**12], dtype=np.int64)
    found, vectors = ivf.vectors_of(np.concatenate([missing[:2], written.ids[rows], missing[2:]]))
    assert found.dtype == np.int64 and vectors.dtype == np.float32
    assert sorted(found.tolist()) == sorted(written.ids[rows].tolist())
    want = dict(zip(written.ids[rows].tolist(), written.vectors[rows].astype(np.float16), strict=True))
    for wid, vec in zip(found.tolist(), vectors, strict=True):
        np.testing.assert_array_equal(vec, want[wid].astype(np.float32))
    # Ids from each of the three shards are among them.
    assert all(np.isin(found, ids).any() for ids, _ in written.parts)
    for r in (0, 3300, len(written.ids) - 1):
        np.testing.assert_allclose(ivf.vector_of(int(written.ids[r])), written.vectors[r], atol=1e-3)
    for wid in missing.tolist():
        assert ivf.vector_of(wid) is None
    empty_ids, empty_vecs = ivf.vectors_of(missing)
    assert len(empty_ids) == 0 and empty_vecs.shape == (0, DIM)


# --------------------------------------------------------------------------- samples


def test_sample_ids_are_uniform_over_shards_of_unequal_size(written: Written, ivf: ShardSet) -> None:
    n = 2000
    sizes = np.array([len(ids) for ids, _ in written.parts])
    got = ivf.sample_ids(n, seed=3)
    assert len(got) == n == len(np.unique(got))
    assert np.isin(got, written.ids).all()
    share = np.array([np.isin(got, ids).sum() for ids, _ in written.parts]) / n
    np.testing.assert_allclose(share, sizes / sizes.sum(), atol=0.04)
    # Within a shard too: the sample is spread over its tiles, not its first rows.
    big = written.parts[0][0]
    in_big = got[np.isin(got, big)]
    assert np.unique(tile_of(in_big)).size > 0.8 * SHARD_TILES[0]

    assert np.array_equal(ivf.sample_ids(n, seed=3), got)  # deterministic per seed
    assert not np.array_equal(ivf.sample_ids(n, seed=4), got)
    picked = ivf.sample_ids(300, picked=[1, 2], seed=1)
    assert len(picked) == 300 and not np.isin(picked, big).any()
    small = written.parts[2][0]
    assert np.array_equal(ivf.sample_ids(10_000, picked=[2]), np.sort(small))  # fewer: all of them
    assert len(ivf.sample_ids(10**6)) == len(written.ids)
    assert len(ivf.sample_ids(0)) == 0 and len(ivf.sample_ids(10, picked=[])) == 0

    sample = ivf.sample_vectors()
    assert sample.dtype == np.float32 and 0 < len(sample) <= 2048
    assert sample is ivf.sample_vectors()  # a fixed sample


# --------------------------------------------------------------------------- pick


def test_pick_by_area_zoom_and_bounds(written: Written) -> None:
    metas = [
        replace(written.flat.shards[0], area_ids=[1], zooms=[16], envelope=[0.0, 0.0, 1.0, 1.0]),
        replace(written.flat.shards[1], area_ids=[1, 2], zooms=[14, 16], envelope=[1.0, 0.0, 2.0, 1.0]),
        replace(written.flat.shards[2], area_ids=[3], zooms=[18], envelope=[10.0, 10.0, 11.0, 11.0]),
    ]
    shardset = load_shardset(written.index_dir, replace(written.flat, shards=metas))
    assert shardset.pick() == [0, 1, 2]
    assert shardset.pick(area_id=1) == [0, 1]
    assert shardset.pick(area_id=2) == [1]
    assert shardset.pick(area_id=99) == []
    assert shardset.pick(zooms=[14]) == [1]
    assert shardset.pick(zooms=[16, 18]) == [0, 1, 2]
    assert shardset.pick(zooms=[12]) == []
    assert shardset.pick(bounds=(0.2, 0.2, 0.4, 0.4)) == [0]
    assert shardset.pick(bounds=(0.5, 0.5, 1.5, 0.6)) == [0, 1]
    assert shardset.pick(bounds=(-50.0, -50.0, 50.0, 50.0)) == [0, 1, 2]
    assert shardset.pick(bounds=(5.0, 5.0, 6.0, 6.0)) == []
    assert shardset.pick(area_id=1, zooms=[14], bounds=(0.0, 0.0, 5.0, 5.0)) == [1]
    assert shardset.pick(area_id=3, bounds=(0.0, 0.0, 1.0, 1.0)) == []
    assert shardset.exclusive([0], 1) and shardset.exclusive([2], 3)
    assert not shardset.exclusive([0, 1], 1)
    # Several areas (a project's): any of them.
    assert shardset.pick(area_ids=[2, 3]) == [1, 2]
    assert shardset.pick(area_ids=[1]) == shardset.pick(area_id=1)
    assert shardset.pick(area_ids=[99]) == []
    assert shardset.exclusive([1, 2], [1, 2, 3]) and not shardset.exclusive([1, 2], [2, 3])
    # A search restricted to the picked shards returns only their windows.
    got = shardset.search(written.queries[0], 50, picked=shardset.pick(area_id=3))
    assert np.isin([w for w, _ in got], written.parts[2][0]).all() and len(got) == 50


# --------------------------------------------------------------------------- reuse


def test_load_shardset_reuses_the_shards_of_unchanged_stems(written: Written, tmp_path: Path) -> None:
    first = load_shardset(written.index_dir, written.ivf)
    codec = first.codec
    new_ids = window_ids(9000, 10)
    new_vecs = clustered_unit_vectors(len(new_ids), DIM, seed=33)
    stem, kind = write_shard(written.index_dir, new_ids, new_vecs, codec)
    kept = [replace(written.ivf.shards[0], area_ids=[1, 7]), written.ivf.shards[2]]
    added = Shard(stem=stem, count=len(new_ids), kind=kind, area_ids=[9], tiles=10)
    second = replace(written.ivf, version=2, shards=[kept[0], added, kept[1]])
    reuse = {s.meta.stem: s for s in first.shards}
    loaded = load_shardset(written.index_dir, second, reuse)
    assert loaded.version == 2 and loaded.codec is codec
    assert loaded.shards[0].index is first.shards[0].index
    assert loaded.shards[2].index is first.shards[2].index
    assert loaded.shards[0].rows is first.shards[0].rows
    assert loaded.shards[1].index is not first.shards[1].index
    # The reused shard carries the new version's entry (its areas changed).
    assert loaded.pick(area_id=7) == [0]
    assert loaded.total() == len(written.parts[0][0]) + len(new_ids) + len(written.parts[2][0])
    q = new_vecs[4]
    assert loaded.search(q, 1)[0][0] == int(new_ids[4])
    assert first.vector_of(int(new_ids[4])) is None  # the first version is unchanged
    assert np.isin(loaded.sample_ids(10**6), written.parts[1][0]).sum() == 0

    # Another codec file: nothing can be shared (the codes were made with another quantiser).
    other = replace(
        second, codec=replace(second.codec, file=write_codec(written.index_dir, codec.index).file)
    )
    fresh = load_shardset(written.index_dir, other, {s.meta.stem: s for s in loaded.shards})
    assert fresh.codec is not codec
    assert all(a.index is not b.index for a, b in zip(fresh.shards, loaded.shards, strict=True))
    assert fresh.search(q, 1)[0][0] == int(new_ids[4])


def test_reused_shards_are_not_read_again(written: Written, tmp_path: Path) -> None:
    ids, vecs = written.parts[2]
    stem, kind = write_shard(written.index_dir, ids, vecs)
    meta = Shard(stem=stem, count=len(ids), kind=kind, area_ids=[3])
    v1 = Manifest(version=1, model_id=MODEL, dim=DIM, shards=[meta])
    first = load_shardset(written.index_dir, v1)
    for rel in meta.files():  # its files are gone: only the held copy can serve version 2
        (written.index_dir / rel).unlink()
    v2 = replace(v1, version=2)
    second = load_shardset(written.index_dir, v2, {s.meta.stem: s for s in first.shards})
    assert second.shards[0].index is first.shards[0].index
    assert second.search(vecs[0], 1)[0][0] == int(ids[0])
    with pytest.raises(FileNotFoundError):
        load_shardset(written.index_dir, v2)


def test_text_queries_start_from_the_codecs_text_tuning(written: Written) -> None:
    """A text effort resolves to the codec's text probe (times its multipliers); a codec tuned
    before text queries had a probe of their own scales its image probe instead."""
    untuned = replace(written.ivf.codec, nprobe=3, k_factor=5, text_nprobe=None, text_k_factor=None)
    tuned = replace(untuned, text_nprobe=9, text_k_factor=12)
    old = load_shardset(written.index_dir, replace(written.ivf, codec=untuned))
    new = load_shardset(written.index_dir, replace(written.ivf, codec=tuned))
    assert new.probe() == old.probe() == Probe(3, 5)
    assert new.probe(SearchEffort(text=True)) == Probe(9, 12)
    assert new.probe(SearchEffort(nprobe=2.0, rerank=0.5, text=True)) == Probe(18, 6)
    assert old.probe(SearchEffort(text=True)) == Probe(
        math.ceil(3 * UNTUNED_TEXT_NPROBE), round(5 * UNTUNED_TEXT_RERANK)
    )
    assert new.probe(Probe(2, 2)) == Probe(2, 2)  # a cursor's probe is kept as it is
    # Grown to twice the size the codec was tuned on: text queries re-rank twice as deep until
    # the next tuning; image-like queries keep their probe.
    half = len(written.ids) // 2
    grown = load_shardset(
        written.index_dir, replace(written.ivf, codec=replace(tuned, params={"tuned_on": half}))
    )
    assert grown.probe(SearchEffort(text=True)) == Probe(9, round(12 * len(written.ids) / half))
    assert grown.probe() == Probe(3, 5)
