"""Index upkeep: removing versions no searcher holds, deleting an area, rebuilding everything."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import redis

from cliprs.db.engine import sync_engine
from cliprs.errors import NotFound
from cliprs.manifest import GarbageReport, collect_garbage, held_versions
from cliprs.settings import CoreSettings
from cliprs.vectors import chunk_path
from cliprs_index.store import tile_of
from cliprs_indexer import repository
from cliprs_indexer.build import apply, read_tile_vectors
from cliprs_indexer.settings import IndexerSettings

log = logging.getLogger("cliprs.indexer")


def garbage_collect(core: CoreSettings, settings: IndexerSettings) -> GarbageReport:
    """Remove the index versions older than CURRENT that no live searcher holds, and their files."""
    client = redis.Redis.from_url(core.redis_url)
    try:
        held = held_versions(client, core.redis_namespace)
    finally:
        client.close()
    with sync_engine(core.database_url).begin() as conn:
        # Under the publish lock: no version appears while we decide what is garbage.
        repository.lock_publishing(conn)
        report = collect_garbage(core.index_dir, held, settings.gc_min_age_s, settings.gc_orphan_age_s)
        if report.removed_versions:
            repository.mark_versions_removed(conn, report.removed_versions)
    if report.removed_versions or report.removed_files:
        log.info(
            "removed index versions %s and %d shard files; still held: %s",
            report.removed_versions,
            len(report.removed_files),
            report.kept_versions,
        )
    return report


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
    with engine.begin() as conn:
        tile_ids = repository.unshared_tile_ids(conn, area_id)
        windows_deleted = repository.count_windows(conn, tile_ids)
        repository.delete_tiles(conn, tile_ids)  # their windows cascade
        repository.hand_over_shared_tiles(conn, area_id)
        repository.delete_area_row(conn, area_id)
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
    with engine.connect() as conn:
        if area_ids is None:
            area_ids = repository.all_live_area_ids(conn)
        else:
            known = repository.existing_area_ids(conn, area_ids)
            missing = sorted(set(area_ids) - known)
            if missing:
                raise NotFound(f"no area {', '.join(map(str, missing))}")
        tiles = {a: repository.embedded_tile_ids(conn, a) for a in area_ids}
    report = RebuildReport(version=None)
    everything = [t for ts in tiles.values() for t in ts]
    vectors = read_tile_vectors(core, sorted(set(everything)))
    for area_id, ts in tiles.items():
        if vectors is None or not ts:
            report.removed.append(area_id)
            continue
        report.areas[area_id] = int(np.isin(tile_of(vectors.ids), ts).sum())
    manifest = apply(core, settings, add=vectors, remove_tiles=everything, fresh=fresh)
    report.version = manifest.version if manifest else None
    report.vectors = manifest.vector_count if manifest else 0
    report.shards = len(manifest.shards) if manifest else 0
    return report
