"""Building and publishing area shards against the real database, Redis and a temporary index dir."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest
import redis
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.manifest import current_version, load_manifest, manifest_path
from cliprs.settings import CoreSettings
from cliprs.vectors import write_chunk
from cliprs_indexer.build import AreaVectors, ModelMismatch, collect_area_vectors, publish_area
from cliprs_testing.factories import make_area, make_tile, make_window

DIM = 16
MODEL = "test/tiny-clip-a"


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@dataclass
class SeededArea:
    id: int
    tile_ids: list[int]
    ids: dict[int, np.ndarray]  # tile id -> window ids
    vectors: dict[int, np.ndarray]  # tile id -> vectors

    def all_ids(self) -> np.ndarray:
        return np.concatenate([self.ids[t] for t in sorted(self.ids)])

    def all_vectors(self) -> np.ndarray:
        return np.concatenate([self.vectors[t] for t in sorted(self.vectors)])


def seed_area(
    core: CoreSettings,
    seeded: list[int],
    n_tiles: int,
    windows_per_tile: int = 5,
    model_id: str = MODEL,
    status: str = "embedded",
    seed: int = 0,
) -> SeededArea:
    """An area with ``n_tiles`` tiles at zoom 14, their windows, and a vector chunk per tile.

    The area's id is appended to ``seeded`` (the `seeded_areas` fixture) to be deleted afterwards.
    """
    source = f"src-{uuid.uuid4().hex[:8]}"
    lon0, lat0, step = 8.5 + seed * 0.01, 47.3, 0.02
    engine = sync_engine(core.database_url)
    with engine.begin() as conn:
        bbox = (lon0, lat0, lon0 + step * n_tiles, lat0 + step)
        area_id = make_area(conn, name=f"area {source}", bbox=bbox, source=source, status="ingesting")
        seeded.append(area_id)
        tile_ids = [
            make_tile(
                conn,
                area_id,
                14,
                8000 + i,
                5000,
                source=source,
                status=status,
                bounds=(lon0 + step * i, lat0, lon0 + step * (i + 1), lat0 + step),
            )
            for i in range(n_tiles)
        ]
    ids: dict[int, np.ndarray] = {}
    vectors: dict[int, np.ndarray] = {}
    with engine.begin() as conn:
        for i, tile_id in enumerate(tile_ids):
            wids = np.arange(windows_per_tile, dtype=np.int64) + tile_id * 1000
            for k, wid in enumerate(wids.tolist()):
                w = lon0 + step * i + step * k / windows_per_tile
                make_window(conn, wid, tile_id, bounds=(w, lat0, w + step / windows_per_tile, lat0 + step))
            vecs = unit_vectors(windows_per_tile, seed * 1000 + i)
            write_chunk(core.vectors_dir, tile_id, wids, vecs, model_id)
            ids[tile_id], vectors[tile_id] = wids, vecs
    return SeededArea(area_id, tile_ids, ids, vectors)


def last_db_version(core: CoreSettings) -> int:
    with sync_engine(core.database_url).connect() as conn:
        return conn.execute(text("SELECT coalesce(max(version), 0) FROM index_versions")).scalar_one()


def version_row(core: CoreSettings, version: int) -> dict | None:
    with sync_engine(core.database_url).connect() as conn:
        row = (
            conn.execute(text("SELECT * FROM index_versions WHERE version = :v"), {"v": version})
            .mappings()
            .one_or_none()
        )
    return dict(row) if row else None


def shard_files(core: CoreSettings) -> set[str]:
    shards = core.index_dir / "shards"
    return {f"shards/{p.name}" for p in shards.glob("*.faiss")} if shards.exists() else set()


def assert_self_queries(path: Path, ids: np.ndarray, vectors: np.ndarray) -> None:
    index = faiss.read_index(str(path))
    assert index.ntotal == len(ids)
    assert index.d == DIM
    scores, found = index.search(np.ascontiguousarray(vectors), 1)
    assert found[:, 0].tolist() == ids.tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


# --------------------------------------------------------------------------- collect_area_vectors


def test_collect_area_vectors_reads_the_chunks_of_embedded_tiles(
    core_settings: CoreSettings, seeded_areas: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    area = seed_area(core_settings, seeded_areas, n_tiles=4, windows_per_tile=3)
    got = collect_area_vectors(core_settings, area.id)
    assert got is not None
    assert got.model_id == MODEL
    assert got.ids.dtype == np.int64 and got.vectors.dtype == np.float32
    np.testing.assert_array_equal(got.ids, area.all_ids())
    np.testing.assert_allclose(got.vectors, area.all_vectors())

    # A tile not (yet) embedded is left out even though it has a chunk; an embedded tile whose
    # chunk is missing is skipped with a warning.
    skipped, missing = area.tile_ids[0], area.tile_ids[1]
    with sync_engine(core_settings.database_url).begin() as conn:
        conn.execute(text("UPDATE tiles SET status = 'fetched' WHERE id = :t"), {"t": skipped})
    (core_settings.vectors_dir / str(missing // 1000) / f"{missing}.npz").unlink()
    with caplog.at_level(logging.WARNING, logger="cliprs.indexer"):
        got = collect_area_vectors(core_settings, area.id)
    assert got is not None
    keep = [t for t in sorted(area.ids) if t not in (skipped, missing)]
    np.testing.assert_array_equal(got.ids, np.concatenate([area.ids[t] for t in keep]))
    assert any(str(missing) in r.getMessage() for r in caplog.records)


def test_collect_area_vectors_is_none_without_embedded_tiles(
    core_settings: CoreSettings, seeded_areas: list[int]
) -> None:
    area = seed_area(core_settings, seeded_areas, n_tiles=2, status="fetched")
    assert collect_area_vectors(core_settings, area.id) is None


def test_collect_area_vectors_refuses_mixed_models(
    core_settings: CoreSettings, seeded_areas: list[int]
) -> None:
    area = seed_area(core_settings, seeded_areas, n_tiles=3)
    odd = area.tile_ids[1]
    write_chunk(core_settings.vectors_dir, odd, area.ids[odd], area.vectors[odd], "test/other-model")
    with pytest.raises(ModelMismatch, match="several models"):
        collect_area_vectors(core_settings, area.id)


# --------------------------------------------------------------------------- publish_area


def test_publish_area_versions_shards_and_removal(
    core_settings: CoreSettings, seeded_areas: list[int]
) -> None:
    core = core_settings
    a = seed_area(core, seeded_areas, n_tiles=3, windows_per_tile=4, seed=1)
    b = seed_area(core, seeded_areas, n_tiles=2, windows_per_tile=6, seed=2)
    base = last_db_version(core)

    # First version: one shard.
    m1 = publish_area(core, a.id, collect_area_vectors(core, a.id))
    assert m1.version == base + 1
    assert current_version(core.index_dir) == m1.version
    assert load_manifest(core.index_dir) == m1
    assert manifest_path(core.index_dir, m1.version).exists()
    assert (m1.model_id, m1.dim) == (MODEL, DIM)
    assert [(s.area_id, s.count, s.kind) for s in m1.shards] == [(a.id, 12, "flat")]
    row = version_row(core, m1.version)
    assert row is not None
    assert row["vector_count"] == 12
    assert row["model_id"] == MODEL
    assert row["shard_files"] == [m1.shards[0].file]
    assert row["manifest_path"] == str(manifest_path(core.index_dir, m1.version))
    assert_self_queries(core.index_dir / m1.shards[0].file, a.all_ids(), a.all_vectors())

    # Second version: a second area adds a second shard.
    m2 = publish_area(core, b.id, collect_area_vectors(core, b.id))
    assert m2.version == m1.version + 1
    assert current_version(core.index_dir) == m2.version
    assert sorted(s.area_id for s in m2.shards) == sorted([a.id, b.id])
    assert version_row(core, m2.version)["vector_count"] == 12 + 12
    shard_b = next(s for s in m2.shards if s.area_id == b.id)
    assert_self_queries(core.index_dir / shard_b.file, b.all_ids(), b.all_vectors())

    # Re-publishing area a (one tile dropped, one re-embedded) replaces its shard.
    dropped, changed = a.tile_ids[0], a.tile_ids[1]
    with sync_engine(core.database_url).begin() as conn:
        conn.execute(text("UPDATE tiles SET status = 'failed' WHERE id = :t"), {"t": dropped})
    new_vecs = unit_vectors(4, 999)
    write_chunk(core.vectors_dir, changed, a.ids[changed], new_vecs, MODEL)
    m3 = publish_area(core, a.id, collect_area_vectors(core, a.id))
    assert m3.version == m2.version + 1
    a_shards = [s for s in m3.shards if s.area_id == a.id]
    assert len(a_shards) == 1 and len(m3.shards) == 2
    assert a_shards[0].file != m1.shards[0].file
    assert a_shards[0].count == 8
    assert version_row(core, m3.version)["vector_count"] == 8 + 12
    kept = [t for t in sorted(a.ids) if t != dropped]
    vecs = np.concatenate([new_vecs if t == changed else a.vectors[t] for t in kept])
    assert_self_queries(core.index_dir / a_shards[0].file, np.concatenate([a.ids[t] for t in kept]), vecs)
    assert next(s for s in m3.shards if s.area_id == b.id) == shard_b  # untouched
    # The older version still loads as it was (searchers may still be reading it).
    assert load_manifest(core.index_dir, m1.version) == m1
    assert (core.index_dir / m1.shards[0].file).exists()

    # Publishing None removes the area.
    m4 = publish_area(core, a.id, None)
    assert m4.version == m3.version + 1
    assert current_version(core.index_dir) == m4.version
    assert [s.area_id for s in m4.shards] == [b.id]
    assert (m4.model_id, m4.dim) == (MODEL, DIM)
    row = version_row(core, m4.version)
    assert row["vector_count"] == 12
    assert row["shard_files"] == [shard_b.file]

    with sync_engine(core.database_url).connect() as conn:
        versions = (
            conn.execute(
                text("SELECT version FROM index_versions WHERE version > :b ORDER BY version"), {"b": base}
            )
            .scalars()
            .all()
        )
    assert versions == [base + 1, base + 2, base + 3, base + 4]


def test_publish_announces_the_version_on_redis(core_settings: CoreSettings, seeded_areas: list[int]) -> None:
    core = core_settings
    area = seed_area(core, seeded_areas, n_tiles=1, seed=3)
    client = redis.Redis.from_url(core.redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(core.index_channel)
    try:
        deadline = time.monotonic() + 5
        while client.pubsub_numsub(core.index_channel)[0][1] < 1 and time.monotonic() < deadline:
            pubsub.get_message(timeout=0.05)
        manifest = publish_area(core, area.id, collect_area_vectors(core, area.id))
        messages = []
        deadline = time.monotonic() + 5
        while not messages and time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.5)
            if msg and msg["type"] == "message":
                messages.append(msg)
    finally:
        pubsub.close()
        client.close()
    assert len(messages) == 1
    assert messages[0]["channel"].decode() == core.index_channel
    assert json.loads(messages[0]["data"]) == {"version": manifest.version}


def test_publish_refuses_a_second_model(core_settings: CoreSettings, seeded_areas: list[int]) -> None:
    core = core_settings
    a = seed_area(core, seeded_areas, n_tiles=2, seed=4)
    b = seed_area(core, seeded_areas, n_tiles=2, model_id="test/tiny-clip-b", seed=5)
    m1 = publish_area(core, a.id, collect_area_vectors(core, a.id))
    vectors_b = collect_area_vectors(core, b.id)
    assert vectors_b is not None and vectors_b.model_id == "test/tiny-clip-b"
    with pytest.raises(ModelMismatch, match="tiny-clip-b"):
        publish_area(core, b.id, vectors_b)
    assert current_version(core.index_dir) == m1.version
    assert last_db_version(core) == m1.version
    assert load_manifest(core.index_dir) == m1

    # Once the index is empty again another model may start it over.
    m2 = publish_area(core, a.id, None)
    assert m2.shards == []
    m3 = publish_area(core, b.id, vectors_b)
    assert m3.model_id == "test/tiny-clip-b"
    assert [s.area_id for s in m3.shards] == [b.id]


def test_publish_accepts_vectors_built_in_memory(
    core_settings: CoreSettings, seeded_areas: list[int]
) -> None:
    """``publish_area`` takes whatever ``AreaVectors`` it is given (ids need not be contiguous)."""
    area = seed_area(core_settings, seeded_areas, n_tiles=1, seed=6)  # the area must exist (not be deleted)
    ids = np.array([7, 3_000_000_000, 42], dtype=np.int64)
    vecs = unit_vectors(3, 77)
    m = publish_area(core_settings, area.id, AreaVectors(ids, vecs, MODEL))
    assert [s.count for s in m.shards] == [3]
    assert_self_queries(core_settings.index_dir / m.shards[0].file, ids, vecs)
    assert shard_files(core_settings) == {m.shards[0].file}
