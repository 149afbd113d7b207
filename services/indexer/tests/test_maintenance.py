"""Garbage collection of index versions, deleting an area and rebuilding, against the real
database, Redis and a temporary index dir."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mercantile
import numpy as np
import pytest
import redis
from sqlalchemy import text

from cliprs import runs
from cliprs.db.engine import sync_engine
from cliprs.errors import ClipRSError, NotFound
from cliprs.manifest import (
    current_version,
    list_versions,
    load_manifest,
    register_searcher,
    unregister_searcher,
)
from cliprs.settings import CoreSettings
from cliprs.vectors import chunk_files, chunk_path, write_chunk
from cliprs_index.shardset import load_shardset
from cliprs_indexer.__main__ import main as cli
from cliprs_indexer.build import collect_area_vectors, publish_area
from cliprs_indexer.maintenance import delete_area, garbage_collect, rebuild
from cliprs_indexer.settings import IndexerSettings
from cliprs_testing.factories import link_tiles, make_job
from cliprs_testing.synthetic import (
    SeededArea,
    clustered_unit_vectors,
    seed_area,
    write_area_chunks,
)

MODEL = "test/model"
NOW = IndexerSettings(gc_min_age_s=0)


def area_with_chunks(
    core: CoreSettings, seeded: list[int], x0: int, n: int, seed: int, name: str = "a"
) -> SeededArea:
    """``n`` zoom-16 tiles in a row near Zurich, with a vector chunk each (26 windows per tile);
    the area's id goes to ``seeded`` (the `seeded_areas` fixture) to be deleted afterwards."""
    tiles = [mercantile.Tile(34_300 + x0 + i, 22_900, 16) for i in range(n)]
    area = seed_area(core.database_url, tiles, name=name, source=f"maint-{seed}")
    seeded.append(area.area_id)
    write_area_chunks(core.vectors_dir, area, clustered_unit_vectors(len(area.ids), 32, seed=seed), MODEL)
    return area


def index_area(core: CoreSettings, area: SeededArea, settings: IndexerSettings | None = None):
    return publish_area(core, area.area_id, collect_area_vectors(core, area.area_id), settings)


def shards_of(manifest, area_id: int) -> list:
    return [s for s in manifest.shards if area_id in s.area_ids]


def indexed_ids(core: CoreSettings) -> np.ndarray:
    """Every window id the current version holds."""
    return load_shardset(core.index_dir, load_manifest(core.index_dir)).sample_ids(10**9)


def removed_at(core: CoreSettings, version: int):
    with sync_engine(core.database_url).connect() as conn:
        return conn.execute(
            text("SELECT removed_at FROM index_versions WHERE version = :v"), {"v": version}
        ).scalar_one()


@pytest.fixture
def rclient(core_settings: CoreSettings):
    client = redis.Redis.from_url(core_settings.redis_url)
    yield client
    client.close()


def test_gc_removes_versions_no_searcher_holds(
    core_settings: CoreSettings, seeded_areas: list[int], rclient
) -> None:
    core = core_settings
    a = area_with_chunks(core, seeded_areas, 0, 2, seed=1)
    b = area_with_chunks(core, seeded_areas, 10, 2, seed=2)
    v1 = index_area(core, a)
    v2 = index_area(core, b)
    v3 = index_area(core, a)  # a again: nothing new, every file shared by v2 and v3
    assert v3.files() == v2.files() and v1.files() - v3.files()  # a's first shard was merged with b's
    register_searcher(rclient, core.redis_namespace, "searcher-1", {v1.version}, ttl_s=30)

    # Just published: even unheld versions are spared for gc_min_age_s.
    assert garbage_collect(core, IndexerSettings()).removed_versions == []

    report = garbage_collect(core, NOW)
    assert report.removed_versions == [v2.version]
    assert report.kept_versions == [v1.version]
    assert report.removed_files == []  # every file of v2 is also in v1 or v3
    assert list_versions(core.index_dir) == [v1.version, v3.version]
    assert removed_at(core, v2.version) is not None and removed_at(core, v1.version) is None

    unregister_searcher(rclient, core.redis_namespace, "searcher-1")
    report = garbage_collect(core, NOW)
    assert report.removed_versions == [v1.version]
    assert report.removed_files == sorted(v1.files() - v3.files())
    assert list_versions(core.index_dir) == [v3.version]
    for rel in v3.files():
        assert (core.index_dir / rel).exists()
    for rel in report.removed_files:
        assert not (core.index_dir / rel).exists()


def test_gc_spares_a_registration_until_its_ttl_runs_out(
    core_settings: CoreSettings, seeded_areas: list[int], rclient
) -> None:
    core = core_settings
    a = area_with_chunks(core, seeded_areas, 0, 1, seed=3)
    v1, v2 = index_area(core, a), index_area(core, a)
    register_searcher(rclient, core.redis_namespace, "crashed", {v1.version}, ttl_s=0.3)
    assert garbage_collect(core, NOW).kept_versions == [v1.version]
    time.sleep(0.5)  # the searcher stopped renewing its key
    assert garbage_collect(core, NOW).removed_versions == [v1.version]
    assert current_version(core.index_dir) == v2.version


def test_gc_removes_old_orphan_files_only(core_settings: CoreSettings, seeded_areas: list[int]) -> None:
    core = core_settings
    a = area_with_chunks(core, seeded_areas, 0, 1, seed=4)
    index_area(core, a)
    old, young = (
        core.index_dir / "shards/crashed-build.faiss",
        core.index_dir / "shards/being-published.faiss",
    )
    old.write_bytes(b"x")
    young.write_bytes(b"x")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    report = garbage_collect(core, NOW)
    assert report.removed_files == ["shards/crashed-build.faiss"]
    assert young.exists() and not old.exists()


def test_delete_area_removes_its_vectors_rows_and_chunks_but_not_shared_tiles(
    core_settings: CoreSettings,
    seeded_areas: list[int],
) -> None:
    core = core_settings
    a = area_with_chunks(core, seeded_areas, 0, 4, seed=5, name="a")
    b = area_with_chunks(core, seeded_areas, 20, 1, seed=6, name="b")
    shared = a.tile_ids[2:].tolist()
    with sync_engine(core.database_url).begin() as conn:
        link_tiles(conn, b.area_id, shared)  # area b also covers a's last two tiles
        make_job(conn, a.area_id, state="done")
    index_area(core, a)
    before = index_area(core, b)
    assert before.vector_count == 5 * 26  # the shared tiles once
    assert np.isin(np.concatenate([a.ids, b.ids]), indexed_ids(core)).all()

    report = delete_area(core, a.area_id)
    assert report.tiles_deleted == 2 and report.windows_deleted == 2 * 26 and report.chunks_deleted == 2
    manifest = load_manifest(core.index_dir)
    assert manifest.version == report.version
    assert [s.area_ids for s in manifest.shards] == [[b.area_id]]
    with sync_engine(core.database_url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM areas WHERE id = :a"), {"a": a.area_id}).scalar() == 0
        assert (
            conn.execute(
                text("SELECT count(*) FROM ingest_jobs WHERE area_id = :a"), {"a": a.area_id}
            ).scalar()
            == 0
        )
        tiles = dict(
            conn.execute(
                text("SELECT id, area_id FROM tiles WHERE id = ANY(:t)"), {"t": a.tile_ids.tolist()}
            ).all()
        )
        windows = conn.execute(
            text("SELECT count(*) FROM windows WHERE tile_id = ANY(:t)"), {"t": a.tile_ids.tolist()}
        ).scalar()
    assert tiles == {t: b.area_id for t in shared}  # the shared tiles now belong to b
    assert windows == 2 * 26
    for tile_id in a.tile_ids.tolist():
        assert chunk_path(core.vectors_dir, tile_id).exists() == (tile_id in shared)
    # The index still answers for the shared windows; a's own windows are gone.
    indexed = indexed_ids(core)
    shared_windows = a.ids[np.isin(a.tile_of, shared)]
    assert sorted(indexed.tolist()) == sorted([*b.ids.tolist(), *shared_windows.tolist()])
    assert manifest.vector_count == 3 * 26

    with pytest.raises(NotFound):
        delete_area(core, a.area_id)


def test_a_late_publish_does_not_bring_a_deleted_area_back(
    core_settings: CoreSettings, seeded_areas: list[int]
) -> None:
    core = core_settings
    a = area_with_chunks(core, seeded_areas, 0, 1, seed=7)
    b = area_with_chunks(core, seeded_areas, 10, 1, seed=17)
    index_area(core, b)
    vectors = collect_area_vectors(core, a.area_id)  # an index job, mid-way
    delete_area(core, a.area_id)
    version = current_version(core.index_dir)
    assert publish_area(core, a.area_id, vectors) is None
    assert current_version(core.index_dir) == version
    assert shards_of(load_manifest(core.index_dir), a.area_id) == []
    assert not np.isin(a.ids, indexed_ids(core)).any()


def test_rebuild_recovers_the_index_from_the_vector_chunks(
    core_settings: CoreSettings,
    seeded_areas: list[int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    core = core_settings
    small = area_with_chunks(core, seeded_areas, 0, 2, seed=8, name="small")
    large = area_with_chunks(core, seeded_areas, 30, 40, seed=9, name="large")  # 1,040 windows
    index_area(core, small)
    index_area(core, large)
    for path in (core.index_dir / "shards").iterdir():  # the shard files are lost
        path.unlink()

    for key, value in {
        "CLIPRS_DATABASE_URL": core.database_url,
        "CLIPRS_REDIS_URL": core.redis_url,
        "CLIPRS_DATA_DIR": str(core.data_dir),
        "CLIPRS_REDIS_NAMESPACE": core.redis_namespace,
        "INDEXER_FLAT_MAX_VECTORS": "500",  # past it: the codec is trained, every shard compressed
        "INDEXER_SHARD_MAX_VECTORS": "500",
        "INDEXER_SHARD_MIN_VECTORS": "100",
        "INDEXER_GC_MIN_AGE_S": "0",
    }.items():
        monkeypatch.setenv(key, value)
    # Every area (a fresh index, the codec trained anew); the session's database may hold other
    # tests' areas, which have no vector chunks here.
    assert cli(["rebuild"]) == 0
    out = json.loads(capsys.readouterr().out)
    manifest = load_manifest(core.index_dir)
    assert out["version"] == manifest.version
    areas = {int(k): v for k, v in out["areas"].items()}
    assert (areas[small.area_id], areas[large.area_id]) == (52, 1040)
    assert out["vectors"] == manifest.vector_count == 52 + 1040
    assert out["shards"] == len(manifest.shards) >= 3
    assert all(s.count <= 500 for s in manifest.shards)
    # Past INDEXER_FLAT_MAX_VECTORS: one codec, every shard compressed, tuned to the target.
    assert manifest.codec is not None and {s.kind for s in manifest.shards} == {"ivfpq"}
    assert manifest.codec.recall_at_10 >= 0.95
    assert list_versions(core.index_dir) == [manifest.version]  # the broken versions were collected
    shardset = load_shardset(core.index_dir, manifest)
    for area in (small, large):
        vectors = collect_area_vectors(core, area.area_id).vectors
        found = [shardset.search(v, 1)[0][0] for v in vectors[:20]]  # as the searchers search
        assert np.mean(np.array(found) == area.ids[:20]) >= 0.9

    # Rebuilding one area leaves the shards not holding it as they were.
    report = rebuild(core, IndexerSettings(), [small.area_id])  # the settings from the environment
    again = load_manifest(core.index_dir)
    assert again.version == report.version == manifest.version + 1
    assert again.vector_count == manifest.vector_count and again.codec.file == manifest.codec.file
    untouched = [s for s in manifest.shards if small.area_id not in s.area_ids]
    assert untouched and all(s.stem in {x.stem for x in again.shards} for s in untouched)
    assert not {s.stem for s in shards_of(manifest, small.area_id)} & {s.stem for s in again.shards}

    assert cli(["rebuild", "--area", "999999"]) == 1
    assert "no area 999999" in capsys.readouterr().err
    assert Path(core.index_dir / "CURRENT").read_text() == str(again.version)


def test_rebuild_of_named_areas_with_lost_shard_files_says_to_rebuild_everything(
    core_settings: CoreSettings, seeded_areas: list[int]
) -> None:
    """Rebuilding some areas builds on the current version; when its files are gone the error
    says what recovers them (a full rebuild from the chunks), and that full rebuild does."""
    core = core_settings
    a = area_with_chunks(core, seeded_areas, 0, 2, seed=10)
    index_area(core, a)
    for path in (core.index_dir / "shards").iterdir():  # the shard files are lost
        path.unlink()
    with pytest.raises(ClipRSError, match="python -m cliprs_indexer rebuild"):
        rebuild(core, IndexerSettings(), [a.area_id])
    report = rebuild(core, IndexerSettings())
    assert report.vectors >= len(a.ids)
    assert set(a.ids.tolist()) <= set(indexed_ids(core).tolist())


def test_gc_removes_vector_chunks_of_tiles_that_no_longer_exist(
    core_settings: CoreSettings, seeded_areas: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    core = core_settings
    kept = area_with_chunks(core, seeded_areas, 0, 3, seed=11, name="kept")
    gone = area_with_chunks(core, seeded_areas, 10, 3, seed=12, name="gone")
    with sync_engine(core.database_url).begin() as conn:
        # Tiles deleted with their chunks left behind (an embedder finished one after the delete).
        conn.execute(text("DELETE FROM tiles WHERE id = ANY(:t)"), {"t": gone.tile_ids.tolist()})
        top = conn.execute(text("SELECT coalesce(max(id), 0) FROM tiles")).scalar()
    never = top + 5_000  # a tile id no row has had, in a folder of its own
    write_chunk(core.vectors_dir, never, np.array([never << 12]), np.ones((1, 32)), MODEL)
    orphans = [*gone.tile_ids.tolist(), never]
    hours_ago = time.time() - 2 * 3600
    for tile_id in [*orphans, *kept.tile_ids.tolist()]:
        os.utime(chunk_path(core.vectors_dir, tile_id), (hours_ago, hours_ago))
    fresh = orphans.pop()  # written moments ago: maybe for a tile whose row is not visible yet
    os.utime(chunk_path(core.vectors_dir, fresh))
    temp = chunk_path(core.vectors_dir, kept.tile_ids[0].item()).with_name(".x.npz.abc.tmp")
    temp.write_bytes(b"x")  # not a chunk
    monkeypatch.setattr("cliprs_indexer.maintenance.CHUNK_BATCH", 2)  # several batches of ids

    report = garbage_collect(
        core, IndexerSettings(gc_min_age_s=0, chunk_gc_min_age_s=600, chunk_gc_every_s=0)
    )
    assert report.removed_chunks == len(orphans) == 3
    assert report.as_dict()["removed_chunks"] == 3
    for tile_id in orphans:
        assert not chunk_path(core.vectors_dir, tile_id).exists()
    for tile_id in [*kept.tile_ids.tolist(), fresh]:
        assert chunk_path(core.vectors_dir, tile_id).exists()
    assert temp.exists()

    os.utime(chunk_path(core.vectors_dir, fresh), (hours_ago, hours_ago))  # old enough now
    assert (
        garbage_collect(
            core, IndexerSettings(gc_min_age_s=0, chunk_gc_min_age_s=600, chunk_gc_every_s=0)
        ).removed_chunks
        == 1
    )
    assert not chunk_path(core.vectors_dir, fresh).exists()
    assert sorted(t for t, _ in chunk_files(core.vectors_dir)) == sorted(kept.tile_ids.tolist())
    assert garbage_collect(core, NOW).removed_chunks == 0
    # One walk of the chunk folders per chunk_gc_every_s and process: a second GC soon after skips it.
    write_chunk(core.vectors_dir, never + 1, np.array([(never + 1) << 12]), np.ones((1, 32)), MODEL)
    os.utime(chunk_path(core.vectors_dir, never + 1), (hours_ago, hours_ago))
    settings = IndexerSettings(gc_min_age_s=0, chunk_gc_min_age_s=600, chunk_gc_every_s=3600)
    monkeypatch.setattr("cliprs_indexer.maintenance._chunks_collected_at", float("-inf"))
    assert garbage_collect(core, settings).removed_chunks == 1
    write_chunk(core.vectors_dir, never + 2, np.array([(never + 2) << 12]), np.ones((1, 32)), MODEL)
    os.utime(chunk_path(core.vectors_dir, never + 2), (hours_ago, hours_ago))
    assert garbage_collect(core, settings).removed_chunks == 0


def test_gc_removes_score_files_of_runs_that_are_gone(core_settings: CoreSettings) -> None:
    """A run's scores file goes with its row; one left behind (the run or its project deleted
    while the indexer was still scoring it, or by a search-api on another data dir) is garbage."""
    core = core_settings
    engine = sync_engine(core.database_url)
    with engine.begin() as conn:
        project = conn.execute(
            text("INSERT INTO projects (name) VALUES ('gc runs') RETURNING id")
        ).scalar_one()
        kept, gone = (
            conn.execute(
                text("INSERT INTO detect_runs (project_id) VALUES (:p) RETURNING id"), {"p": project}
            ).scalar_one()
            for _ in range(2)
        )
    try:
        for run_id in (kept, gone):
            runs.write_scores(runs.scores_path(core.data_dir, run_id), np.arange(3), np.full(3, 0.5))
        other = core.data_dir / "runs" / "notes.txt"  # not a scores file: never touched
        other.write_text("x")
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM detect_runs WHERE id = :r"), {"r": gone})
        report = garbage_collect(core, NOW)
        assert report.removed_run_files == 1
        assert runs.scores_path(core.data_dir, kept).exists() and other.exists()
        assert not runs.scores_path(core.data_dir, gone).exists()
        assert garbage_collect(core, NOW).removed_run_files == 0
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM projects WHERE id = :p"), {"p": project})
