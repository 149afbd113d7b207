"""The index's shared IVF-PQ codec: when to train it, training it, and tuning how it is searched.

While the whole index holds at most ``flat_max_vectors``, every shard is exact (flat). Past that,
one codec (``IVF{nlist},PQ{m}x4fsr``: a coarse k-means quantiser and 4-bit fast-scan product codes
of each vector's residual to its list centroid, 64 bytes per 512-d vector) is trained on a random
sample of the index and every shard is encoded with it; candidates are re-ranked exactly against
the float16 rows. How it is searched is tuned twice, through `ShardSet.search` (the code the
searchers run): for image-like queries on indexed vectors (their own match left out), and for
text queries on the latest real ones (`cliprs.query_sample`) or, until there are enough, on the
modality-gap model (`cliprs_index.text_queries`). Each tuning picks, among re-rank depths
(``k_factor``) of 1-8 times the setting, the fewest lists (``nprobe``) that reach the recall
target, and keeps the quickest pair as timed; both recall (of the top 10) and time are measured
searching as deep as a search's first round (``tune_depth``). The tuning runs again when the index has grown
``retune_growth`` times since it last ran, or when enough real text queries have come in since
the text probe was tuned on the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import faiss
import numpy as np

from cliprs.manifest import Codec
from cliprs_index.shardset import Probe, ShardSet
from cliprs_index.store import CodecPlan, plan_codec, train_codec
from cliprs_index.text_queries import gap_direction, modality_gap_queries
from cliprs_indexer.settings import IndexerSettings

log = logging.getLogger("cliprs.indexer.shards")

# What a codec's text probe was tuned with (its params' "text_tuned_with").
TUNED_ON_QUERIES = "recent text queries"
TUNED_ON_GAP_MODEL = "the modality-gap model"


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


@dataclass(frozen=True)
class Measured:
    """A probe and what it gave on the tuning queries."""

    probe: Probe
    recall: float
    median_ms: float


def tune(
    shardset: ShardSet,
    settings: IndexerSettings,
    text_sample: np.ndarray | None = None,
    k: int = 10,
    seed: int = 99,
) -> Codec:
    """The manifest's codec with its image and text probes tuned to the recall target on this
    shard set: image-like queries are indexed vectors (their own match left out), text queries
    the recent ones in ``text_sample`` when it holds at least ``text_tune_min_queries``, else
    the modality-gap model's."""
    codec = shardset.manifest.codec
    target = min(1.0, settings.recall_target + settings.recall_margin)
    started = time.perf_counter()
    qids = shardset.sample_ids(settings.tune_queries, seed=seed)
    _, images = shardset.vectors_of(qids)
    truth = _drop_own(exact_neighbours(shardset, images, k + 1), qids, k)
    depth = max(k, settings.tune_depth)
    image = fastest_probe(
        lambda probe: _measure(shardset, images, truth, probe, depth, drop=qids),
        codec.nlist,
        settings.k_factor,
        target,
    )
    texts, tuned_with = text_tuning_queries(shardset, settings, text_sample, seed)
    text_truth = exact_neighbours(shardset, texts, k)
    text = fastest_probe(
        lambda probe: _measure(shardset, texts, text_truth, probe, depth),
        codec.nlist,
        image.probe.k_factor,
        target,
    )
    for kind, m in (("image", image), ("text", text)):
        if m.recall < target:
            log.warning("%s recall target %.2f not reachable (%.3f at best)", kind, target, m.recall)
    params = {"tuned_on": shardset.total(), "text_tuned_with": tuned_with}
    tuned = with_probes(codec, image, text, {**params, "tune_s": round(time.perf_counter() - started, 1)})
    log.info(
        "tuned nprobe=%d k_factor=%d: recall@10 %.3f; text (%s) nprobe=%d k_factor=%d: recall@10 %.3f",
        *(tuned.nprobe, tuned.k_factor, image.recall, tuned_with),
        *(tuned.text_nprobe, tuned.text_k_factor, text.recall),
    )
    return tuned


def with_probes(codec: Codec, image: Measured, text: Measured, params: dict) -> Codec:
    """``codec`` searched with the tuned image and text probes (``params`` added to its own)."""
    return replace(
        codec,
        nprobe=image.probe.nprobe,
        k_factor=image.probe.k_factor,
        recall_at_10=round(image.recall, 4),
        text_nprobe=text.probe.nprobe,
        text_k_factor=text.probe.k_factor,
        text_recall_at_10=round(text.recall, 4),
        params={
            **codec.params,
            **params,
            "median_ms": round(image.median_ms, 2),
            "text_median_ms": round(text.median_ms, 2),
        },
    )


def text_tuning_queries(
    shardset: ShardSet, settings: IndexerSettings, sample: np.ndarray | None, seed: int
) -> tuple[np.ndarray, str]:
    """(the text queries the tuning measures, what they are): the sampled real ones when there
    are enough, else modality-gap queries made from random indexed vectors."""
    if sample is not None and len(sample) >= settings.text_tune_min_queries:
        return sample[: settings.tune_queries], TUNED_ON_QUERIES
    _, images = shardset.vectors_of(shardset.sample_ids(settings.tune_queries, seed=seed + 1))
    return modality_gap_queries(images, gap_direction(images, seed), seed), TUNED_ON_GAP_MODEL


def fastest_probe(measure: Callable[[Probe], Measured], nlist: int, k_factor: int, target: float) -> Measured:
    """The quickest probe that reaches ``target``: for re-rank depths of 1, 2, 4 and 8 times
    ``k_factor``, the fewest lists that reach it (deeper re-ranking needs no more lists, so each
    depth searches below the last one's), timed; else the best recall found."""
    best: Measured | None = None
    closest: Measured | None = None
    upper = nlist
    for depth in (k_factor, 2 * k_factor, 4 * k_factor, 8 * k_factor):
        # Re-ranking more of the same lists' candidates never loses recall: the last depth's
        # nprobe reaches the target at this depth too.
        found = smallest_nprobe(measure, depth, upper, target, upper_reaches=best is not None)
        if found.recall < target:
            closest = found if closest is None or found.recall > closest.recall else closest
            continue
        if best is not None and found.median_ms > best.median_ms * 1.5:
            break  # re-ranking more costs more than probing fewer lists saves
        best = found if best is None or found.median_ms < best.median_ms else best
        upper = found.probe.nprobe
        if upper == 1:
            break
    result = best or closest
    assert result is not None
    return result


def smallest_nprobe(
    measure: Callable[[Probe], Measured],
    k_factor: int,
    upper: int,
    target: float,
    upper_reaches: bool = False,
) -> Measured:
    """The fewest lists (at most ``upper``) that reach ``target`` at ``k_factor``: doubling
    finds a bracket (unless ``upper`` is known to reach it), bisection the smallest inside it;
    the last measured if none does."""
    lo, hi, got = 0, upper, None
    if not upper_reaches:
        hi, got = 1, measure(Probe(1, k_factor))
        while got.recall < target and hi < upper:
            lo, hi = hi, min(hi * 2, upper)
            got = measure(Probe(hi, k_factor))
        if got.recall < target:
            return got
    while hi - lo > 1:
        mid = (lo + hi) // 2
        at_mid = measure(Probe(mid, k_factor))
        if at_mid.recall >= target:
            hi, got = mid, at_mid
        else:
            lo = mid
    return got if got is not None else measure(Probe(hi, k_factor))


def _measure(
    shardset: ShardSet,
    queries: np.ndarray,
    truth: np.ndarray,
    probe: Probe,
    depth: int,
    drop: np.ndarray | None = None,
) -> Measured:
    """Recall@k of the top k of a search ``depth`` deep, for ``queries`` against ``truth``,
    through `ShardSet.search` (the searchers' code) at ``probe``, and the median time of one
    search; ``drop``: each query's own id, left out."""
    k = truth.shape[1]
    want = depth + 1 if drop is not None else depth
    found = np.full((len(queries), k + 1), -1, dtype=np.int64)
    times = np.empty(len(queries))
    for r, q in enumerate(queries):
        t = time.perf_counter()
        got = [wid for wid, _ in shardset.search(q, want, effort=probe)][: k + 1]
        times[r] = time.perf_counter() - t
        found[r, : len(got)] = got
    found = _drop_own(found, drop, k) if drop is not None else found[:, :k]
    return Measured(probe, recall_at_k(found, truth), float(np.median(times)) * 1000)


def _drop_own(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` ids other than the query's own (queries are indexed vectors)."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for r, (row, me) in enumerate(zip(ids, own, strict=True)):
        kept = row[(row != me) & (row >= 0)][:k]
        out[r, : len(kept)] = kept
    return out
