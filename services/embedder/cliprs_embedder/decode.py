"""Decoding cached tiles in a pool of CPU processes, with each window's quality.

Decoding (JPEG, PNG, WebP) is the part of the pipeline that stays on the CPU. It runs in
separate processes, not threads: the worker's main thread drives the device and must not
compete for the GIL, and a pool of processes scales with the cores given to it. This module
imports only Pillow and NumPy, so the pool's processes start in a fraction of a second.

Beside the pixels, a decoded tile carries its windows' quality, computed here where the pixels
already are:

- **valid fraction**: the share of a window's pixels that hold imagery. Pixels are no-data where
  the tile is transparent (alpha below half: PNG/WebP alpha, a palette's transparent colour;
  sources such as GeoTIFFs with nodata, masks or alpha are rendered that way by the tiler) or,
  for sources that paint missing imagery with a colour, within a tolerance of that colour
  (`cliprs.settings.NoData`, configured per source).
- **cloud score**: the share of a window's valid pixels flagged cloud. When the tile has a mask
  sidecar (`cliprs.tilecache.mask_sidecar`: a STAC source with a quality mask, decoded by the
  tiler), its cloud pixels are the flagged ones and its no-data pixels are no-data too;
  otherwise `cliprs.clouds.cloud_mask` flags them from the RGB.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cliprs.cloud_masks import CLOUD, NO_DATA, read_mask_png
from cliprs.clouds import cloud_mask
from cliprs.settings import NoData
from cliprs.tilecache import mask_sidecar
from cliprs.windows import window_fractions, window_plan

OPAQUE = 128  # alpha at or above this is imagery: half-transparent edge pixels count as data


@dataclass
class Decoded:
    """A decoded tile: (H, W, 3) uint8 pixels and its windows' quality, or why there are none."""

    pixels: np.ndarray | None
    seconds: float
    error: str | None = None
    valid_fraction: np.ndarray | None = None  # (n,) per window of the boxes given
    cloud_score: np.ndarray | None = None  # (n,)


def decode_tile(
    path: Path, scales: tuple[float, ...], stride_ratio: float, nodata: NoData | None = None
) -> Decoded:
    """RGB pixels of a cached tile file and the quality of its windows (cut with ``scales`` and
    ``stride_ratio``, in `cliprs.windows.window_plan` order). The alpha channel is dropped from
    the pixels, as the tiler's window PNGs drop it, after it has marked the no-data."""
    start = time.perf_counter()
    try:
        rgb, valid = _read_pixels(path)
    except Exception as exc:  # a truncated or foreign file: reported per tile, never fatal
        return Decoded(None, time.perf_counter() - start, f"cannot decode cached tile: {type(exc).__name__}")
    if rgb.shape[0] != rgb.shape[1]:
        return Decoded(
            None, time.perf_counter() - start, f"tile is not square: {rgb.shape[1]}x{rgb.shape[0]}"
        )
    if nodata is not None:
        valid = _and(valid, ~_painted(rgb, nodata))
    clouds, mask_nodata = _source_mask(path, rgb.shape[:2])
    if clouds is None:
        clouds = cloud_mask(rgb)  # no mask from the source: the RGB detector
    else:
        valid = _and(valid, ~mask_nodata)
    boxes, _ = window_plan(rgb.shape[0], scales, stride_ratio)
    if valid is None:
        valid_fraction = np.ones(len(boxes))
        cloud_score = window_fractions(clouds, boxes)
    else:
        valid_fraction = window_fractions(valid, boxes)
        cloud_score = window_fractions(clouds, boxes, within=valid)
    return Decoded(rgb, time.perf_counter() - start, None, valid_fraction, cloud_score)


def _read_pixels(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 RGB of a tile file, and where it is opaque (None without alpha)."""
    with Image.open(path) as image:
        rgba = _has_alpha(image)
        pixels = np.asarray(image.convert("RGBA" if rgba else "RGB"), dtype=np.uint8)
    if not rgba:
        return pixels, None
    return np.ascontiguousarray(pixels[..., :3]), pixels[..., 3] >= OPAQUE


def _painted(rgb: np.ndarray, nodata: NoData) -> np.ndarray:
    """Where the source painted its no-data colour (within the tolerance)."""
    return np.all(np.abs(rgb.astype(np.int16) - nodata.colour) <= nodata.tolerance, axis=-1)


def _and(valid: np.ndarray | None, other: np.ndarray) -> np.ndarray:
    return other if valid is None else valid & other


def _source_mask(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(cloud, no data) from the tile's mask sidecar, or (None, None) when it has none (or an
    unreadable one, or one of another size: never expected, and the RGB detector is then the
    safe answer)."""
    sidecar = mask_sidecar(path)
    try:
        codes = read_mask_png(sidecar)
    except (OSError, ValueError):  # none (most sources), or unreadable: the RGB detector
        return None, None
    if codes.shape != tuple(shape):
        return None, None
    return codes == CLOUD, codes == NO_DATA


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or image.info.get("transparency") is not None


def decode_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` decoding processes.

    Started with forkserver, not fork: forking a process that holds torch's thread pools (and
    possibly a CUDA context) can deadlock the child."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context(method))


def default_decode_workers(device_type: str, cpus: int | None = None) -> int:
    """Decoding processes when none are configured: on a GPU host up to 4 (the CPU budget of one
    worker; about 1,500 JPEG tiles/s), on a CPU host 1 (the model needs the cores more)."""
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(1, min(4, cpus - 1)) if device_type == "cuda" else 1
