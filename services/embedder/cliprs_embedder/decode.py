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
- **cloud score**: the share of a window's valid pixels that `cliprs.clouds.cloud_mask` flags.
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

from cliprs.clouds import cloud_mask
from cliprs.settings import NoData
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
        with Image.open(path) as image:
            rgba = _has_alpha(image)
            pixels = np.asarray(image.convert("RGBA" if rgba else "RGB"), dtype=np.uint8)
    except Exception as exc:  # a truncated or foreign file: reported per tile, never fatal
        return Decoded(None, time.perf_counter() - start, f"cannot decode cached tile: {type(exc).__name__}")
    if pixels.shape[0] != pixels.shape[1]:
        return Decoded(
            None, time.perf_counter() - start, f"tile is not square: {pixels.shape[1]}x{pixels.shape[0]}"
        )
    valid = pixels[..., 3] >= OPAQUE if rgba else None
    rgb = np.ascontiguousarray(pixels[..., :3]) if rgba else pixels
    if nodata is not None:
        painted = np.all(np.abs(rgb.astype(np.int16) - nodata.colour) <= nodata.tolerance, axis=-1)
        valid = ~painted if valid is None else valid & ~painted
    boxes, _ = window_plan(rgb.shape[0], scales, stride_ratio)
    clouds = cloud_mask(rgb)
    if valid is None:
        valid_fraction = np.ones(len(boxes))
        cloud_score = window_fractions(clouds, boxes)
    else:
        valid_fraction = window_fractions(valid, boxes)
        cloud_score = window_fractions(clouds, boxes, within=valid)
    return Decoded(rgb, time.perf_counter() - start, None, valid_fraction, cloud_score)


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
