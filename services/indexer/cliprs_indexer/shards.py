"""The index's shared IVF-PQ codec: when to train it, training it, and tuning how it is searched.

While the whole index holds at most ``flat_max_vectors``, every shard is exact (flat). Past that,
one codec (``IVF{nlist},PQ{m}x4fsr``: a coarse k-means quantiser and 4-bit fast-scan product codes
of each vector's residual to its list centroid, 64 bytes per 512-d vector) is trained on a random
sample of the index and every shard is encoded with it; candidates are re-ranked exactly against
the float16 rows. ``nprobe`` is the smallest that reaches the recall target on indexed vectors
used as queries (their own match left out) through `ShardSet.search`, the code the searchers
run; ``k_factor`` (re-rank depth) doubles if even every list falls short. The tuning runs again
when the index has grown ``retune_growth`` times since it last ran.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import faiss
import numpy as np

from cliprs.manifest import Codec
from cliprs_index.shardset import ShardSet
from cliprs_index.store import CodecPlan, plan_codec, train_codec
from cliprs_indexer.settings import IndexerSettings

log = logging.getLogger("cliprs.indexer.shards")


def gpu_available(settings: IndexerSettings) -> bool:
    return settings.device == "auto" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def plan(n: int, dim: int, settings: IndexerSettings) -> CodecPlan:
    return plan_codec(n, dim, settings.lists_per_sqrt, settings.planned_vectors)


def train(sample: np.ndarray, n_total: int, settings: IndexerSettings) -> tuple[faiss.Index, CodecPlan]:
    """A codec trained on ``sample`` (random rows of an index of ``n_total`` vectors)."""
    p = plan(n_total, sample.shape[1], settings)
    started = time.perf_counter()
    codec = train_codec(sample, p, settings.kmeans_iterations, use_gpu=gpu_available(settings))
    log.info("trained %s on %d vectors in %.1f s", p.factory, len(sample), time.perf_counter() - started)
    return codec, p


def train_size(n_total: int, dim: int, settings: IndexerSettings) -> int:
    return min(n_total, max(settings.train_per_list * plan(n_total, dim, settings).nlist, 10_000))


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` that appears in the same row of ``found``."""
    k = truth.shape[1]
    return float(
        np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)])
    )


def exact_neighbours(shardset: ShardSet, queries: np.ndarray, k: int, rows: int = 65_536) -> np.ndarray:
    """Window ids of each query's exact top ``k`` over every shard, streamed from the float16 rows."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for shard in shardset.shards:
        for start in range(0, shard.count, rows):
            block = np.asarray(shard.rows[start : start + rows], dtype=np.float32)
            scores = queries @ block.T
            ids = np.broadcast_to(np.asarray(shard.ids[start : start + rows]), scores.shape)
            all_s = np.concatenate([best_s, scores], axis=1)
            all_i = np.concatenate([best_i, ids], axis=1)
            top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(all_s, top, axis=1)
            best_i = np.take_along_axis(all_i, top, axis=1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, axis=1)


def tune(shardset: ShardSet, settings: IndexerSettings, k: int = 10, seed: int = 99) -> Codec:
    """The manifest's codec with ``nprobe``/``k_factor`` tuned to the recall target on this
    shard set (its manifest's codec is changed in place while measuring)."""
    codec = shardset.manifest.codec
    target = min(1.0, settings.recall_target + settings.recall_margin)
    started = time.perf_counter()
    qids = shardset.sample_ids(settings.tune_queries, seed=seed)
    _, queries = shardset.vectors_of(qids)
    truth = _drop_own(exact_neighbours(shardset, queries, k + 1), qids, k)

    def measure(nprobe: int) -> float:
        codec.nprobe = nprobe
        found = np.full((len(queries), k + 1), -1, dtype=np.int64)
        for r, q in enumerate(queries):
            got = [wid for wid, _ in shardset.search(q, k + 1)]
            found[r, : len(got)] = got
        return recall_at_k(_drop_own(found, qids, k), truth)

    while True:
        # Doubling finds a bracket, bisection the smallest nprobe inside it.
        lo, hi, recall = 0, 1, measure(1)
        while recall < target and hi < codec.nlist:
            lo, hi = hi, min(hi * 2, codec.nlist)
            recall = measure(hi)
        if recall >= target:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if measure(mid) >= target:
                    hi = mid
                else:
                    lo = mid
            recall = measure(hi)
            break
        if codec.k_factor >= 256:
            log.warning("recall target %.2f not reachable (%.3f with every list probed)", target, recall)
            break
        codec.k_factor *= 2
    tuned = replace(
        codec,
        recall_at_10=round(recall, 4),
        params={
            **codec.params,
            "tuned_on": shardset.total(),
            "tune_s": round(time.perf_counter() - started, 1),
        },
    )
    log.info("tuned nprobe=%d k_factor=%d: recall@10 %.3f", tuned.nprobe, tuned.k_factor, recall)
    return tuned


def _drop_own(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` ids other than the query's own (queries are indexed vectors)."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for r, (row, me) in enumerate(zip(ids, own, strict=True)):
        kept = row[(row != me) & (row >= 0)][:k]
        out[r, : len(kept)] = kept
    return out
