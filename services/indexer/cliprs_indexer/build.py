"""Build areas' FAISS shards from their vector chunks and publish new index versions.

One shard per area, so adding an area never rebuilds another. A version is the set of shards
named by its manifest; publishing takes a PostgreSQL advisory lock, so indexer processes number
their versions one after the other and never lose each other's changes.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import redis

from cliprs.db.engine import sync_engine
from cliprs.errors import ClipRSError
from cliprs.fsutil import atomic_path
from cliprs.manifest import Manifest, Shard, load_manifest, publish
from cliprs.settings import CoreSettings
from cliprs.vectors import read_chunk
from cliprs_indexer import repository
from cliprs_indexer.settings import IndexerSettings
from cliprs_indexer.shards import BuiltShard, build_index

log = logging.getLogger("cliprs.indexer")


class ModelMismatch(ClipRSError):
    """Vectors of two different models cannot share one index."""


@dataclass
class AreaVectors:
    ids: np.ndarray
    vectors: np.ndarray
    model_id: str


def collect_area_vectors(core: CoreSettings, area_id: int) -> AreaVectors | None:
    """Every vector of the area's embedded tiles (None when there are none)."""
    with sync_engine(core.database_url).connect() as conn:
        tile_ids = repository.embedded_tile_ids(conn, area_id)
    ids, vecs, models = [], [], set()
    for tile_id in tile_ids:
        chunk = read_chunk(core.vectors_dir, tile_id)
        if chunk is None:
            log.warning("tile %s is marked embedded but has no vector chunk; skipped", tile_id)
            continue
        ids.append(chunk[0])
        vecs.append(chunk[1])
        models.add(chunk[2])
    if not ids:
        return None
    if len(models) > 1:
        raise ModelMismatch(f"area {area_id} has vectors from several models: {sorted(models)}; re-embed it")
    return AreaVectors(np.concatenate(ids), np.concatenate(vecs), models.pop())


def build_shard(vectors: AreaVectors, path: Path, settings: IndexerSettings | None = None) -> BuiltShard:
    """Build the shard that fits the area's size (FAISS ids = window ids) and write it atomically."""
    built = build_index(vectors.ids, vectors.vectors, settings or IndexerSettings())
    with atomic_path(path) as tmp:
        faiss.write_index(built.index, str(tmp))
    return built


def make_shard(
    core: CoreSettings, area_id: int, vectors: AreaVectors, settings: IndexerSettings | None = None
) -> Shard:
    """Build and write an area's shard under a fresh file name (files are never overwritten)."""
    rel = f"shards/area-{area_id}-{uuid.uuid4().hex[:12]}.faiss"
    built = build_shard(vectors, core.index_dir / rel, settings)
    return Shard(area_id=area_id, file=rel, count=len(vectors.ids), kind=built.kind, params=built.params)


def publish_changes(
    core: CoreSettings, changes: dict[int, Shard | None], model_id: str | None = None, dim: int | None = None
) -> Manifest | None:
    """Publish a version where each area in ``changes`` has its new shard (None: no shard).

    Shards of areas deleted meanwhile are dropped (a delete wins over a late index job).
    Returns the new manifest, or None when nothing was left to change.
    """
    index_dir = core.index_dir
    with sync_engine(core.database_url).begin() as conn:
        repository.lock_publishing(conn)
        alive = repository.live_area_ids(conn, list(changes))
        for area_id, shard in list(changes.items()):
            if shard is not None and area_id not in alive:
                log.info("area %s was deleted meanwhile; its new shard is not published", area_id)
                changes.pop(area_id)
        current = load_manifest(index_dir)
        if not changes:
            return None
        adding = any(s is not None for s in changes.values())
        if current and current.shards and adding and model_id and current.model_id != model_id:
            kept = [s for s in current.shards if s.area_id not in changes]
            if kept:
                raise ModelMismatch(
                    f"the index holds vectors of {current.model_id!r} but the new shards hold "
                    f"{model_id!r}; rebuild the whole index with one model"
                )
        last = repository.last_index_version(conn)
        version = max(last, current.version if current else 0) + 1
        shards = [s for s in (current.shards if current else []) if s.area_id not in changes]
        shards += [s for s in changes.values() if s is not None]
        shards.sort(key=lambda s: s.area_id)
        model_id = model_id if adding and model_id else (current.model_id if current else "")
        dim = dim if adding and dim else (current.dim if current else 0)
        manifest = Manifest(version=version, model_id=model_id, dim=dim, shards=shards)
        path = publish(index_dir, manifest)
        repository.record_index_version(
            conn, version, str(path), [s.file for s in shards], manifest.vector_count, model_id
        )
    announce(core, version)
    log.info("published index version %s: %d shards, %d vectors", version, len(shards), manifest.vector_count)
    return manifest


def publish_area(
    core: CoreSettings,
    area_id: int,
    vectors: AreaVectors | None,
    settings: IndexerSettings | None = None,
) -> Manifest | None:
    """Replace the area's shard (or remove it when ``vectors`` is None) in a new index version."""
    if vectors is None:
        return publish_changes(core, {area_id: None})
    shard = make_shard(core, area_id, vectors, settings)
    return publish_changes(core, {area_id: shard}, vectors.model_id, vectors.vectors.shape[1])


def announce(core: CoreSettings, version: int) -> None:
    """Tell every searcher that a new version is out."""
    client = redis.Redis.from_url(core.redis_url)
    try:
        client.publish(core.index_channel, json.dumps({"version": version}))
    finally:
        client.close()
