"""The shared IVF-PQ codec: planning it, training it, tuning nprobe to the recall target, and the
exact ground truth the tuning measures against."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from cliprs.manifest import Codec, Manifest, Shard
from cliprs_index.shardset import Probe, SearchEffort, ShardSet, load_shardset
from cliprs_index.store import write_codec, write_shard
from cliprs_index.text_queries import gap_direction, modality_gap_queries
from cliprs_indexer import shards
from cliprs_indexer.settings import IndexerSettings
from cliprs_indexer.shards import (
    TUNED_ON_GAP_MODEL,
    TUNED_ON_QUERIES,
    Measured,
    exact_neighbours,
    fastest_probe,
    plan,
    recall_at_k,
    train,
    train_size,
    tune,
)
from cliprs_testing.synthetic import clustered_unit_vectors, split_queries

SETTINGS = IndexerSettings(device="cpu", planned_vectors=0, tune_queries=256)


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """30,000 indexed CLIP-like vectors (ids like window ids) and 300 held-out queries."""
    data, queries = split_queries(clustered_unit_vectors(30_300, 512, seed=21), 300, seed=22)
    ids = (np.arange(len(data), dtype=np.int64) // 16 + 1000) * 4096 + np.arange(len(data)) % 16
    return ids, data, queries


def exact_top(data: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatIP(data.shape[1])
    index.add(np.ascontiguousarray(data, dtype=np.float32))
    return ids[index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]]


def shardset_of(index_dir: Path, ids: np.ndarray, data: np.ndarray, cuts: list[int], codec=None) -> ShardSet:
    """Shards of ``ids`` cut at ``cuts`` (rows, at tile boundaries: a tile is in one shard),
    IVF-PQ with ``codec`` (a trained index) or flat."""
    assert all(c % 16 == 0 for c in cuts)
    loaded = write_codec(index_dir, codec) if codec is not None else None
    metas = []
    for lo, hi in zip([0, *cuts], [*cuts, len(ids)], strict=True):
        stem, kind = write_shard(index_dir, ids[lo:hi], data[lo:hi], loaded)
        metas.append(Shard(stem=stem, count=hi - lo, kind=kind, area_ids=[1]))
    manifest_codec = None
    if codec is not None:
        ivf = faiss.extract_index_ivf(codec)
        manifest_codec = Codec(
            file=loaded.file,
            nlist=ivf.nlist,
            pq=plan(len(ids), data.shape[1], SETTINGS).pq,
            nprobe=ivf.nlist,
            k_factor=SETTINGS.k_factor,
            trained_on=len(ids),
        )
    return load_shardset(index_dir, Manifest(1, "m", data.shape[1], metas, manifest_codec))


@pytest.fixture(scope="module")
def ivfpq(clustered, tmp_path_factory: pytest.TempPathFactory) -> ShardSet:
    """Three IVF-PQ shards sharing one codec trained on a sample, nprobe tuned."""
    ids, data, _ = clustered
    n = len(ids)
    rows = np.sort(np.random.default_rng(3).choice(n, train_size(n, 512, SETTINGS), replace=False))
    codec, _ = train(data[rows], n, SETTINGS)
    shardset = shardset_of(tmp_path_factory.mktemp("ivf"), ids, data, [12_000, 20_992], codec)
    shardset.manifest.codec = tune(shardset, SETTINGS)
    return shardset


def test_synthetic_vectors_look_like_clip_features(clustered) -> None:
    _, data, queries = clustered
    assert np.allclose(np.linalg.norm(data, axis=1), 1.0, atol=1e-5)
    rows = np.random.default_rng(0).choice(len(data), 1500, replace=False)
    sample = data[rows] @ data[rows].T
    mean_pairwise = sample[np.triu_indices(1500, 1)].mean()
    assert 0.3 < mean_pairwise < 0.7  # a cone, not noise (uniform noise: ~0)
    nearest = np.sort(queries[:100] @ data.T, axis=1)[:, -1]
    assert nearest.mean() > 0.8  # near-duplicate windows exist


def test_plan_scales_with_the_index() -> None:
    s = SETTINGS
    small, large = plan(300_000, 512, s), plan(3_000_000, 512, s)
    for p, n in ((small, 300_000), (large, 3_000_000)):
        assert p.nlist & (p.nlist - 1) == 0  # a power of two
        assert n // p.nlist >= 32  # enough points per k-means centroid
        assert 512 % p.pq == 0 and p.pq % 2 == 0  # 4-bit sub-quantisers in pairs
        assert p.factory.startswith(f"IVF{p.nlist},PQ{p.pq}x4fs")  # 4-bit fast-scan codes
        assert train_size(n, 512, s) <= n
    assert large.nlist > small.nlist
    assert plan(5_000, 512, s).nlist * 32 <= 5_000
    assert train_size(5_000, 512, s) == 5_000  # a small index trains on all of it
    # Lists are planned for the size the index is expected to reach, not the size at training.
    ahead = plan(300_000, 512, s.model_copy(update={"planned_vectors": 3_000_000}))
    assert ahead.nlist > small.nlist and 300_000 // ahead.nlist >= 32
    assert not shards.gpu_available(s)  # device "cpu": never the GPU


def test_flat_shards_are_exact(clustered, tmp_path: Path) -> None:
    ids, data, queries = clustered
    shardset = shardset_of(tmp_path, ids[:2000], data[:2000], [704])
    assert [s.meta.kind for s in shardset.shards] == ["flat", "flat"]
    found = np.array([[w for w, _ in shardset.search(q, 10)] for q in queries[:20]])
    assert (found == exact_top(data[:2000], ids[:2000], queries[:20], 10)).all()


def test_exact_neighbours_and_recall_at_k(clustered, tmp_path: Path) -> None:
    ids, data, queries = clustered
    shardset = shardset_of(tmp_path, ids[:3000], data[:3000], [992, 1792])
    got = exact_neighbours(shardset, queries[:30], 10, rows=700)  # several blocks per shard
    rounded = data[:3000].astype(np.float16).astype(np.float32)  # what the rows hold
    truth = exact_top(rounded, ids[:3000], queries[:30], 10)
    assert recall_at_k(got, truth) == 1.0
    assert (got[:, 0] == truth[:, 0]).all()
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 1], [4, 9, 9]])) == pytest.approx(
        (1.0 + 1 / 3) / 2
    )
    assert recall_at_k(np.array([[-1, -1]]), np.array([[1, 2]])) == 0.0


def test_ivfpq_reaches_the_recall_target_on_held_out_queries(clustered, ivfpq: ShardSet) -> None:
    ids, data, queries = clustered
    codec = ivfpq.manifest.codec
    assert [s.meta.kind for s in ivfpq.shards] == ["ivfpq"] * 3
    assert codec.recall_at_10 >= SETTINGS.recall_target
    assert 1 <= codec.nprobe < codec.nlist  # tuning found a cheaper setting than every list
    assert codec.params["tuned_on"] == len(ids)
    # As a search's first round searches: tune_depth deep, the top 10 of it.
    found = np.array([[w for w, _ in ivfpq.search(q, SETTINGS.tune_depth)][:10] for q in queries])
    recall = recall_at_k(found, exact_top(data, ids, queries, 10))
    print(f"IVF-PQ recall@10 on held-out queries: {recall:.3f} (nprobe {codec.nprobe}/{codec.nlist})")
    assert recall >= SETTINGS.recall_target


def test_ivfpq_ids_are_window_ids_and_scores_are_exact(clustered, ivfpq: ShardSet) -> None:
    ids, data, _ = clustered
    rows = np.arange(0, len(ids), 600)
    firsts = [ivfpq.search(data[r], 1)[0] for r in rows]
    assert np.mean([wid == ids[r] for (wid, _), r in zip(firsts, rows, strict=True)]) > 0.95
    # Candidates are re-ranked against the float16 rows: a vector scores ~1 against itself.
    assert min(score for _, score in firsts) > 0.999
    assert float(ivfpq.vector_of(int(ids[123])) @ data[123]) > 0.999


def test_search_ids_searches_only_the_given_ids(clustered, ivfpq: ShardSet) -> None:
    ids, data, queries = clustered
    allowed = ids[::97]
    rows = np.isin(ids, allowed)
    truth = exact_top(data[rows].astype(np.float16).astype(np.float32), ids[rows], queries[:30], 10)
    found = np.array([[w for w, _ in ivfpq.search_ids(q, allowed, 10)] for q in queries[:30]])
    assert np.isin(found, allowed).all()
    assert recall_at_k(found, truth) == 1.0  # exact, however scattered the ids


def test_text_queries_reach_the_target_with_their_own_probe(clustered, ivfpq: ShardSet) -> None:
    """Text-like queries across another gap than the tuning's (the codec was tuned on the
    modality-gap model: no sample yet) reach about the target with the text probe, and lose
    many neighbours with the image probe."""
    _, _, queries = clustered
    codec = ivfpq.manifest.codec
    assert codec.params["text_tuned_with"] == TUNED_ON_GAP_MODEL
    assert codec.text_recall_at_10 >= SETTINGS.recall_target
    texts = modality_gap_queries(queries, gap_direction(queries, 1234), 1235)
    truth = exact_neighbours(ivfpq, texts, 10)

    def recall(effort: SearchEffort) -> float:
        return recall_at_k(
            np.array([[w for w, _ in ivfpq.search(q, 10, effort=effort)] for q in texts]), truth
        )

    text, image = recall(SearchEffort(text=True)), recall(SearchEffort())
    print(f"held-out text-like recall@10: {text:.3f} with the text probe, {image:.3f} with the image probe")
    assert text >= SETTINGS.recall_target - 0.03
    assert image < text - 0.05


def test_the_text_probe_is_tuned_on_recent_queries_once_there_are_enough(clustered, ivfpq: ShardSet) -> None:
    _, _, queries = clustered
    settings = SETTINGS.model_copy(update={"tune_queries": 96, "text_tune_min_queries": 80})
    sample = modality_gap_queries(queries, gap_direction(queries, 77), 78)
    codec = ivfpq.manifest.codec
    try:
        on_queries = tune(ivfpq, settings, sample[:90])
        on_model = tune(ivfpq, settings, sample[:79])
    finally:
        ivfpq.manifest.codec = codec
    assert on_queries.params["text_tuned_with"] == TUNED_ON_QUERIES
    assert on_model.params["text_tuned_with"] == TUNED_ON_GAP_MODEL
    for tuned in (on_queries, on_model):
        assert tuned.text_recall_at_10 >= settings.recall_target
        assert tuned.text_k_factor >= tuned.k_factor  # text starts where the images ended


def test_fastest_probe_keeps_the_quickest_pair_that_reaches_the_target() -> None:
    """On a model of the trade-off (recall grows with lists and depth; time with both), the
    tuning finds the quickest (nprobe, k_factor) that reaches the target, as a search of every
    pair would, and the best recall when none does."""
    calls: list[Probe] = []

    def measure(probe: Probe) -> Measured:
        calls.append(probe)
        recall = 1 - 0.5 / (1 + 0.05 * probe.nprobe * probe.k_factor**0.5)
        return Measured(probe, recall, 0.2 * probe.nprobe + 0.01 * probe.k_factor)

    for target in (0.8, 0.9, 0.95):
        calls.clear()
        got = fastest_probe(measure, 1024, 8, target)
        every = [measure(Probe(n, d)) for d in (8, 16, 32, 64) for n in range(1, 1025)]
        best = min((m for m in every if m.recall >= target), key=lambda m: m.median_ms)
        assert got.recall >= target
        assert got.median_ms == pytest.approx(best.median_ms)
    calls.clear()
    out_of_reach = fastest_probe(measure, 64, 8, 0.999)
    assert out_of_reach.recall < 0.999 and out_of_reach.probe == Probe(64, 64)
    assert len(calls) < 40  # a bracket and a bisection per depth, not a grid
