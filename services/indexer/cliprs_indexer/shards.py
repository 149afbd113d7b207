"""Building one FAISS shard: exact while small, IVF-PQ with a re-rank (tuned to a recall target)
when large. Every shard is wrapped in `IndexIDMap2`, so its ids are window ids and any window's
vector can be reconstructed (find similar, heat maps).

IVF-PQ layout: ``IDMap2,IVF{nlist},PQ{m}x4fsr,Refine(SQ8)``: a coarse k-means quantiser, 4-bit
fast-scan product codes of each vector's residual to its list centroid (SIMD scanning, 32 bytes
per vector for 512-d; without the residual, clustered data loses a quarter of its recall), and
8-bit scalar-quantised copies of the vectors that re-rank the best ``k * k_factor`` candidates
almost exactly (fp16 copies measured no better). ``nprobe``
is the smallest that reaches the recall target on held-out queries through `search_shard`, the
same code the searchers run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import faiss
import numpy as np

from cliprs.manifest import Shard, search_shard
from cliprs_indexer.settings import IndexerSettings

log = logging.getLogger("cliprs.indexer.shards")


@dataclass
class IvfPqPlan:
    nlist: int
    pq: int  # sub-quantisers (4 bits each)
    train_size: int
    k_factor: int
    kmeans_iterations: int = 12

    @property
    def factory(self) -> str:
        return f"IDMap2,IVF{self.nlist},PQ{self.pq}x4fsr,Refine(SQ8)"


def plan_ivfpq(n: int, dim: int, settings: IndexerSettings) -> IvfPqPlan:
    """IVF-PQ parameters for a shard of ``n`` vectors of ``dim`` dimensions."""
    nlist = 2 ** round(math.log2(max(16.0, settings.lists_per_sqrt * math.sqrt(n))))
    nlist = max(16, min(nlist, 65536, n // 39))  # k-means needs ~39 points per centroid
    # 16 dimensions per byte of code (two 4-bit sub-quantisers of 8 dims each); fast-scan wants
    # an even number of sub-quantisers.
    pq = max(2, dim // 8 - (dim // 8) % 2)
    while dim % pq:
        pq -= 2
    return IvfPqPlan(
        nlist=nlist,
        pq=pq,
        train_size=min(n, max(settings.train_per_list * nlist, 10_000)),
        k_factor=settings.k_factor,
        kmeans_iterations=settings.kmeans_iterations,
    )


def gpu_available(settings: IndexerSettings) -> bool:
    return settings.device == "auto" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_flat(ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    """Exact inner product over unit vectors (cosine similarity)."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, np.int64))
    return index


def build_ivfpq(
    ids: np.ndarray, vectors: np.ndarray, plan: IvfPqPlan, use_gpu: bool = False, seed: int = 1234
) -> tuple[faiss.Index, np.ndarray]:
    """Train and fill an IVF-PQ shard (k-means on GPU when ``use_gpu``); also returns the rows
    it trained on, which the tuning then leaves out of its queries."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d = vectors.shape[1]
    index = faiss.index_factory(d, plan.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = plan.kmeans_iterations
    ivf.cp.seed = seed
    if use_gpu:
        # k-means dominates the build; its assignment step runs on every visible GPU.
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(d))
    rng = np.random.default_rng(seed)
    train_rows = np.sort(rng.choice(len(vectors), plan.train_size, replace=False))
    index.train(vectors[train_rows])
    if use_gpu:
        ivf.clustering_index = None
    index.add_with_ids(vectors, np.ascontiguousarray(ids, np.int64))
    return index, train_rows


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` that appears in the same row of ``found``."""
    k = truth.shape[1]
    return float(
        np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)])
    )


def _leave_one_out(ids: np.ndarray, qids: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` ids other than the query's own (queries are indexed vectors)."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for r, (row, own) in enumerate(zip(ids, qids, strict=True)):
        kept = row[(row != own) & (row >= 0)][:k]
        out[r, : len(kept)] = kept
    return out


def tune(
    index: faiss.Index,
    shard: Shard,
    ids: np.ndarray,
    vectors: np.ndarray,
    target: float,
    queries: int = 256,
    k: int = 10,
    seed: int = 99,
    exclude: np.ndarray | None = None,
) -> dict:
    """Smallest ``nprobe`` (raising ``k_factor`` if even all lists fall short) whose recall@k
    against exact search reaches ``target`` on held-out indexed vectors (self-matches dropped).

    ``exclude`` are row positions not to use as queries (the k-means training sample).
    """
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.arange(len(ids)), exclude) if exclude is not None else np.arange(len(ids))
    if len(pool) < queries:
        pool = np.arange(len(ids))
    rows = np.sort(rng.choice(pool, min(queries, len(pool)), replace=False))
    q, qids = np.ascontiguousarray(vectors[rows]), ids[rows]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, truth_pos = exact.search(q, k + 1)
    truth = _leave_one_out(ids[truth_pos], qids, k)
    del exact
    params = shard.params
    nlist = int(params["nlist"])

    def measure(nprobe: int) -> float:
        params["nprobe"] = nprobe
        _, found = search_shard(index, shard, q, k + 1)
        return recall_at_k(_leave_one_out(found, qids, k), truth)

    while True:
        # Doubling finds a bracket, bisection the smallest nprobe inside it.
        lo, hi, recall = 0, 1, measure(1)
        while recall < target and hi < nlist:
            lo, hi = hi, min(hi * 2, nlist)
            recall = measure(hi)
        if recall >= target:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if measure(mid) >= target:
                    hi = mid
                else:
                    lo = mid
            params["nprobe"] = hi
            params["recall_at_10"] = round(measure(hi), 4)
            return params
        if params["k_factor"] >= 256:
            log.warning("recall target %.2f not reachable (%.3f at nprobe=nlist)", target, recall)
            params["nprobe"], params["recall_at_10"] = nlist, round(recall, 4)
            return params
        params["k_factor"] *= 2


@dataclass
class BuiltShard:
    index: faiss.Index
    kind: str
    params: dict


def build_index(ids: np.ndarray, vectors: np.ndarray, settings: IndexerSettings) -> BuiltShard:
    """The right shard for this many vectors: flat when small, tuned IVF-PQ when large."""
    n = len(ids)
    if n <= settings.flat_max_vectors:
        return BuiltShard(build_flat(ids, vectors), "flat", {})
    plan = plan_ivfpq(n, vectors.shape[1], settings)
    use_gpu = gpu_available(settings)
    started = time.perf_counter()
    index, train_rows = build_ivfpq(ids, vectors, plan, use_gpu=use_gpu)
    built = time.perf_counter()
    params = {
        "nlist": plan.nlist,
        "pq": plan.pq,
        "k_factor": plan.k_factor,
        "nprobe": plan.nlist,
        "train_size": plan.train_size,
        "device": "gpu" if use_gpu else "cpu",
    }
    shard = Shard(area_id=0, file="", count=n, kind="ivfpq", params=params)
    target = min(1.0, settings.recall_target + settings.recall_margin)
    tune(index, shard, ids, vectors, target, settings.tune_queries, exclude=train_rows)
    # Store the tuned values in the index itself too, so a plain `index.search` (any faiss tool
    # reading the file) searches the way the searchers do.
    faiss.extract_index_ivf(index).nprobe = params["nprobe"]
    faiss.downcast_index(index.index).k_factor = float(params["k_factor"])
    params["build_s"] = round(built - started, 1)
    params["tune_s"] = round(time.perf_counter() - built, 1)
    log.info("IVF-PQ shard of %d vectors: %s", n, params)
    return BuiltShard(index, "ivfpq", params)
