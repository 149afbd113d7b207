"""The batch pipeline against the real database: chunks, rows and statuses, and idempotent reruns."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings
from cliprs.tilecache import tile_path
from cliprs.vectors import read_chunk
from cliprs.windows import window_id
from cliprs_embedder.pipeline import cut_tile, embed_tiles
from cliprs_embedder.settings import EmbedderSettings
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_testing.factories import make_area, make_tile
from cliprs_tiler.render import render_tile, scene_stretch
from cliprs_tools.demo import demo_band_paths

TILES = [(14, 4749, 6339), (14, 4750, 6339), (13, 2374, 3169)]
SETTINGS = EmbedderSettings(window_scales=[1.0, 0.5], stride_ratio=0.25)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path):
    return load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu", batch_size=16))


@pytest.fixture(scope="module")
def tile_images() -> dict[tuple[int, int, int], Image.Image]:
    bands = demo_band_paths()
    stretch = scene_stretch(bands)
    images = {t: render_tile(bands, *t, stretch=stretch) for t in TILES}
    assert all(im is not None for im in images.values())
    return images


def seed_tiles(core: CoreSettings, images: dict, missing: int = 0) -> list[int]:
    """An area whose tiles are fetched and cached (plus ``missing`` fetched but not cached)."""
    source = f"src-{uuid.uuid4().hex[:8]}"
    keys = list(images) + [(14, 4751 + i, 6339) for i in range(missing)]
    ids = []
    with sync_engine(core.database_url).begin() as conn:
        area_id = make_area(conn, name="t", bbox=(-75.7, 37.6, -75.6, 37.7), zooms=(13, 14), source=source)
        for z, x, y in keys:
            ids.append(make_tile(conn, area_id, z, x, y, source=source, status="fetched", link=False))
            if (z, x, y) in images:
                path = tile_path(core.tile_cache_dir, source, z, x, y, "png")
                path.parent.mkdir(parents=True, exist_ok=True)
                images[(z, x, y)].save(path)
    return ids


def window_ids_in_db(core: CoreSettings, tile_ids: list[int]) -> list[int]:
    with sync_engine(core.database_url).connect() as conn:
        return (
            conn.execute(text("SELECT id FROM windows WHERE tile_id = ANY(:t) ORDER BY id"), {"t": tile_ids})
            .scalars()
            .all()
        )


def statuses(core: CoreSettings, tile_ids: list[int]) -> list[str]:
    with sync_engine(core.database_url).connect() as conn:
        rows = conn.execute(text("SELECT id, status FROM tiles WHERE id = ANY(:t)"), {"t": tile_ids}).all()
    return [dict(rows)[t] for t in tile_ids]


def test_embed_tiles_writes_chunks_rows_and_statuses(core_settings, encoder, tile_images) -> None:
    tile_ids = seed_tiles(core_settings, tile_images, missing=1)
    stats = embed_tiles(tile_ids, encoder, core_settings, SETTINGS)
    assert (stats["tiles"], stats["failed"], stats["windows"]) == (3, 1, 3 * 26)
    assert statuses(core_settings, tile_ids) == ["embedded"] * 3 + ["failed"]
    expected = [window_id(t, i) for t in tile_ids[:3] for i in range(26)]
    assert window_ids_in_db(core_settings, tile_ids) == expected
    for tile_id, key in zip(tile_ids, TILES, strict=False):
        ids, vectors, model_id = read_chunk(core_settings.vectors_dir, tile_id)
        assert ids.tolist() == [window_id(tile_id, i) for i in range(26)]
        assert vectors.shape == (26, 512) and vectors.dtype == np.float16  # chunks hold float16
        vectors = vectors.astype(np.float32)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=2e-3)
        assert model_id == encoder.info.loaded
        # Windows batched across tiles get the vectors of their own pixels.
        _, crops = cut_tile(tile_images[key], SETTINGS.window_scales, SETTINGS.stride_ratio)
        assert np.allclose(vectors, encoder.embed_images(crops), atol=2e-3)
    with sync_engine(core_settings.database_url).connect() as conn:
        error = conn.execute(text("SELECT error FROM tiles WHERE id = :t"), {"t": tile_ids[3]}).scalar_one()
    assert "missing" in error


def test_footprint_rows_match_the_windows(core_settings, encoder, tile_images) -> None:
    tile_ids = seed_tiles(core_settings, {TILES[0]: tile_images[TILES[0]]})
    embed_tiles(tile_ids, encoder, core_settings, SETTINGS)
    with sync_engine(core_settings.database_url).connect() as conn:
        rows = conn.execute(
            text(
                "SELECT w.px_x0, w.px_x1, w.scale, ST_Area(w.footprint) / ST_Area(t.polygon) AS share, "
                "ST_Covers(ST_Buffer(t.polygon, 1e-9), w.footprint) AS inside, "
                "ST_Equals(w.center, ST_Centroid(w.footprint)) AS centred "
                "FROM windows w JOIN tiles t ON t.id = w.tile_id WHERE t.id = :t ORDER BY w.id"
            ),
            {"t": tile_ids[0]},
        ).all()
    assert len(rows) == 26 and all(r.inside for r in rows)
    assert (rows[0].px_x0, rows[0].px_x1, rows[0].scale) == (0, 256, 1.0)
    assert rows[0].share == pytest.approx(1, abs=1e-9)
    # A half window covers a quarter of the tile (Mercator distorts latitudes only slightly
    # within one z14 tile).
    assert all(r.share == pytest.approx(0.25, rel=1e-3) for r in rows[1:])


def test_reruns_and_redeliveries_change_nothing(core_settings, encoder, tile_images) -> None:
    tile_ids = seed_tiles(core_settings, {k: tile_images[k] for k in TILES[:2]})
    embed_tiles(tile_ids, encoder, core_settings, SETTINGS)
    before = window_ids_in_db(core_settings, tile_ids)
    first = read_chunk(core_settings.vectors_dir, tile_ids[0])

    # A redelivered task whose tiles are already embedded does nothing.
    assert embed_tiles(tile_ids, encoder, core_settings, SETTINGS)["tiles"] == 0

    # Tile 0: a worker killed between the chunk and the transaction (rows and status are one
    # step, so that is the worst case). Tile 1: a second worker redoing a tile whose rows the
    # first one wrote (a redelivery racing the original). Neither loses or duplicates a window.
    with sync_engine(core_settings.database_url).begin() as conn:
        conn.execute(text("DELETE FROM windows WHERE tile_id = :t"), {"t": tile_ids[0]})
        conn.execute(text("UPDATE tiles SET status = 'fetched' WHERE id = ANY(:t)"), {"t": tile_ids})
    stats = embed_tiles(tile_ids, encoder, core_settings, SETTINGS)
    assert stats["tiles"] == 2
    assert window_ids_in_db(core_settings, tile_ids) == before
    again = read_chunk(core_settings.vectors_dir, tile_ids[0])
    assert again[0].tolist() == first[0].tolist()
    assert np.allclose(again[1], first[1], atol=1e-6)
    assert statuses(core_settings, tile_ids) == ["embedded", "embedded"]
