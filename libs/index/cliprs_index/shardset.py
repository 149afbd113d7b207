"""One index version as a searchable whole: the fan-out over its shards, the exact re-rank,
vectors by id and unbiased samples.

- **Search**: flat shards are searched exactly. Compressed shards share one codec, so the coarse
  quantiser runs once per query and each picked shard scans only its probed lists
  (`search_preassigned`, native code, no per-shard quantiser work); the shards' approximate
  candidates are merged, and the best ``k_factor`` per result are re-ranked exactly against
  their float16 rows. When the probed lists hold fewer candidates than asked (a large ``k``
  over few vectors), ``nprobe`` doubles until they do or every list is probed: a short answer
  always means the shards hold no more.
- **Vectors by id**: a dense tile -> shard table (4 bytes per tile) and a binary search in the
  shard's ascending ids: independent of the number of shards or areas.
- **Samples**: uniform over the picked shards' rows, drawn on demand (a few microseconds).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from cliprs.manifest import Manifest
from cliprs_index.store import KIND_IVFPQ, LoadedCodec, ShardData, open_shard, read_codec, tile_of

# Rows scored per step of an exact scan (bounded transient float32 memory: 16k x 512 x 4 = 32 MB).
_SCAN_ROWS = 16_384
CONFIDENCE_SAMPLE = 2048
# At most this many candidates are re-ranked exactly beyond k itself.
MAX_RERANK = 8192


# A codec tuned before text queries had their own tuning: text queries scale its image tuning
# by these (bench-search measured text-like recall@10 0.90 -> 0.95 at 400k windows with them).
UNTUNED_TEXT_NPROBE, UNTUNED_TEXT_RERANK = 4.0, 2.0


@dataclass(frozen=True)
class SearchEffort:
    """Which of the codec's tunings a search starts from, and multipliers of its ``nprobe`` and
    ``k_factor``. Image-like queries use the tuning measured with indexed vectors as queries;
    text queries (``text``) the one measured with text queries (CLIP text embeddings sit in
    their own cone, away from the images', and need more lists probed and more candidates
    re-ranked for the same recall)."""

    nprobe: float = 1.0
    rerank: float = 1.0
    text: bool = False


@dataclass(frozen=True)
class Probe:
    """An effort resolved against one codec: the lists probed and the candidates re-ranked per
    result. Pagination cursors carry it, so every page of a query searches alike even when the
    settings or the codec's tuning change in between."""

    nprobe: int
    k_factor: int


class ShardSet:
    """The shards of one manifest, loaded (``shards`` in the manifest's order)."""

    def __init__(self, manifest: Manifest, shards: list[ShardData], codec: LoadedCodec | None = None):
        if len(shards) != len(manifest.shards):
            raise ValueError("one loaded shard per manifest entry")
        self.manifest = manifest
        self.shards = shards
        self.codec = codec
        self.quantizer = faiss.extract_index_ivf(codec.index).quantizer if codec is not None else None
        self._ivf = {
            i: faiss.extract_index_ivf(s.index) for i, s in enumerate(shards) if s.meta.kind == KIND_IVFPQ
        }
        if self._ivf and self.quantizer is None:
            raise ValueError("compressed shards need the manifest's codec")
        top = max((int(s.tiles[-1]) for s in shards if len(s.tiles)), default=-1)
        self._tile_shard = np.full(top + 1, -1, dtype=np.int32)
        for i, s in enumerate(shards):
            self._tile_shard[s.tiles] = i
        self._counts = np.array([s.count for s in shards], dtype=np.int64)
        self._sample_vectors: np.ndarray | None = None

    # ---------------------------------------------------------------- what it holds

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    def total(self, picked: Sequence[int] | None = None) -> int:
        """Vectors in the shards at ``picked`` (default: all)."""
        return int(self._counts.sum() if picked is None else self._counts[list(picked)].sum())

    def pick(
        self,
        area_id: int | None = None,
        zooms: Sequence[int] | None = None,
        bounds: tuple[float, float, float, float] | None = None,
        area_ids: Collection[int] | None = None,
    ) -> list[int]:
        """Positions of the shards that can hold a window of ``area_id`` (or of one of
        ``area_ids``), at one of ``zooms``, touching ``bounds`` (west, south, east, north); the
        others cannot match the filter."""
        wanted = set(zooms or ())
        areas = {area_id} if area_id is not None else set(area_ids) if area_ids is not None else None
        out = []
        for i, s in enumerate(self.shards):
            m = s.meta
            if areas is not None and areas.isdisjoint(m.area_ids):
                continue
            if wanted and m.zooms and not wanted.intersection(m.zooms):
                continue
            if bounds is not None and m.envelope and not _touch(bounds, m.envelope):
                continue
            out.append(i)
        return out

    def exclusive(self, picked: Sequence[int], area_id: int | Collection[int]) -> bool:
        """True when every picked shard holds windows of ``area_id`` (or of those areas) only."""
        areas = {area_id} if isinstance(area_id, int) else set(area_id)
        return all(set(self.shards[i].meta.area_ids) <= areas for i in picked)

    # ---------------------------------------------------------------- search

    def probe(self, effort: SearchEffort | Probe | None = None) -> Probe | None:
        """``effort`` resolved against the codec (None without one: flat shards are exact)."""
        codec = self.manifest.codec
        if codec is None:
            return None
        if isinstance(effort, Probe):
            return effort
        effort = effort or SearchEffort()
        nprobe, k_factor, scale_n, scale_k = codec.nprobe, codec.k_factor, effort.nprobe, effort.rerank
        if effort.text and codec.text_nprobe is not None and codec.text_k_factor is not None:
            nprobe, k_factor = codec.text_nprobe, codec.text_k_factor
        elif effort.text:
            scale_n, scale_k = scale_n * UNTUNED_TEXT_NPROBE, scale_k * UNTUNED_TEXT_RERANK
        if effort.text:
            # Text queries' neighbours sit close together; as the index grows past the size it
            # was tuned on, more candidates crowd the same lists, and the re-rank depth must grow
            # with them until the next tuning (bench-search, 3M windows tuned at 756k: text
            # recall@10 0.92 as tuned, 0.96 at 2x the depth, 0.98 at 4x; more lists: +0.004).
            # Image-like queries held their recall (0.956) unscaled.
            tuned_on = codec.params.get("tuned_on") or codec.trained_on
            scale_k *= max(1.0, self.total() / tuned_on) if tuned_on else 1.0
        return Probe(
            nprobe=max(1, min(math.ceil(nprobe * scale_n), codec.nlist)),
            k_factor=max(1, round(k_factor * scale_k)),
        )

    def search(
        self,
        query: np.ndarray,
        k: int,
        picked: Sequence[int] | None = None,
        effort: SearchEffort | Probe | None = None,
    ) -> list[tuple[int, float]]:
        """Best ``k`` (window id, cosine) over the picked shards, best first (equal scores by
        ascending id), ids unique; ``effort`` scales the tuned nprobe and re-rank depth (e.g. for
        text queries) or, as a `Probe`, fixes them."""
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, -1))
        picked = range(len(self.shards)) if picked is None else picked
        picked = [i for i in picked if self.shards[i].count]
        if k <= 0 or not picked:
            return []
        flat = [i for i in picked if i not in self._ivf]
        ivf = [i for i in picked if i in self._ivf]
        ids_parts, score_parts = [], []
        for i in flat:
            shard = self.shards[i]
            scores, pos = shard.index.search(q, min(k, shard.count))
            keep = pos[0] >= 0
            ids_parts.append(np.asarray(shard.ids[pos[0][keep]]))
            score_parts.append(scores[0][keep])
        if ivf:
            found, vectors = self.vectors_of(self._ivf_candidates(q, k, ivf, self.probe(effort)))
            ids_parts.append(found)
            score_parts.append(vectors @ q[0])
        ids = np.concatenate(ids_parts)
        scores = np.concatenate(score_parts)
        return _top(ids, scores, k)

    def _ivf_candidates(self, q: np.ndarray, k: int, picked: list[int], probe: Probe) -> np.ndarray:
        """Window ids of the best approximate candidates for an exact re-rank of ``k``."""
        nlist = self.manifest.codec.nlist
        # k_factor candidates per result, as tuned for k = 10, up to MAX_RERANK (large k: the
        # candidate lists a filter over-fetches, where each rank matters less).
        want = min(max(k, min(max(k, 10) * probe.k_factor, MAX_RERANK)), self.total(picked))
        nprobe = max(1, min(probe.nprobe, nlist))
        while True:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            coarse_d, coarse_i = self.quantizer.search(q, nprobe)
            ids_parts, dist_parts = [], []
            for i in picked:
                n = min(want, self.shards[i].count)
                dist = np.empty((1, n), dtype=np.float32)
                labels = np.empty((1, n), dtype=np.int64)
                self._ivf[i].search_preassigned_c(
                    1,
                    faiss.swig_ptr(q),
                    n,
                    faiss.swig_ptr(coarse_i),
                    faiss.swig_ptr(coarse_d),
                    faiss.swig_ptr(dist),
                    faiss.swig_ptr(labels),
                    False,
                    params,
                    None,
                )
                keep = labels[0] >= 0
                ids_parts.append(labels[0][keep])
                dist_parts.append(dist[0][keep])
            ids = np.concatenate(ids_parts)
            if len(ids) >= want or nprobe >= nlist:
                dist = np.concatenate(dist_parts)
                if len(ids) > want:
                    ids = ids[np.argpartition(-dist, want - 1)[:want]]
                return ids
            nprobe = min(nlist, nprobe * 2)

    def search_ids(self, query: np.ndarray, ids: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Exact: the best ``k`` among ``ids`` (those not indexed are ignored)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        best_ids = np.empty(0, dtype=np.int64)
        best_scores = np.empty(0, dtype=np.float32)
        for shard, _, pos in self._locate(ids):
            for start in range(0, len(pos), _SCAN_ROWS):
                part = pos[start : start + _SCAN_ROWS]
                scores = shard.vectors_at(part) @ q
                best_ids = np.concatenate([best_ids, np.asarray(shard.ids[part])])
                best_scores = np.concatenate([best_scores, scores])
                if len(best_ids) > k:
                    keep = np.argpartition(-best_scores, k - 1)[:k]
                    best_ids, best_scores = best_ids[keep], best_scores[keep]
        return _top(best_ids, best_scores, k)

    # ---------------------------------------------------------------- vectors by id

    def _locate(self, ids: np.ndarray):
        """(shard, the ids it holds, their rows ascending) for each shard holding some of ``ids``."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        tiles = tile_of(ids)
        inside = (tiles >= 0) & (tiles < len(self._tile_shard))
        where = np.full(len(ids), -1, dtype=np.int32)
        where[inside] = self._tile_shard[tiles[inside]]
        for s in np.unique(where[where >= 0]).tolist():
            shard = self.shards[s]
            mine = ids[where == s]
            pos = shard.positions(mine)
            keep = pos >= 0
            mine, pos = mine[keep], pos[keep]
            order = np.argsort(pos)  # ascending rows: sequential reads of the mapped file
            yield shard, mine[order], pos[order]

    def vectors_of(self, window_ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found, their float32 vectors) for the ids that are indexed."""
        found, vectors = [], []
        for shard, ids, pos in self._locate(np.asarray(window_ids, dtype=np.int64)):
            found.append(ids)
            vectors.append(shard.vectors_at(pos))
        if not found:
            return np.empty(0, dtype=np.int64), np.empty((0, self.dim), dtype=np.float32)
        return np.concatenate(found), np.concatenate(vectors)

    def vector_of(self, window_id: int) -> np.ndarray | None:
        found, vectors = self.vectors_of([int(window_id)])
        return vectors[0] if len(found) else None

    # ---------------------------------------------------------------- samples

    def sample_ids(self, n: int, picked: Sequence[int] | None = None, seed: int = 0) -> np.ndarray:
        """Up to ``n`` uniformly random indexed window ids of the picked shards (all of them
        when they hold fewer), ascending."""
        picked = list(range(len(self.shards)) if picked is None else picked)
        counts = self._counts[picked] if picked else np.zeros(0, dtype=np.int64)
        total = int(counts.sum())
        if total == 0 or n <= 0:
            return np.empty(0, dtype=np.int64)
        if total <= n:
            return np.sort(np.concatenate([np.asarray(self.shards[i].ids) for i in picked]))
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(total, n, replace=False))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        which = np.searchsorted(offsets, rows, side="right") - 1
        out = np.empty(n, dtype=np.int64)
        for j in np.unique(which).tolist():
            sel = which == j
            out[sel] = self.shards[picked[j]].ids[rows[sel] - offsets[j]]
        return np.sort(out)

    def sample_vectors(self) -> np.ndarray:
        """A fixed random sample of indexed vectors (what query confidence is measured against)."""
        if self._sample_vectors is None:
            self._sample_vectors = self.vectors_of(self.sample_ids(CONFIDENCE_SAMPLE, seed=0))[1]
        return self._sample_vectors


def _touch(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _top(ids: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    if len(ids) > k:
        keep = np.argpartition(-scores, k - 1)[:k]
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))  # equal scores by ascending id: one order on every call
    return list(zip(ids[order].tolist(), scores[order].tolist(), strict=True))


def load_shardset(
    index_dir: Path,
    manifest: Manifest,
    reuse: Mapping[str, ShardData] | None = None,
    cls: type[ShardSet] = ShardSet,
) -> ShardSet:
    """Open a version's shards; shards (and the codec) of ``reuse`` (keyed by stem; e.g. the live
    version's) that this version names too are shared, not read again: a swap loads only what
    changed."""
    reuse = reuse or {}
    codec = None
    if manifest.codec is not None:
        held = next((s.codec for s in reuse.values() if s.codec is not None), None)
        same = held is not None and held.file == manifest.codec.file
        codec = held if same else read_codec(index_dir, manifest.codec.file)
    shards = []
    for meta in manifest.shards:
        old = reuse.get(meta.stem)
        if old is not None and old.codec is codec:
            shards.append(ShardData(meta, old.ids, old.rows, old.index, old.tiles, codec))
        else:
            shards.append(open_shard(index_dir, meta, manifest.dim, codec))
    return cls(manifest, shards, codec)
