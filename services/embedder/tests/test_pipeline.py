"""The streaming pipeline against the real database: leases, chunks, rows, statuses, counters,
idempotent reruns and a dead worker's lease."""

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
from cliprs.windows import plan_windows, window_id
from cliprs_embedder.pipeline import Embedder, WindowConfigMismatch
from cliprs_embedder.settings import EmbedderSettings
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_raster.render import render_tile, scene_stretch
from cliprs_raster.samples import demo_band_paths
from cliprs_testing.factories import make_area, make_job, make_tile

TILES = [(14, 4749, 6339), (14, 4750, 6339), (13, 2374, 3169)]
SETTINGS = EmbedderSettings(window_scales=[1.0, 0.5], stride_ratio=0.25, lease_s=2.0)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path):
    return load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu", batch_size=16))


@pytest.fixture
def embedder(encoder, core_settings: CoreSettings):
    worker = Embedder(encoder, core_settings, SETTINGS)
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def tile_images() -> dict[tuple[int, int, int], Image.Image]:
    bands = demo_band_paths()
    stretch = scene_stretch(bands)
    images = {t: render_tile(bands, *t, stretch=stretch) for t in TILES}
    assert all(im is not None for im in images.values())
    return images


def seed_tiles(core: CoreSettings, images: dict, missing: int = 0) -> tuple[int, list[int]]:
    """A job whose area's tiles are fetched and cached (plus ``missing`` fetched, not cached)."""
    source = f"src-{uuid.uuid4().hex[:8]}"
    keys = list(images) + [(14, 4751 + i, 6339) for i in range(missing)]
    ids = []
    with sync_engine(core.database_url).begin() as conn:
        area_id = make_area(conn, name="t", bbox=(-75.7, 37.6, -75.6, 37.7), zooms=(13, 14), source=source)
        job_id = make_job(conn, area_id, state="embedding")
        for z, x, y in keys:
            ids.append(make_tile(conn, area_id, z, x, y, source=source, status="fetched"))
            if (z, x, y) in images:
                path = tile_path(core.tile_cache_dir, source, z, x, y, "png")
                path.parent.mkdir(parents=True, exist_ok=True)
                images[(z, x, y)].save(path)
    return job_id, ids


def crops(image: Image.Image) -> list[Image.Image]:
    image = image.convert("RGB")
    return [image.crop((w.x0, w.y0, w.x1, w.y1)) for w in plan_windows(image.width, [1.0, 0.5], 0.25)]


def job_row(core: CoreSettings, job_id: int):
    with sync_engine(core.database_url).connect() as conn:
        return conn.execute(text("SELECT * FROM ingest_jobs WHERE id = :j"), {"j": job_id}).mappings().one()


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


def test_drain_writes_chunks_rows_statuses_and_counters(
    core_settings, embedder, encoder, tile_images
) -> None:
    job_id, tile_ids = seed_tiles(core_settings, tile_images, missing=1)
    stats = embedder.drain(job_id)
    assert (stats["tiles"], stats["failed"], stats["refetch"], stats["windows"]) == (3, 0, 1, 3 * 26)
    # The tile whose file vanished goes back to the fetch stage (the task queues a fetch).
    assert statuses(core_settings, tile_ids) == ["embedded"] * 3 + ["planned"]
    expected = [window_id(t, i) for t in tile_ids[:3] for i in range(26)]
    assert window_ids_in_db(core_settings, tile_ids) == expected
    for tile_id, key in zip(tile_ids, TILES, strict=False):
        ids, vectors, model_id = read_chunk(core_settings.vectors_dir, tile_id)
        assert ids.tolist() == [window_id(tile_id, i) for i in range(26)]
        assert vectors.shape == (26, 512) and vectors.dtype == np.float16  # chunks hold float16
        vectors = vectors.astype(np.float32)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=2e-3)
        assert model_id == encoder.info.loaded
        # Windows batched across tiles get the vectors of their own pixels, sent alone.
        alone = encoder.embed_images(crops(tile_images[key]))
        assert np.sum(vectors * alone, axis=1).min() > 0.999
    with sync_engine(core_settings.database_url).connect() as conn:
        tile = conn.execute(
            text("SELECT error, lease_until, leased_by FROM tiles WHERE id = :t"), {"t": tile_ids[3]}
        ).one()
    assert "fetching it again" in tile.error and tile.lease_until is None and tile.leased_by is None
    # Fetched again and still missing: now it fails, with its reason.
    with sync_engine(core_settings.database_url).begin() as conn:
        conn.execute(text("UPDATE tiles SET status = 'fetched' WHERE id = :t"), {"t": tile_ids[3]})
    assert embedder.drain(job_id)["refetch"] == 0
    assert statuses(core_settings, tile_ids)[3] == "failed"
    # Counters were incremented as the work committed; every stage's time is on the job.
    job = job_row(core_settings, job_id)
    assert (job["tiles_embedded"], job["windows_embedded"]) == (3, 78)
    assert set(job["stage_seconds"]) == {"decode", "resize", "encode", "write"}
    assert all(v > 0 for v in job["stage_seconds"].values())


def test_work_units_stream_one_after_another(core_settings, encoder, tile_images) -> None:
    # One tile per lease: three units through one continuous stream, same result.
    job_id, tile_ids = seed_tiles(core_settings, tile_images)
    worker = Embedder(
        encoder, core_settings, SETTINGS.model_copy(update={"lease_tiles": 1, "write_windows": 10})
    )
    try:
        stats = worker.drain(job_id)
    finally:
        worker.close()
    assert (stats["units"], stats["tiles"], stats["windows"]) == (3, 3, 78)
    assert statuses(core_settings, tile_ids) == ["embedded"] * 3


def test_a_dead_workers_lease_is_taken_when_it_expires(core_settings, embedder, tile_images) -> None:
    job_id, tile_ids = seed_tiles(core_settings, {TILES[0]: tile_images[TILES[0]]})
    with sync_engine(core_settings.database_url).begin() as conn:
        # A worker that leased the tile and died: its lease is no longer renewed.
        conn.execute(
            text("UPDATE tiles SET leased_by = 'dead', lease_until = now() + interval '0.5 s' WHERE id = :t"),
            {"t": tile_ids[0]},
        )
    stats = embedder.drain(job_id)
    assert stats["tiles"] == 1 and statuses(core_settings, tile_ids) == ["embedded"]


def test_a_live_workers_lease_is_left_to_it(core_settings, embedder, tile_images) -> None:
    job_id, tile_ids = seed_tiles(core_settings, {k: tile_images[k] for k in TILES[:2]})
    with sync_engine(core_settings.database_url).begin() as conn:
        conn.execute(
            text("UPDATE tiles SET leased_by = 'alive', lease_until = now() + interval '60 s' WHERE id = :t"),
            {"t": tile_ids[0]},
        )
    stats = embedder.drain(job_id)
    assert stats["tiles"] == 1 and statuses(core_settings, tile_ids) == ["fetched", "embedded"]


def test_footprint_rows_match_the_windows(core_settings, embedder, tile_images) -> None:
    job_id, tile_ids = seed_tiles(core_settings, {TILES[0]: tile_images[TILES[0]]})
    embedder.drain(job_id)
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


def test_reruns_and_redeliveries_change_nothing(core_settings, embedder, tile_images) -> None:
    job_id, tile_ids = seed_tiles(core_settings, {k: tile_images[k] for k in TILES[:2]})
    embedder.drain(job_id)
    before = window_ids_in_db(core_settings, tile_ids)
    first = read_chunk(core_settings.vectors_dir, tile_ids[0])

    # A redelivered task whose tiles are already embedded does nothing.
    assert embedder.drain(job_id)["tiles"] == 0

    # Tile 0: a worker killed between the chunk and the transaction (rows and status are one
    # step, so that is the worst case). Tile 1: a second worker redoing a tile whose rows the
    # first one wrote (a lease taken over from a worker that had just committed). Neither loses
    # or duplicates a window.
    with sync_engine(core_settings.database_url).begin() as conn:
        conn.execute(text("DELETE FROM windows WHERE tile_id = :t"), {"t": tile_ids[0]})
        conn.execute(text("UPDATE tiles SET status = 'fetched' WHERE id = ANY(:t)"), {"t": tile_ids})
    stats = embedder.drain(job_id)
    assert stats["tiles"] == 2
    assert window_ids_in_db(core_settings, tile_ids) == before
    again = read_chunk(core_settings.vectors_dir, tile_ids[0])
    assert again[0].tolist() == first[0].tolist()
    assert np.allclose(again[1], first[1], atol=1e-6)
    assert statuses(core_settings, tile_ids) == ["embedded", "embedded"]


def test_a_worker_with_another_window_configuration_refuses_the_job(
    core_settings, encoder, embedder, tile_images
) -> None:
    job_id, tile_ids = seed_tiles(core_settings, {TILES[0]: tile_images[TILES[0]]})
    other = Embedder(encoder, core_settings, SETTINGS.model_copy(update={"window_scales": [1.0]}))
    with sync_engine(core_settings.database_url).begin() as conn:
        conn.execute(
            text("UPDATE ingest_jobs SET window_config = :c WHERE id = :j"),
            {"c": SETTINGS.window_config(), "j": job_id},
        )
    try:
        with pytest.raises(WindowConfigMismatch, match="EMBEDDER_WINDOW_SCALES"):
            other.drain(job_id)
    finally:
        other.close()
    assert statuses(core_settings, tile_ids) == ["fetched"]  # nothing embedded under the wrong cut
    assert embedder.drain(job_id)["tiles"] == 1  # a worker configured as the job was does it
    assert job_row(core_settings, job_id)["window_config"] == SETTINGS.window_config()


def test_no_data_windows_are_skipped_counted_and_quality_stored(core_settings, embedder, tile_images) -> None:
    # A scene edge: the left 100 px of a real tile are transparent (its RGB is left as it was);
    # the same tile fully opaque at another place; and a tile with no imagery at all.
    rgba = np.asarray(tile_images[TILES[0]].convert("RGBA")).copy()
    rgba[:, :100, 3] = 0
    images = {
        TILES[0]: Image.fromarray(rgba, "RGBA"),
        TILES[1]: tile_images[TILES[0]],
        TILES[2]: Image.fromarray(np.zeros((256, 256, 4), dtype=np.uint8), "RGBA"),
    }
    job_id, (edge, whole, blank) = seed_tiles(core_settings, images)
    stats = embedder.drain(job_id)
    windows = plan_windows(256, [1.0, 0.5], 0.25)
    valid = np.array([(w.x1 - max(w.x0, 100)) / (w.x1 - w.x0) if w.x1 > 100 else 0.0 for w in windows])
    kept = np.flatnonzero(valid >= SETTINGS.min_valid)
    assert 0 < len(kept) < len(windows)
    assert stats["windows"] == len(kept) + len(windows)
    assert statuses(core_settings, [edge, whole, blank]) == ["embedded"] * 3
    # Rows and vectors exist for the kept windows only, under their ids in the tile's plan.
    expected_ids = [window_id(edge, i) for i in kept] + [window_id(whole, i) for i in range(len(windows))]
    assert window_ids_in_db(core_settings, [edge, whole, blank]) == expected_ids
    ids, _, _ = read_chunk(core_settings.vectors_dir, edge)
    assert ids.tolist() == [window_id(edge, i) for i in kept]
    assert read_chunk(core_settings.vectors_dir, blank)[0].tolist() == []
    with sync_engine(core_settings.database_url).connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, tile_id, valid_fraction, cloud_score, fingerprint FROM windows "
                "WHERE tile_id = ANY(:t) ORDER BY id"
            ),
            {"t": [edge, whole]},
        ).all()
        skipped = dict(
            conn.execute(
                text("SELECT id, windows_skipped FROM tiles WHERE id = ANY(:t)"), {"t": [edge, whole, blank]}
            ).all()
        )
    by_index = {(r.tile_id, r.id % 4096): r for r in rows}
    for i in kept:
        assert by_index[(edge, i)].valid_fraction == pytest.approx(valid[i], abs=1e-6)
        # The same pixels at another place: the same model input, so the same fingerprint.
        assert by_index[(edge, i)].fingerprint == by_index[(whole, i)].fingerprint
    assert all(by_index[(whole, i)].valid_fraction == 1.0 for i in range(len(windows)))
    assert all(0.0 <= r.cloud_score <= 1.0 for r in rows)
    assert len({by_index[(whole, i)].fingerprint for i in range(len(windows))}) == len(windows)
    assert skipped == {edge: len(windows) - len(kept), whole: 0, blank: len(windows)}
    job = job_row(core_settings, job_id)
    assert job["windows_skipped_nodata"] == 2 * len(windows) - len(kept)
    assert job["windows_embedded"] == len(kept) + len(windows)
