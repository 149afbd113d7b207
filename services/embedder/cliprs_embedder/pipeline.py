"""Batch embedding of tiles: cut into windows, embed, hand the vectors on, record the windows.

Tiles are decoded, cut and resized on the encoder's CPU threads a few tiles ahead of the model,
and their windows share forward passes across tile boundaries (`ClipEncoder.embed_groups`).

Writes are ordered so that a worker killed at any point loses nothing and duplicates nothing:
per tile, the vector chunk is written atomically first, then the window rows (keyed by window
id, ``ON CONFLICT DO NOTHING``) and the tile's status in one transaction. A redelivered task
skips tiles already `embedded`, redoes the others and produces the same ids and the same chunk.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import Engine

from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings
from cliprs.tilecache import find_tile
from cliprs.vectors import write_chunk
from cliprs.windows import Window, plan_windows, window_bbox, window_id
from cliprs_embedder import repository
from cliprs_embedder.settings import EmbedderSettings
from cliprs_model import ClipEncoder
from cliprs_model.preprocess import ImageTransform, prefetch_map

log = logging.getLogger("cliprs.embedder")

WRITER_THREADS = 4
MAX_PENDING_WRITES = 64  # tiles embedded but not yet stored (bounds memory if storage stalls)


@dataclass
class TileWork:
    id: int
    source: str
    z: int
    x: int
    y: int
    size: int = 0  # tile side in pixels
    windows: list[Window] = field(default_factory=list)
    pixels: np.ndarray | None = None  # (n, H, W, 3) uint8 model-sized windows
    error: str | None = None


def cut_tile(
    image: Image.Image, scales: list[float], stride_ratio: float
) -> tuple[list[Window], list[Image.Image]]:
    """The windows of a tile image and their pixel crops."""
    # convert("RGB") like the tiler's /windows/{id}.png, so a crop sent back as a query is the
    # same pixels the batch path embedded.
    image = image.convert("RGB")
    windows = plan_windows(image.width, scales, stride_ratio)
    return windows, [image.crop((w.x0, w.y0, w.x1, w.y1)) for w in windows]


def prepare_tile(
    row: Any, core: CoreSettings, settings: EmbedderSettings, transform: ImageTransform
) -> TileWork:
    """Read a cached tile, cut it into windows and resize them (runs on a preprocessing thread)."""
    t = TileWork(row.id, row.source, row.z, row.x, row.y)
    path = find_tile(core.tile_cache_dir, row.source, row.z, row.x, row.y)
    if path is None:
        t.error = "tile file missing from the cache"
        return t
    try:
        with Image.open(path) as im:
            t.size = im.width
            t.windows, crops = cut_tile(im, settings.scales_for_zoom(row.z), settings.stride_ratio)
    except Exception as exc:
        t.error = f"cannot decode cached tile: {type(exc).__name__}"
        return t
    t.pixels = transform.prepare(crops)
    return t


def window_rows(t: TileWork) -> dict[str, list]:
    """A tile's window rows as column arrays (`repository.WINDOW_COLUMNS`)."""
    cols: dict[str, list] = {k: [] for k in repository.WINDOW_COLUMNS}
    for w in t.windows:
        b = window_bbox(t.z, t.x, t.y, t.size, w)
        for k, v in (
            ("ids", window_id(t.id, w.index)),
            ("x0", w.x0),
            ("y0", w.y0),
            ("x1", w.x1),
            ("y1", w.y1),
            ("scale", w.scale),
            ("fp", b.wkt()),
            ("cx", (b.min_lon + b.max_lon) / 2),
            ("cy", (b.min_lat + b.max_lat) / 2),
        ):
            cols[k].append(v)
    return cols


def store_tile(engine: Engine, core: CoreSettings, t: TileWork, vectors: np.ndarray, model_id: str) -> None:
    """Hand a tile's vectors on and record its windows: chunk first, then rows and status."""
    ids = [window_id(t.id, w.index) for w in t.windows]
    write_chunk(core.vectors_dir, t.id, ids, vectors, model_id)
    repository.record_embedded_tile(engine, t.id, t.z, window_rows(t))


def embed_tiles(
    tile_ids: list[int],
    encoder: ClipEncoder,
    core: CoreSettings,
    settings: EmbedderSettings,
    batch_size: int | None = None,
) -> dict:
    """Embed the windows of the given tiles; returns counts for the log."""
    engine = sync_engine(core.database_url)
    start = time.perf_counter()
    rows = repository.fetched_tiles(engine, tile_ids)
    failed: list[TileWork] = []

    def ready_tiles():
        prepare = partial(prepare_tile, core=core, settings=settings, transform=encoder.transform)
        for t in prefetch_map(encoder.executor, prepare, rows, ahead=2 * encoder.preprocess_workers):
            if t.error:
                failed.append(t)
            else:
                yield t, t.pixels

    tiles = windows = 0
    pending: deque[Future[int]] = deque()

    def store(t: TileWork, vectors: np.ndarray) -> int:
        store_tile(engine, core, t, vectors, encoder.info.loaded)
        return len(vectors)

    # Chunk fsyncs and database round trips run on writer threads, so the model does not wait
    # for them (on a GPU they would otherwise cost as much as the forward passes).
    with ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="embed-write") as writer:
        for t, vectors in encoder.embed_groups(ready_tiles(), batch_size):
            t.pixels = None  # free the tile's pixels while the rest runs
            pending.append(writer.submit(store, t, vectors))
            while pending and (len(pending) > MAX_PENDING_WRITES or pending[0].done()):
                windows += pending.popleft().result()  # a failed write fails the task here
                tiles += 1
        for f in pending:
            windows += f.result()
            tiles += 1
    repository.mark_failed(engine, {t.id: t.error for t in failed if t.error})
    elapsed = time.perf_counter() - start
    return {
        "tiles": tiles,
        "failed": len(failed),
        "windows": windows,
        "windows_per_s": round(windows / elapsed, 1) if elapsed else None,
    }


def advance_job(job_id: int, core: CoreSettings) -> bool:
    """Refresh the job's counts; True when this call moved it to indexing (caller queues it)."""
    return repository.advance_job(sync_engine(core.database_url), job_id)
