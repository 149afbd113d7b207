"""Decoding cached tiles in a pool of CPU processes.

Decoding (JPEG, PNG, WebP) is the part of the pipeline that stays on the CPU. It runs in
separate processes, not threads: the worker's main thread drives the device and must not
compete for the GIL, and a pool of processes scales with the cores given to it. This module
imports only Pillow and NumPy, so the pool's processes start in a fraction of a second.
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


@dataclass
class Decoded:
    """A decoded tile: (H, W, 3) uint8 pixels, or why there are none."""

    pixels: np.ndarray | None
    seconds: float
    error: str | None = None


def decode_tile(path: Path) -> Decoded:
    """RGB pixels of a cached tile file (alpha dropped, as the tiler's window PNGs drop it)."""
    start = time.perf_counter()
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # a truncated or foreign file: reported per tile, never fatal
        return Decoded(None, time.perf_counter() - start, f"cannot decode cached tile: {type(exc).__name__}")
    if pixels.shape[0] != pixels.shape[1]:
        return Decoded(
            None, time.perf_counter() - start, f"tile is not square: {pixels.shape[1]}x{pixels.shape[0]}"
        )
    return Decoded(pixels, time.perf_counter() - start)


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
