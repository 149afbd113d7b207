"""The on-disk tile cache, laid out as `{cache_dir}/{source}/{z}/{x}/{y}.{ext}`.

Written by the tiler, read by the embedder and by the tiler's map and window endpoints. A tile
whose source has a quality mask (a STAC source with ``mask=``) has a sidecar beside it,
`{y}.mask.png` (`cliprs.cloud_masks`: 0 clear, 1 cloud, 255 no data, the tile's pixel grid).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cliprs.fsutil import atomic_write_bytes

EXTENSIONS = ("png", "jpg", "webp")
MASK_SUFFIX = ".mask.png"


def tile_path(cache_dir: Path, source: str, z: int, x: int, y: int, ext: str) -> Path:
    return Path(cache_dir) / source / str(z) / str(x) / f"{y}.{ext}"


def mask_sidecar(tile_file: Path) -> Path:
    """The mask sidecar of a cached tile file: ``…/{y}.png`` -> ``…/{y}.mask.png``."""
    return tile_file.with_name(tile_file.name.split(".", 1)[0] + MASK_SUFFIX)


def find_tile(cache_dir: Path, source: str, z: int, x: int, y: int) -> Path | None:
    """The cached file of a tile, whatever its format, or None."""
    for ext in EXTENSIONS:
        path = tile_path(cache_dir, source, z, x, y, ext)
        if path.exists():
            return path
    return None


def store_tile(
    cache_dir: Path, source: str, z: int, x: int, y: int, ext: str, data: bytes, mask: bytes | None = None
) -> str:
    """Write a tile atomically and return its content hash (sha256 hex).

    Its mask sidecar is written (or a stale one removed) before the tile, so a reader that finds
    the tile finds the mask that goes with it."""
    path = tile_path(cache_dir, source, z, x, y, ext)
    if mask is not None:
        atomic_write_bytes(mask_sidecar(path), mask)
    else:
        mask_sidecar(path).unlink(missing_ok=True)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()
