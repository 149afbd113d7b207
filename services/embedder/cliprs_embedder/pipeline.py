"""Batch embedding of tiles: cut into windows, embed, hand the vectors on, record the windows.

Writes are ordered so that a worker killed at any point loses nothing and duplicates nothing:
the vector chunk is written atomically first, then the window rows (upserts keyed by window id)
and the tile's status in one transaction. A redelivered task redoes a tile whose status is not
yet `embedded` and produces the same ids and the same chunk.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from PIL import Image
from sqlalchemy import text

from cliprs import jobs
from cliprs.db.engine import sync_engine
from cliprs.model import ClipEncoder
from cliprs.settings import CoreSettings
from cliprs.tilecache import find_tile
from cliprs.vectors import write_chunk
from cliprs.windows import Window, plan_windows, window_bbox, window_id
from cliprs_embedder.settings import EmbedderSettings

log = logging.getLogger("cliprs.embedder")


@dataclass
class TileWork:
    id: int
    source: str
    z: int
    x: int
    y: int
    size: int  # tile side in pixels
    windows: list[Window]
    crops: list[Image.Image]


def cut_tile(
    image: Image.Image, scales: list[float], stride_ratio: float
) -> tuple[list[Window], list[Image.Image]]:
    """The windows of a tile image and their pixel crops."""
    image = image.convert("RGB")
    windows = plan_windows(image.width, scales, stride_ratio)
    return windows, [image.crop((w.x0, w.y0, w.x1, w.y1)) for w in windows]


def _load_work(
    conn, core: CoreSettings, settings: EmbedderSettings, tile_ids: list[int]
) -> tuple[list[TileWork], list[tuple[int, str]]]:
    rows = conn.execute(
        text("SELECT id, source, z, x, y, status FROM tiles WHERE id = ANY(:ids)"), {"ids": tile_ids}
    ).all()
    work, failed = [], []
    for r in rows:
        if r.status != "fetched":  # embedded already (a redelivery) or never fetched
            continue
        path = find_tile(core.tile_cache_dir, r.source, r.z, r.x, r.y)
        if path is None:
            failed.append((r.id, "tile file missing from the cache"))
            continue
        try:
            with Image.open(path) as im:
                size = im.width
                windows, crops = cut_tile(im, settings.scales_for_zoom(r.z), settings.stride_ratio)
        except Exception as exc:
            failed.append((r.id, f"cannot decode cached tile: {type(exc).__name__}"))
            continue
        work.append(TileWork(r.id, r.source, r.z, r.x, r.y, size, windows, crops))
    return work, failed


def _window_rows(t: TileWork) -> list[dict]:
    rows = []
    for w in t.windows:
        b = window_bbox(t.z, t.x, t.y, t.size, w)
        rows.append(
            dict(
                id=window_id(t.id, w.index),
                tile_id=t.id,
                z=t.z,
                x0=w.x0,
                y0=w.y0,
                x1=w.x1,
                y1=w.y1,
                scale=w.scale,
                fp=b.wkt(),
                cx=(b.min_lon + b.max_lon) / 2,
                cy=(b.min_lat + b.max_lat) / 2,
            )
        )
    return rows


INSERT_WINDOWS = text(
    """
    INSERT INTO windows (id, tile_id, z, px_x0, px_y0, px_x1, px_y1, scale, footprint, center)
    VALUES (:id, :tile_id, :z, :x0, :y0, :x1, :y1, :scale, ST_GeomFromText(:fp, 4326),
            ST_SetSRID(ST_MakePoint(:cx, :cy), 4326))
    ON CONFLICT (id) DO NOTHING
    """
)


def embed_tiles(
    tile_ids: list[int],
    encoder: ClipEncoder,
    core: CoreSettings,
    settings: EmbedderSettings,
    batch_size: int = 64,
) -> dict:
    """Embed the windows of the given tiles; returns counts for the log."""
    engine = sync_engine(core.database_url)
    start = time.perf_counter()
    with engine.connect() as conn:
        work, failed = _load_work(conn, core, settings, tile_ids)
    if failed:
        with engine.begin() as conn:
            for tile_id, reason in failed:
                conn.execute(
                    text(
                        "UPDATE tiles SET status = 'failed', error = :e WHERE id = :id AND status <> 'embedded'"
                    ),
                    {"id": tile_id, "e": reason},
                )
    crops = [c for t in work for c in t.crops]
    vectors = encoder.embed_images(crops, batch_size=batch_size)
    offset = 0
    for t in work:
        n = len(t.windows)
        ids = [window_id(t.id, w.index) for w in t.windows]
        write_chunk(core.vectors_dir, t.id, ids, vectors[offset : offset + n], encoder.info.loaded)
        offset += n
        with engine.begin() as conn:
            conn.execute(INSERT_WINDOWS, _window_rows(t))
            conn.execute(
                text(
                    "UPDATE tiles SET status = 'embedded', embedded_at = now(), error = NULL WHERE id = :id"
                ),
                {"id": t.id},
            )
    elapsed = time.perf_counter() - start
    return {
        "tiles": len(work),
        "failed": len(failed),
        "windows": len(crops),
        "windows_per_s": round(len(crops) / elapsed, 1) if elapsed else None,
    }


def advance_job(job_id: int, core: CoreSettings) -> bool:
    """Refresh the job's counts; True when this call moved it to indexing (caller queues it)."""
    with sync_engine(core.database_url).begin() as conn:
        jobs.refresh_counts(conn, job_id)
        return jobs.claim_indexing(conn, job_id)
