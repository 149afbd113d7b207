"""Vector chunks: how the embedder hands vectors to the indexer.

One chunk per tile (`{vectors_dir}/{tile_id // 1000}/{tile_id}.npz`) holding the window ids and
their unit vectors as float16 (half the disk of float32; cosines change by about 1e-3, far below
what separates results), written atomically, so the indexer never reads a half-written chunk and a
re-embedded tile simply replaces its chunk with identical content. `chunk_files` lists the chunks
on disk (the indexer's garbage collection removes those whose tile no longer exists).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cliprs.fsutil import atomic_write_bytes


def chunk_path(vectors_dir: Path, tile_id: int) -> Path:
    return Path(vectors_dir) / str(tile_id // 1000) / f"{tile_id}.npz"


def chunk_files(vectors_dir: Path) -> Iterator[tuple[int, Path]]:
    """Every chunk on disk as (tile id, path), one folder at a time (never a list of them all);
    other files (e.g. a writer's temporary file) are not listed."""
    root = Path(vectors_dir)
    if not root.is_dir():
        return
    with os.scandir(root) as folders:
        for folder in folders:
            if not folder.name.isdigit() or not folder.is_dir(follow_symlinks=False):
                continue
            with os.scandir(folder.path) as entries:
                for entry in entries:
                    stem, dot, ext = entry.name.partition(".")
                    if dot and ext == "npz" and stem.isdigit():
                        yield int(stem), Path(entry.path)


def write_chunk(vectors_dir: Path, tile_id: int, ids: np.ndarray, vectors: np.ndarray, model_id: str) -> Path:
    """Store a tile's window ids (int64) and vectors (float16, n x dim) atomically."""
    if len(ids) != len(vectors):
        raise ValueError("ids and vectors differ in length")
    buf = io.BytesIO()
    np.savez(
        buf,
        ids=np.asarray(ids, dtype=np.int64),
        vectors=np.asarray(vectors, dtype=np.float16),
        model_id=np.array(model_id),
    )
    path = chunk_path(vectors_dir, tile_id)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_chunk(vectors_dir: Path, tile_id: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(ids, float16 vectors, model_id) of a tile, or None when it has not been embedded."""
    path = chunk_path(vectors_dir, tile_id)
    if not path.exists():
        return None
    with np.load(path) as data:
        return data["ids"], data["vectors"], str(data["model_id"])
