"""Shard files: writing them (indexer) and opening them (searchers), and the shared IVF-PQ codec.

A shard holds the windows of some tiles (each tile's windows in exactly one shard), as files
under fresh names that are never overwritten:

- ``{stem}.ids.npy`` the window ids of its rows, ascending (so an id's row is a binary search);
- ``{stem}.f16`` the rows' vectors as raw float16 (``count x dim``): memory-mapped by the searchers
  for the exact re-rank, vectors by id and samples, so they cost page cache, not process memory;
- ``{stem}.faiss`` (IVF-PQ shards only) the IVF lists with 4-bit fast-scan PQ codes (64 bytes per
  512-d vector) and the window ids, encoded with the index's one shared codec. Flat shards (small
  indexes) have no FAISS file: their exact index is built from the float16 rows when loaded.

The codec (``IVF{nlist},PQ{m}x4fsr`` over inner product, residuals to the list centroids) is
trained once on a sample of the whole index and shared by every compressed shard, so one coarse
quantisation per query serves every shard, and adding an area only encodes its vectors.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from cliprs.fsutil import atomic_path
from cliprs.manifest import Shard
from cliprs.windows import WINDOWS_PER_TILE_LIMIT

KIND_FLAT = "flat"
KIND_IVFPQ = "ivfpq"
# window id >> TILE_SHIFT is its tile's id (window id = tile id * 4096 + index).
TILE_SHIFT = int(math.log2(WINDOWS_PER_TILE_LIMIT))
# Flat shards are loaded as float32 this many rows at a time (bounded transient memory).
_LOAD_ROWS = 65_536


def tile_of(ids: np.ndarray) -> np.ndarray:
    """The tile id of each window id."""
    return np.asarray(ids, dtype=np.int64) >> TILE_SHIFT


def new_stem(prefix: str = "s") -> str:
    return f"shards/{prefix}-{uuid.uuid4().hex[:16]}"


# ---------------------------------------------------------------------------- the codec


@dataclass
class CodecPlan:
    nlist: int
    pq: int  # sub-quantisers of 4 bits each

    @property
    def factory(self) -> str:
        return f"IVF{self.nlist},PQ{self.pq}x4fsr"


def plan_codec(
    n: int, dim: int, lists_per_sqrt: float, planned_vectors: int, min_per_list: int = 32
) -> CodecPlan:
    """IVF-PQ parameters for an index of ``n`` vectors that is expected to grow to
    ``planned_vectors``: ``nlist ~ lists_per_sqrt * sqrt(size)`` as a power of two, but no more
    lists than ``n / min_per_list`` (k-means needs points to place its centroids); one 4-bit
    sub-quantiser per 4 dimensions (64 bytes per 512-d vector: with 8 dimensions per
    sub-quantiser the approximate ranking needed twice the re-rank depth for the same recall)."""
    size = max(n, planned_vectors)
    nlist = 2 ** round(math.log2(max(16.0, lists_per_sqrt * math.sqrt(size))))
    nlist = int(max(4, min(nlist, 65_536, n // min_per_list)))
    pq = max(2, dim // 4 - (dim // 4) % 2)
    while dim % pq:
        pq -= 2
    return CodecPlan(nlist=nlist, pq=pq)


def train_codec(
    sample: np.ndarray, plan: CodecPlan, iterations: int = 12, seed: int = 1234, use_gpu: bool = False
) -> faiss.Index:
    """The trained, empty IVF-PQ index every compressed shard is a copy of."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    d = sample.shape[1]
    codec = faiss.index_factory(d, plan.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(codec)
    ivf.cp.niter = iterations
    ivf.cp.seed = seed
    if use_gpu:
        # k-means dominates training; its assignment step runs on every visible GPU.
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(d))
    codec.train(sample)
    if use_gpu:
        ivf.clustering_index = None
    return codec


@dataclass(eq=False)
class LoadedCodec:
    """The trained codec and the file it came from (shards encoded with it share its quantiser)."""

    file: str
    index: faiss.Index


def write_codec(index_dir: Path, codec: faiss.Index) -> LoadedCodec:
    rel = new_stem("codec") + ".faiss"
    with atomic_path(Path(index_dir) / rel) as tmp:
        faiss.write_index(codec, str(tmp))
    return LoadedCodec(rel, codec)


def read_codec(index_dir: Path, rel: str) -> LoadedCodec:
    return LoadedCodec(rel, faiss.read_index(str(Path(index_dir) / rel)))


# ---------------------------------------------------------------------------- writing a shard


def write_shard(
    index_dir: Path,
    ids: np.ndarray,
    vectors: np.ndarray,
    codec: LoadedCodec | None = None,
    encoded: faiss.Index | None = None,
) -> tuple[str, str]:
    """Write a shard of these windows (any order; stored by ascending id) and return its
    (stem, kind). With a ``codec`` the vectors are encoded into IVF-PQ lists (or ``encoded``,
    an already filled copy of the codec holding exactly these ids, is written as is)."""
    index_dir = Path(index_dir)
    order = np.argsort(ids, kind="stable")
    ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64)[order])
    rows = np.ascontiguousarray(np.asarray(vectors)[order], dtype=np.float16)
    stem = new_stem()
    with atomic_path(index_dir / f"{stem}.ids.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, ids)
    with atomic_path(index_dir / f"{stem}.f16") as tmp:
        rows.astype("<f2", copy=False).tofile(tmp)
    if codec is None and encoded is None:
        return stem, KIND_FLAT
    if encoded is None:
        encoded = encode(codec.index, ids, rows)
    with atomic_path(index_dir / f"{stem}.faiss") as tmp:
        faiss.write_index(encoded, str(tmp))
    return stem, KIND_IVFPQ


def encode(codec: faiss.Index, ids: np.ndarray, vectors: np.ndarray, batch: int = 65_536) -> faiss.Index:
    """A copy of the trained codec holding ``vectors`` under their window ids."""
    index = faiss.clone_index(codec)
    for start in range(0, len(ids), batch):
        index.add_with_ids(
            np.ascontiguousarray(vectors[start : start + batch], dtype=np.float32),
            np.ascontiguousarray(ids[start : start + batch], dtype=np.int64),
        )
    return index


# ---------------------------------------------------------------------------- opening a shard


@dataclass
class ShardData:
    """A loaded shard: its ids and float16 rows memory-mapped, its FAISS index in memory."""

    meta: Shard
    ids: np.ndarray  # int64, ascending (memory-mapped)
    rows: np.ndarray  # float16 (count, dim) (memory-mapped)
    index: faiss.Index | None  # IndexFlatIP over the rows (flat) or the IVF-PQ lists (ivfpq)
    tiles: np.ndarray  # its tile ids, ascending
    codec: LoadedCodec | None = None  # holds the coarse quantiser the index uses

    @property
    def count(self) -> int:
        return len(self.ids)

    def positions(self, window_ids: np.ndarray) -> np.ndarray:
        """Row of each window id, -1 where the shard does not hold it."""
        ids = np.asarray(self.ids)  # a plain view of the mapping: numpy's fast paths, no copy
        pos = np.searchsorted(ids, window_ids)
        pos = np.minimum(pos, max(self.count - 1, 0))
        found = self.count > 0 and ids[pos] == window_ids
        return np.where(found, pos, -1)

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """The float32 vectors of the rows at ``positions`` (ascending reads best): gathered from
        a plain view of the mapping and widened by FAISS's fp16 decoder (4,032 random rows of a
        3M-window index, one thread, ids located included: 12.3 ms against 18.3 ms for numpy's
        gather from the memmap and its float16 cast)."""
        block = np.ascontiguousarray(np.take(np.asarray(self.rows), positions, axis=0))
        return decode_f16(block)


_FP16: dict[int, faiss.ScalarQuantizer] = {}


def decode_f16(block: np.ndarray) -> np.ndarray:
    """float16 rows (n, dim), C-contiguous, as float32."""
    n, dim = block.shape
    out = np.empty((n, dim), dtype=np.float32)
    if n:
        sq = _FP16.get(dim)
        if sq is None:
            sq = _FP16.setdefault(dim, faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16))
        sq.decode_c(faiss.swig_ptr(block.view(np.uint8)), faiss.swig_ptr(out), n)
    return out


def open_shard(
    index_dir: Path, meta: Shard, dim: int, codec: LoadedCodec | None = None, searchable: bool = True
) -> ShardData:
    """Open a shard's files (raises FileNotFoundError when one is gone); ``codec``: the one its
    codes were made with (compressed shards). ``searchable=False`` opens only the ids and rows
    (``index`` is None): what rewriting or merging a shard needs, without reading its codes."""
    index_dir = Path(index_dir)
    ids = np.load(index_dir / f"{meta.stem}.ids.npy", mmap_mode="r")
    rows = (
        np.memmap(index_dir / f"{meta.stem}.f16", dtype="<f2", mode="r", shape=(len(ids), dim))
        if len(ids)
        else np.zeros((0, dim), dtype=np.float16)
    )
    index = None
    if not searchable:
        pass
    elif meta.kind == KIND_IVFPQ:
        # The coarse quantiser inside (a copy of the codec's, nlist x dim floats) is mapped from
        # the file, not read into process memory: searches use the codec's copy (one per process)
        # and each shard's is touched only for the residuals of the lists a query probes.
        index = faiss.read_index(str(index_dir / f"{meta.stem}.faiss"), faiss.IO_FLAG_MMAP_IFC)
    else:
        index = faiss.IndexFlatIP(dim)
        for start in range(0, len(ids), _LOAD_ROWS):
            index.add(np.ascontiguousarray(rows[start : start + _LOAD_ROWS], dtype=np.float32))
    tiles = np.unique(tile_of(ids))
    return ShardData(meta=meta, ids=ids, rows=rows, index=index, tiles=tiles, codec=codec)
