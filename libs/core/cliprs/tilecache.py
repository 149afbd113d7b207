"""The on-disk tile cache, laid out as `{cache_dir}/{source}/{z}/{x}/{y}.{ext}`.

Written by the tiler, read by the embedder and by the tiler's map and window endpoints.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cliprs.fsutil import atomic_write_bytes

EXTENSIONS = ("png", "jpg", "webp")


def tile_path(cache_dir: Path, source: str, z: int, x: int, y: int, ext: str) -> Path:
    return Path(cache_dir) / source / str(z) / str(x) / f"{y}.{ext}"


def find_tile(cache_dir: Path, source: str, z: int, x: int, y: int) -> Path | None:
    """The cached file of a tile, whatever its format, or None."""
    for ext in EXTENSIONS:
        path = tile_path(cache_dir, source, z, x, y, ext)
        if path.exists():
            return path
    return None


def store_tile(cache_dir: Path, source: str, z: int, x: int, y: int, ext: str, data: bytes) -> str:
    """Write a tile atomically and return its content hash (sha256 hex)."""
    atomic_write_bytes(tile_path(cache_dir, source, z, x, y, ext), data)
    return hashlib.sha256(data).hexdigest()
