"""Building and publishing area shards against the real database, Redis and a temporary index dir."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass

import mercantile
import numpy as np
import pytest
import redis
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.manifest import Codec, Manifest, Shard, current_version, load_manifest, manifest_path
from cliprs.settings import CoreSettings
from cliprs.vectors import write_chunk
from cliprs.windows import window_id
from cliprs_index.shardset import ShardSet, load_shardset
from cliprs_indexer.build import (
    AreaVectors,
    ModelMismatch,
    apply,
    collect_area_vectors,
    publish_area,
    retune,
    retune_due,
)
from cliprs_indexer.maintenance import delete_area
from cliprs_indexer.settings import IndexerSettings
from cliprs_indexer.shards import TUNED_ON_GAP_MODEL, TUNED_ON_QUERIES
from cliprs_testing.factories import link_tiles, make_area, make_tile, make_window

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
            wids = np.array([window_id(tile_id, k) for k in range(windows_per_tile)], dtype=np.int64)
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
    return {f"shards/{p.name}" for p in shards.iterdir()} if shards.exists() else set()


def loaded(core: CoreSettings, manifest: Manifest | None = None) -> ShardSet:
    """The version as a searcher loads it (default: CURRENT)."""
    manifest = manifest or load_manifest(core.index_dir)
    return load_shardset(core.index_dir, manifest)


def assert_self_queries(shardset: ShardSet, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Every window is indexed with its vector and is its own best match."""
    assert shardset.dim == DIM
    for wid, vec in zip(ids.tolist(), vectors, strict=True):
        (best, score), *_ = shardset.search(vec, 1)
        assert best == wid
        assert score == pytest.approx(1.0, abs=1e-3)  # float16 rows
        np.testing.assert_allclose(shardset.vector_of(wid), vec, atol=1e-3)


def assert_gone(shardset: ShardSet, ids: np.ndarray) -> None:
    found, _ = shardset.vectors_of(ids)
    assert len(found) == 0
    probe = shardset.search(np.ones(DIM, dtype=np.float32) / np.sqrt(DIM), shardset.total())
    assert not np.isin([w for w, _ in probe], ids).any()


def shards_holding(shardset: ShardSet, ids: np.ndarray) -> list:
    """The manifest entries of the shards holding some of ``ids``."""
    return [s.meta for s in shardset.shards if np.isin(ids, s.ids).any()]


def stems(manifest: Manifest) -> set[str]:
    return {s.stem for s in manifest.shards}


# --------------------------------------------------------------------------- collect_area_vectors


def test_collect_area_vectors_reads_the_chunks_of_embedded_tiles(
    core_settings: CoreSettings, seeded_areas: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    area = seed_area(core_settings, seeded_areas, n_tiles=4, windows_per_tile=3)
    got = collect_area_vectors(core_settings, area.id)
    assert got is not None
    assert got.model_id == MODEL
    assert got.ids.dtype == np.int64 and got.vectors.dtype == np.float16  # as the chunks hold them
    np.testing.assert_array_equal(got.ids, area.all_ids())
    np.testing.assert_allclose(got.vectors.astype(np.float32), area.all_vectors(), atol=1e-3)

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
    apart = IndexerSettings(shard_min_vectors=1)  # no merging: one shard per area here
    a = seed_area(core, seeded_areas, n_tiles=3, windows_per_tile=4, seed=1)
    b = seed_area(core, seeded_areas, n_tiles=2, windows_per_tile=6, seed=2)
    base = last_db_version(core)

    # First version: one shard.
    m1 = publish_area(core, a.id, collect_area_vectors(core, a.id), apart)
    assert m1.version == base + 1
    assert current_version(core.index_dir) == m1.version
    assert load_manifest(core.index_dir) == m1
    assert manifest_path(core.index_dir, m1.version).exists()
    assert (m1.model_id, m1.dim, m1.codec) == (MODEL, DIM, None)
    assert [(s.area_ids, s.count, s.kind, s.tiles, s.zooms) for s in m1.shards] == [
        ([a.id], 12, "flat", 3, [14])
    ]
    # The envelope is the tiles' extent (zoom 14, x 8000..8002, y 5000).
    first, last = mercantile.bounds(8000, 5000, 14), mercantile.bounds(8002, 5000, 14)
    np.testing.assert_allclose(m1.shards[0].envelope, [first.west, first.south, last.east, first.north])
    row = version_row(core, m1.version)
    assert row is not None
    assert row["vector_count"] == 12
    assert row["model_id"] == MODEL
    assert row["shard_files"] == sorted(m1.files())
    assert row["manifest_path"] == str(manifest_path(core.index_dir, m1.version))
    assert shard_files(core) == m1.files()
    assert_self_queries(loaded(core), a.all_ids(), a.all_vectors())

    # Second version: a second area adds a second shard; the first is shared, not rewritten.
    m2 = publish_area(core, b.id, collect_area_vectors(core, b.id), apart)
    assert m2.version == m1.version + 1
    assert current_version(core.index_dir) == m2.version
    assert sorted(s.area_ids for s in m2.shards) == sorted([[a.id], [b.id]])
    assert m1.shards[0] in m2.shards
    assert version_row(core, m2.version)["vector_count"] == 12 + 12
    both = loaded(core)
    assert_self_queries(both, a.all_ids(), a.all_vectors())
    assert_self_queries(both, b.all_ids(), b.all_vectors())

    # Re-publishing area a adds nothing (its tiles are indexed): a new version, the same shards.
    m3 = publish_area(core, a.id, collect_area_vectors(core, a.id), apart)
    assert m3.version == m2.version + 1
    assert m3.shards == m2.shards
    assert version_row(core, m3.version)["vector_count"] == 24

    # Nothing to publish: no version.
    assert publish_area(core, a.id, None, apart) is None
    assert current_version(core.index_dir) == m3.version

    # Taking one of a's tiles out rewrites a's shard only.
    dropped = a.tile_ids[0]
    m4 = apply(core, apart, remove_tiles=[dropped])
    assert m4.version == m3.version + 1
    shard_b = next(s for s in m2.shards if s.area_ids == [b.id])
    assert shard_b in m4.shards  # untouched
    shard_a = next(s for s in m4.shards if s.area_ids == [a.id])
    assert shard_a.stem != m1.shards[0].stem and shard_a.count == 8 and shard_a.tiles == 2
    assert version_row(core, m4.version)["vector_count"] == 8 + 12
    now = loaded(core)
    assert_gone(now, a.ids[dropped])
    kept = [t for t in sorted(a.ids) if t != dropped]
    assert_self_queries(
        now, np.concatenate([a.ids[t] for t in kept]), np.concatenate([a.vectors[t] for t in kept])
    )
    # The older version still loads as it was (searchers may still be reading it).
    assert load_manifest(core.index_dir, m1.version) == m1
    assert_self_queries(loaded(core, m1), a.all_ids(), a.all_vectors())

    # Taking all of a out leaves b's shard alone.
    m5 = apply(core, apart, remove_tiles=a.tile_ids)
    assert m5.shards == [shard_b]
    assert (m5.model_id, m5.dim) == (MODEL, DIM)
    row = version_row(core, m5.version)
    assert row["vector_count"] == 12
    assert row["shard_files"] == sorted(shard_b.files())

    with sync_engine(core.database_url).connect() as conn:
        versions = (
            conn.execute(
                text("SELECT version FROM index_versions WHERE version > :b ORDER BY version"), {"b": base}
            )
            .scalars()
            .all()
        )
    assert versions == [base + 1, base + 2, base + 3, base + 4, base + 5]


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
    m2 = apply(core, IndexerSettings(), remove_tiles=a.tile_ids)
    assert m2.shards == []
    m3 = publish_area(core, b.id, vectors_b)
    assert m3.model_id == "test/tiny-clip-b"
    assert [s.area_ids for s in m3.shards] == [[b.id]]


def test_publish_accepts_vectors_built_in_memory(
    core_settings: CoreSettings, seeded_areas: list[int]
) -> None:
    """``publish_area`` takes whatever ``AreaVectors`` it is given (any windows of known tiles,
    in any order, not every window of a tile)."""
    area = seed_area(core_settings, seeded_areas, n_tiles=3, seed=6)  # the area must exist (not be deleted)
    ids = np.array(
        [area.ids[area.tile_ids[2]][4], area.ids[area.tile_ids[0]][1], area.ids[area.tile_ids[2]][0]]
    )
    vecs = unit_vectors(3, 77)
    m = publish_area(core_settings, area.id, AreaVectors(ids, vecs, MODEL))
    assert [(s.count, s.tiles) for s in m.shards] == [(3, 2)]
    assert_self_queries(loaded(core_settings), ids, vecs)
    assert shard_files(core_settings) == m.files()


# --------------------------------------------------------------------------- shards shared by areas

SMALL = IndexerSettings(shard_max_vectors=60, shard_min_vectors=30)


def test_adding_areas_reuses_unchanged_shards_and_merges_small_ones(
    core_settings: CoreSettings, seeded_areas: list[int]
) -> None:
    core = core_settings
    a = seed_area(core, seeded_areas, n_tiles=3, seed=11)  # 15 windows: a small shard
    b = seed_area(core, seeded_areas, n_tiles=2, seed=12)  # 10 windows: small
    c = seed_area(core, seeded_areas, n_tiles=8, seed=13)  # 40 windows: not small
    m1 = publish_area(core, a.id, collect_area_vectors(core, a.id), SMALL)
    m2 = publish_area(core, b.id, collect_area_vectors(core, b.id), SMALL)
    # Two small shards are merged into one holding both areas.
    assert [(s.area_ids, s.count) for s in m2.shards] == [(sorted([a.id, b.id]), 25)]
    assert not stems(m1) & stems(m2)
    m3 = publish_area(core, c.id, collect_area_vectors(core, c.id), SMALL)
    assert stems(m2) < stems(m3)  # the shard of a and b is reused
    assert sorted((s.area_ids, s.count) for s in m3.shards) == sorted(
        [(sorted([a.id, b.id]), 25), ([c.id], 40)]
    )
    assert all(s.count <= SMALL.shard_max_vectors for s in m3.shards)
    now = loaded(core)
    for area in (a, b, c):
        assert_self_queries(now, area.all_ids(), area.all_vectors())
        # pick() by area finds every shard holding its windows.
        assert sorted(now.pick(area_id=area.id)) == sorted(
            i for i, s in enumerate(now.shards) if np.isin(area.all_ids(), s.ids).any()
        )


def test_an_overlapping_area_adds_only_its_new_tiles(
    core_settings: CoreSettings, seeded_areas: list[int]
) -> None:
    core = core_settings
    c = seed_area(core, seeded_areas, n_tiles=8, seed=14)  # 40 windows
    d = seed_area(core, seeded_areas, n_tiles=2, seed=15)  # 10 windows of its own
    shared = c.tile_ids[5:]
    with sync_engine(core.database_url).begin() as conn:
        link_tiles(conn, d.id, shared)  # d also covers c's last three tiles
    m1 = publish_area(core, c.id, collect_area_vectors(core, c.id), SMALL)
    vectors = collect_area_vectors(core, d.id)
    assert len(vectors.ids) == 10 + 15  # d's vectors include the shared tiles
    m2 = publish_area(core, d.id, vectors, SMALL)
    assert m2.vector_count == 40 + 10  # only d's own tiles were added
    now = loaded(core)
    assert sorted(now.sample_ids(10**6).tolist()) == sorted([*c.all_ids().tolist(), *d.all_ids().tolist()])
    shared_ids = np.concatenate([c.ids[t] for t in shared])
    holding = shards_holding(now, shared_ids)
    assert len(holding) == 1 and holding[0].area_ids == sorted([c.id, d.id])
    assert holding[0].stem == m1.shards[0].stem  # not rewritten, only its areas refreshed
    assert all(d.id in s.area_ids for s in shards_holding(now, d.all_ids()))
    assert_self_queries(now, shared_ids, np.concatenate([c.vectors[t] for t in shared]))
    assert_self_queries(now, d.all_ids(), d.all_vectors())


def test_deleting_an_area_rewrites_only_the_shards_holding_it(
    core_settings: CoreSettings, seeded_areas: list[int]
) -> None:
    core = core_settings
    a = seed_area(core, seeded_areas, n_tiles=3, seed=16)
    b = seed_area(core, seeded_areas, n_tiles=2, seed=17)
    c = seed_area(core, seeded_areas, n_tiles=8, seed=18)
    for area in (a, b, c):
        before = publish_area(core, area.id, collect_area_vectors(core, area.id), SMALL)
    mixed = next(s for s in before.shards if a.id in s.area_ids)
    assert mixed.area_ids == sorted([a.id, b.id])  # a's windows share a shard with b's

    report = delete_area(core, a.id, SMALL)
    after = load_manifest(core.index_dir)
    assert report.version == after.version and report.tiles_deleted == 3 and report.windows_deleted == 15
    assert after.vector_count == 10 + 40
    assert all(a.id not in s.area_ids for s in after.shards)
    assert mixed.stem not in stems(after)  # the shard holding a was rewritten
    assert stems(before) - {mixed.stem} <= stems(after)  # the others are reused
    now = loaded(core)
    assert_gone(now, a.all_ids())
    assert_self_queries(now, b.all_ids(), b.all_vectors())
    assert_self_queries(now, c.all_ids(), c.all_vectors())
    assert [s.area_ids for s in shards_holding(now, b.all_ids())] == [[b.id]]


def test_crossing_flat_max_trains_one_codec_for_every_shard(
    core_settings: CoreSettings, seeded_areas: list[int]
) -> None:
    core = core_settings
    settings = IndexerSettings(flat_max_vectors=300, shard_max_vectors=150, shard_min_vectors=1, device="cpu")
    areas = [seed_area(core, seeded_areas, n_tiles=20, seed=20 + i) for i in range(4)]  # 100 windows each
    flat = None
    for area in areas[:3]:
        flat = publish_area(core, area.id, collect_area_vectors(core, area.id), settings)
    assert flat.codec is None and {s.kind for s in flat.shards} == {"flat"}
    assert flat.vector_count == 300

    compressed = publish_area(core, areas[3].id, collect_area_vectors(core, areas[3].id), settings)
    codec = compressed.codec
    assert codec is not None and codec.trained_on == 400
    assert {s.kind for s in compressed.shards} == {"ivfpq"}  # every shard, old ones re-encoded
    assert not stems(flat) & stems(compressed)
    assert codec.recall_at_10 is not None and codec.recall_at_10 >= settings.recall_target
    assert 1 <= codec.nprobe <= codec.nlist
    assert codec.file in compressed.files() and (core.index_dir / codec.file).exists()
    now = loaded(core)
    for area in areas:
        assert_self_queries(now, area.all_ids(), area.all_vectors())

    # A later area is only encoded with the same codec: nothing else is rewritten or retrained.
    e = seed_area(core, seeded_areas, n_tiles=4, seed=30)
    later = publish_area(core, e.id, collect_area_vectors(core, e.id), settings)
    assert later.codec.file == codec.file
    assert stems(compressed) < stems(later)
    assert {s.kind for s in later.shards} == {"ivfpq"}
    assert_self_queries(loaded(core), e.all_ids(), e.all_vectors())


def test_growth_retunes_after_the_growing_version_is_published(
    core_settings: CoreSettings, seeded_areas: list[int]
) -> None:
    """Past retune_growth x the size the codec was tuned on, the new area is published with the
    old search parameters and the change says a re-tune is due; the re-tune (the indexer's
    ``indexer.retune`` task) publishes the same shards with the new ones."""
    core = core_settings
    settings = IndexerSettings(
        flat_max_vectors=300, shard_max_vectors=150, shard_min_vectors=1, retune_growth=1.5, device="cpu"
    )
    first = seed_area(core, seeded_areas, n_tiles=80, seed=40)  # 400 windows: the codec is trained
    trained = publish_area(core, first.id, collect_area_vectors(core, first.id), settings)
    assert trained.codec is not None and trained.codec.params["tuned_on"] == 400
    grown = seed_area(core, seeded_areas, n_tiles=60, seed=41)  # 700 >= 1.5 x 400
    served_first = publish_area(core, grown.id, collect_area_vectors(core, grown.id), settings)
    assert served_first.version == trained.version + 1  # the area, with the old parameters
    assert retune_due(served_first, settings) and not retune_due(trained, settings)
    retuned = retune(core, settings)
    assert retuned.version == trained.version + 2
    assert served_first.vector_count == retuned.vector_count == 700
    assert served_first.codec.params["tuned_on"] == 400
    assert stems(served_first) == stems(retuned)  # same shards, new parameters only
    assert retuned.codec.file == trained.codec.file and retuned.codec.params["tuned_on"] == 700
    assert retuned.codec.recall_at_10 >= settings.recall_target
    assert current_version(core.index_dir) == retuned.version == last_db_version(core)
    assert_self_queries(loaded(core), grown.all_ids(), grown.all_vectors())


def test_a_publish_respects_a_concurrent_delete(core_settings: CoreSettings, seeded_areas: list[int]) -> None:
    core = core_settings
    a = seed_area(core, seeded_areas, n_tiles=2, seed=31)
    b = seed_area(core, seeded_areas, n_tiles=2, seed=32)
    m1 = publish_area(core, b.id, collect_area_vectors(core, b.id))
    vectors = collect_area_vectors(core, a.id)  # an index job, mid-way
    with sync_engine(core.database_url).begin() as conn:  # a delete has started meanwhile
        conn.execute(text("UPDATE areas SET status = 'deleting' WHERE id = :a"), {"a": a.id})
    assert apply(core, IndexerSettings(), add=vectors, only_if_alive=a.id) is None
    assert publish_area(core, a.id, vectors) is None
    assert current_version(core.index_dir) == m1.version == last_db_version(core)
    assert_gone(loaded(core), a.all_ids())
    # Without the condition the same vectors are published.
    m2 = apply(core, IndexerSettings(), add=vectors)
    assert m2.version == m1.version + 1 and m2.vector_count == 20


def test_a_retune_is_due_for_growth_a_missing_text_probe_and_real_text_queries() -> None:
    """Growth re-tunes as before; a codec tuned before text queries had a probe, or one whose
    text probe was tuned on the modality-gap model once enough real queries are kept, too."""
    settings = IndexerSettings(retune_growth=4.0, text_tune_min_queries=200)

    def manifest(vectors: int, **codec) -> Manifest:
        params = {"tuned_on": 1000, "text_tuned_with": codec.pop("tuned_with", TUNED_ON_GAP_MODEL)}
        return Manifest(
            1,
            "m",
            8,
            [Shard(stem="s", count=vectors, kind="ivfpq")],
            Codec("c.faiss", 16, 4, 2, 32, 1000, 0.97, params, **codec),
        )

    text = {"text_nprobe": 4, "text_k_factor": 64, "text_recall_at_10": 0.96}
    assert not retune_due(manifest(1500, **text), settings)
    assert retune_due(manifest(4000, **text), settings)  # grown 4 times
    assert retune_due(manifest(1500), settings)  # no text probe yet
    assert not retune_due(manifest(1500, **text), settings, sampled_text_queries=199)
    assert retune_due(manifest(1500, **text), settings, sampled_text_queries=200)
    assert not retune_due(
        manifest(1500, tuned_with=TUNED_ON_QUERIES, **text), settings, sampled_text_queries=5000
    )
