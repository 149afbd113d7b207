"""Index upkeep: removing versions no searcher holds, vector chunks of tiles that no longer
exist and scores files of runs that no longer exist, deleting an area, rebuilding everything."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
from sqlalchemy.engine import Connection

from cliprs import runs
from cliprs.db.engine import sync_engine
from cliprs.errors import NotFound
from cliprs.manifest import GarbageReport, collect_garbage, held_versions
from cliprs.settings import CoreSettings
from cliprs.vectors import chunk_files, chunk_path
from cliprs_index.store import tile_of
from cliprs_indexer import repository
from cliprs_indexer.build import AreaVectors, apply, read_tile_vectors
from cliprs_indexer.settings import IndexerSettings

log = logging.getLogger("cliprs.indexer")

# Tile ids of vector chunks looked up per query by the chunk collection.
CHUNK_BATCH = 10_000
_chunks_collected_at = float("-inf")  # when this process last walked the chunk folders


@dataclass
class GcReport(GarbageReport):
    """What one collection removed: index versions and their files, and vector chunks."""

    removed_chunks: int = 0  # vector chunks of tiles that no longer exist
    removed_run_files: int = 0  # scores files of runs that no longer exist


def garbage_collect(core: CoreSettings, settings: IndexerSettings) -> GcReport:
    """Remove the index versions older than CURRENT that no live searcher holds, and their files;
    then the vector chunks of tiles that no longer exist (see `collect_chunks`)."""
    client = redis.Redis.from_url(core.redis_url)
    try:
        held = held_versions(client, core.redis_namespace)
    finally:
        client.close()
    with sync_engine(core.database_url).begin() as conn:
        # Under the publish lock: no version appears while we decide what is garbage.
        repository.lock_publishing(conn)
        found = collect_garbage(core.index_dir, held, settings.gc_min_age_s, settings.gc_orphan_age_s)
        if found.removed_versions:
            repository.mark_versions_removed(conn, found.removed_versions)
    report = GcReport(**found.as_dict())
    if report.removed_versions or report.removed_files:
        log.info(
            "removed index versions %s and %d shard files; still held: %s",
            report.removed_versions,
            len(report.removed_files),
            report.kept_versions,
        )
    report.removed_run_files = collect_run_files(core)
    global _chunks_collected_at
    # Walking every chunk folder costs seconds at millions of tiles: at most every chunk_gc_every_s.
    if time.monotonic() - _chunks_collected_at >= settings.chunk_gc_every_s:
        report.removed_chunks = collect_chunks(core, settings.chunk_gc_min_age_s)
        _chunks_collected_at = time.monotonic()
    return report


def collect_run_files(core: CoreSettings) -> int:
    """Remove the scores files whose run is not in ``detect_runs`` (a project deleted while the
    indexer still scored one of its runs, or by a search-api on another data dir); returns how
    many. A run's row exists before its file is written and run ids are never reused, so a
    file whose run is gone stays garbage."""
    files = runs.scores_files(core.data_dir)
    if not files:
        return 0
    with sync_engine(core.database_url).connect() as conn:
        gone = sorted(set(files) - repository.existing_run_ids(conn, list(files)))
    removed = runs.remove_scores(core.data_dir, gone)
    if removed:
        log.info("removed %d scores files of runs that no longer exist", removed)
    return removed


def collect_chunks(core: CoreSettings, min_age_s: float) -> int:
    """Remove the vector chunks whose tile is not in the ``tiles`` table (a deleted area's, one an
    embedder wrote for a tile deleted meanwhile) and that are older than ``min_age_s`` (a chunk
    just written is never touched); returns how many. Tile ids are looked up ``CHUNK_BATCH`` at a
    time as the folders are walked: neither the table nor the list of chunks is held whole.
    Tile ids are never reused, so a chunk whose tile is gone stays garbage."""
    removed = kept_young = 0
    now = time.time()
    engine = sync_engine(core.database_url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for batch in _batches(chunk_files(core.vectors_dir), CHUNK_BATCH):
            known = repository.existing_tile_ids(conn, [t for t, _ in batch])
            for tile_id, path in batch:
                if tile_id in known:
                    continue
                try:
                    if now - path.stat().st_mtime < min_age_s:
                        kept_young += 1
                        continue
                    path.unlink()
                except FileNotFoundError:  # removed meanwhile (e.g. by delete_area)
                    continue
                removed += 1
    if removed or kept_young:
        log.info(
            "removed %d vector chunks of tiles that no longer exist (%d younger than %.0f s kept)",
            removed,
            kept_young,
            min_age_s,
        )
    return removed


def _batches(items: Iterator[tuple[int, Path]], size: int) -> Iterator[list[tuple[int, Path]]]:
    batch: list[tuple[int, Path]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def analyze_windows(core: CoreSettings) -> None:
    """Refresh the planner's statistics of the windows table after a bulk change, so the
    gateway's joins (ids x geometry filters) get good plans before autovacuum catches up."""
    with sync_engine(core.database_url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        repository.analyze_windows(conn)


@dataclass
class DeleteReport:
    area_id: int
    version: int | None
    tiles_deleted: int
    windows_deleted: int
    chunks_deleted: int


def delete_area(core: CoreSettings, area_id: int, settings: IndexerSettings | None = None) -> DeleteReport:
    """Take the area's windows out of the index (a new version), then delete its rows.

    Tiles shared with another area stay (with their windows, which the index keeps for that
    area); only tiles no other area uses are deleted, with their windows and vector chunks. Only
    the shards holding those windows are rewritten.
    """
    engine = sync_engine(core.database_url)
    with engine.begin() as conn:
        found = repository.mark_area_deleting(conn, area_id)
    if not found:
        raise NotFound(f"no area {area_id}")
    with engine.connect() as conn:
        tile_ids = repository.unshared_tile_ids(conn, area_id)
    manifest = apply(core, settings or IndexerSettings(), remove_tiles=tile_ids)
    taken_out = set(tile_ids)
    with engine.begin() as conn:
        # Lock the candidate tiles before deciding which are unshared: an area being planned
        # over them meanwhile either linked them already (then they are shared and stay) or
        # waits for this transaction and plans fresh rows. Deciding first and deleting after
        # would let the cascade take a link made in between: a silent hole in the new area.
        repository.lock_tiles(conn, repository.area_tile_ids(conn, area_id))
        tile_ids = repository.unshared_tile_ids(conn, area_id)
        windows_deleted = repository.count_windows(conn, tile_ids)
        repository.delete_tiles(conn, tile_ids)  # their windows cascade
        repository.hand_over_shared_tiles(conn, area_id)
        repository.delete_area_row(conn, area_id)
    # Tiles another area linked after the index change above are kept: put their windows back.
    kept = sorted(taken_out - set(tile_ids))
    if kept:
        log.info(
            "area %s: %d of its tiles were taken up by another area meanwhile; re-indexed", area_id, len(kept)
        )
        apply(core, settings or IndexerSettings(), add=read_tile_vectors(core, kept))
    chunks = 0
    for tile_id in tile_ids:
        path = chunk_path(core.vectors_dir, tile_id)
        if path.exists():
            path.unlink(missing_ok=True)
            chunks += 1
    log.info("area %s deleted: %d tiles, %d vector chunks", area_id, len(tile_ids), chunks)
    return DeleteReport(
        area_id=area_id,
        version=manifest.version if manifest else None,
        tiles_deleted=len(tile_ids),
        windows_deleted=windows_deleted,
        chunks_deleted=chunks,
    )


@dataclass
class RebuildReport:
    version: int | None
    areas: dict[int, int] = field(default_factory=dict)  # area id -> vectors of its tiles
    removed: list[int] = field(default_factory=list)  # areas without any vectors left
    vectors: int = 0
    shards: int = 0


def rebuild(
    core: CoreSettings, settings: IndexerSettings, area_ids: list[int] | None = None
) -> RebuildReport:
    """Re-read the windows of ``area_ids`` (default: every area: a fresh index, its codec
    retrained) from the stored vector chunks and publish them as one new version."""
    engine = sync_engine(core.database_url)
    fresh = area_ids is None
    if area_ids is not None:
        with engine.connect() as conn:
            known = repository.existing_area_ids(conn, area_ids)
        missing = sorted(set(area_ids) - known)
        if missing:
            raise NotFound(f"no area {', '.join(map(str, missing))}")
    report = RebuildReport(version=None)
    everything: list[int] = []

    def read_under_lock(conn: Connection) -> AreaVectors | None:
        # Under the publish lock: an area indexed while a long rebuild reads is either in
        # this read or published after it, never overwritten by an older view of the index.
        ids = repository.all_live_area_ids(conn) if fresh else area_ids
        tiles = {a: repository.embedded_tile_ids(conn, a) for a in ids}
        everything.extend(t for ts in tiles.values() for t in ts)
        vectors = read_tile_vectors(core, sorted(set(everything)))
        for area_id, ts in tiles.items():
            if vectors is None or not ts:
                report.removed.append(area_id)
                continue
            report.areas[area_id] = int(np.isin(tile_of(vectors.ids), ts).sum())
        return vectors

    # `apply` calls read_under_lock before it reads remove_tiles, so the list is filled by then.
    manifest = apply(core, settings, add=read_under_lock, remove_tiles=everything, fresh=fresh)
    report.version = manifest.version if manifest else None
    report.vectors = manifest.vector_count if manifest else 0
    report.shards = len(manifest.shards) if manifest else 0
    return report
