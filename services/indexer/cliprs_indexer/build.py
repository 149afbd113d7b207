"""Build an area's FAISS shard from its vector chunks and publish a new index version."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import redis
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.errors import ClipRSError
from cliprs.fsutil import atomic_path
from cliprs.manifest import Manifest, Shard, load_manifest, publish
from cliprs.settings import CoreSettings
from cliprs.vectors import read_chunk

log = logging.getLogger("cliprs.indexer")

# Serialises version numbering across indexer processes (any 64-bit constant works).
PUBLISH_LOCK_KEY = 0x434C49505253


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
        tile_ids = (
            conn.execute(
                text(
                    "SELECT t.id FROM area_tiles at JOIN tiles t ON t.id = at.tile_id "
                    "WHERE at.area_id = :a AND t.status = 'embedded' ORDER BY t.id"
                ),
                {"a": area_id},
            )
            .scalars()
            .all()
        )
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


def build_shard(vectors: AreaVectors, path: Path) -> None:
    """Exact inner-product shard whose FAISS ids are the window ids."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.vectors.shape[1]))
    index.add_with_ids(np.ascontiguousarray(vectors.vectors), vectors.ids)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def publish_area(core: CoreSettings, area_id: int, vectors: AreaVectors | None) -> Manifest:
    """Replace the area's shard (or remove it when ``vectors`` is None) in a new index version."""
    index_dir = core.index_dir
    shard: Shard | None = None
    if vectors is not None:
        rel = f"shards/area-{area_id}-{uuid.uuid4().hex[:12]}.faiss"
        build_shard(vectors, index_dir / rel)
        shard = Shard(area_id=area_id, file=rel, count=len(vectors.ids), kind="flat")
    with sync_engine(core.database_url).begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PUBLISH_LOCK_KEY})
        current = load_manifest(index_dir)
        if current and vectors and current.shards and current.model_id != vectors.model_id:
            raise ModelMismatch(
                f"the index holds vectors of {current.model_id!r} but area {area_id} was embedded with "
                f"{vectors.model_id!r}; rebuild the index with one model"
            )
        last = conn.execute(text("SELECT coalesce(max(version), 0) FROM index_versions")).scalar()
        version = max(last, current.version if current else 0) + 1
        shards = [s for s in (current.shards if current else []) if s.area_id != area_id]
        if shard:
            shards.append(shard)
        model_id = vectors.model_id if vectors else (current.model_id if current else "")
        dim = vectors.vectors.shape[1] if vectors else (current.dim if current else 0)
        manifest = Manifest(version=version, model_id=model_id, dim=dim, shards=shards)
        path = publish(index_dir, manifest)
        conn.execute(
            text(
                "INSERT INTO index_versions (version, manifest_path, shard_files, vector_count, model_id) "
                "VALUES (:v, :p, CAST(:f AS jsonb), :n, :m)"
            ),
            {
                "v": version,
                "p": str(path),
                "f": json.dumps([s.file for s in shards]),
                "n": manifest.vector_count,
                "m": model_id,
            },
        )
    announce(core, version)
    log.info("published index version %s: %d shards, %d vectors", version, len(shards), manifest.vector_count)
    return manifest


def announce(core: CoreSettings, version: int) -> None:
    """Tell every searcher that a new version is out."""
    client = redis.Redis.from_url(core.redis_url)
    try:
        client.publish(core.index_channel, json.dumps({"version": version}))
    finally:
        client.close()
