"""Index versions: adding an area's vectors, taking windows out, rebuilding; publishing each.

A version is a manifest naming shards (see `cliprs_index.store`). Every change makes a new
version that shares every untouched shard file with the previous one:

- **adding** an area encodes only the windows of its tiles that no shard holds yet (tiles shared
  with an indexed area are there already) into new shards, cut along the space-filling curve;
- **removing** windows (an area deleted) rewrites only the shards that hold them;
- small shards are then merged with their neighbours along the curve, so many small areas do not
  become many tiny shards;
- the first change that takes the index past ``flat_max_vectors`` trains the shared codec and
  re-encodes everything (once); later changes only encode.

The whole change runs under the PostgreSQL publish lock, so concurrent indexers apply their
changes one after the other, each on top of the version the previous one published.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import redis
from sqlalchemy.engine import Connection

from cliprs import query_sample
from cliprs.db.engine import sync_engine
from cliprs.errors import ClipRSError
from cliprs.manifest import Codec, Manifest, Shard, load_manifest, publish
from cliprs.settings import CoreSettings
from cliprs.vectors import read_chunk
from cliprs_index.shardset import ShardSet
from cliprs_index.store import (
    LoadedCodec,
    ShardData,
    open_shard,
    read_codec,
    tile_of,
    write_codec,
    write_shard,
)
from cliprs_indexer import layout, repository, shards
from cliprs_indexer.settings import IndexerSettings

_T = TypeVar("_T")
log = logging.getLogger("cliprs.indexer")


class ModelMismatch(ClipRSError):
    """Vectors of two different models cannot share one index."""


@dataclass
class AreaVectors:
    """Window ids and their vectors (float16), e.g. every embedded tile of an area."""

    ids: np.ndarray
    vectors: np.ndarray
    model_id: str


def read_tile_vectors(core: CoreSettings, tile_ids: Iterable[int]) -> AreaVectors | None:
    """The vectors of these tiles from their chunks (None when none has any)."""
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
        raise ModelMismatch(f"the tiles hold vectors of several models: {sorted(models)}; re-embed them")
    return AreaVectors(np.concatenate(ids), np.concatenate(vecs).astype(np.float16, copy=False), models.pop())


def collect_area_vectors(core: CoreSettings, area_id: int) -> AreaVectors | None:
    """Every vector of the area's embedded tiles (None when there are none)."""
    with sync_engine(core.database_url).connect() as conn:
        tile_ids = repository.embedded_tile_ids(conn, area_id)
    return read_tile_vectors(core, tile_ids)


# ------------------------------------------------------------------------------- the change


class _Change:
    """A new version being built on top of ``current`` (inside the publish lock)."""

    def __init__(
        self, core: CoreSettings, settings: IndexerSettings, conn: Connection, current: Manifest | None
    ):
        self.core, self.settings, self.conn = core, settings, conn
        self.index_dir = core.index_dir
        self.current = current
        self.model_id = current.model_id if current else ""
        self.dim = current.dim if current else 0
        self.codec = current.codec if current else None
        self.codec_index = None
        self.retune = False
        self.written: set[str] = set()  # stems of the shards this change wrote
        # Only ids and rows: rewriting and merging shards read those; their FAISS codes are read
        # only when the tuning searches them.
        try:
            if current is not None and current.codec is not None:
                self.codec_index = read_codec(self.index_dir, current.codec.file)
            self.shards: list[ShardData] = (
                [open_shard(self.index_dir, m, current.dim, searchable=False) for m in current.shards]
                if current
                else []
            )
        except FileNotFoundError as exc:
            raise ClipRSError(
                f"a file of index version {current.version} is missing ({exc.filename}); rebuild the "
                "whole index from the vector chunks: python -m cliprs_indexer rebuild"
            ) from exc

    def indexed_tiles(self) -> np.ndarray:
        return (
            np.unique(np.concatenate([s.tiles for s in self.shards]))
            if self.shards
            else np.empty(0, np.int64)
        )

    # ---- removing windows

    def remove_tiles(self, tiles: np.ndarray) -> int:
        """Take every window of ``tiles`` out; returns how many went."""
        removed = 0
        kept: list[ShardData] = []
        for shard in self.shards:
            gone = np.isin(tile_of(shard.ids), tiles)
            if not gone.any():
                kept.append(shard)
                continue
            removed += int(gone.sum())
            if not gone.all():
                ids = np.asarray(shard.ids[~gone])
                kept += self._write(
                    ids, np.asarray(shard.rows[~gone]), self._tile_info(np.unique(tile_of(ids)))
                )
            self._discard(shard)
        self.shards = kept
        return removed

    # ---- adding windows

    def add(self, vectors: AreaVectors) -> int:
        """Add the windows of tiles no shard holds yet; returns how many were added."""
        if self.model_id and self.shards and vectors.model_id != self.model_id:
            raise ModelMismatch(
                f"the index holds vectors of {self.model_id!r} but the new ones are of "
                f"{vectors.model_id!r}; rebuild the whole index with one model"
            )
        self.model_id, self.dim = vectors.model_id, vectors.vectors.shape[1]
        fresh = ~np.isin(tile_of(vectors.ids), self.indexed_tiles())
        ids, rows = vectors.ids[fresh], vectors.vectors[fresh]
        if len(ids) == 0:
            return 0
        if self.codec is None and self._total() + len(ids) > self.settings.flat_max_vectors:
            self._train_and_reencode(ids, rows)
        else:
            self._add_runs(ids, rows)
        return len(ids)

    def _add_runs(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """New shards of these windows, cut along the curve by size."""
        tiles = tile_of(ids)
        info = layout.spatial_order(self._tile_info(np.unique(tiles)))
        counts = dict(zip(*np.unique(tiles, return_counts=True), strict=True))
        for run in layout.cut(
            info, {int(k): int(v) for k, v in counts.items()}, self.settings.shard_max_vectors
        ):
            sel = np.isin(tiles, [t.id for t in run])
            self.shards += self._write(ids[sel], rows[sel], run)

    def _train_and_reencode(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Train the shared codec on a sample of everything, then encode every shard with it."""
        old = self.shards
        all_ids = np.concatenate([np.asarray(s.ids) for s in old] + [ids])
        all_rows = np.concatenate([np.asarray(s.rows) for s in old] + [rows])
        n = len(all_ids)
        rng = np.random.default_rng(1234)
        sample = all_rows[
            np.sort(rng.choice(n, shards.train_size(n, self.dim, self.settings), replace=False))
        ]
        codec_index, p = shards.train(sample, n, self.settings)
        self.codec_index = write_codec(self.index_dir, codec_index)
        self.codec = Codec(
            file=self.codec_index.file,
            nlist=p.nlist,
            pq=p.pq,
            nprobe=p.nlist,
            k_factor=self.settings.k_factor,
            trained_on=n,
            params={
                "train_size": len(sample),
                "device": "gpu" if shards.gpu_available(self.settings) else "cpu",
            },
        )
        for shard in old:
            self._discard(shard)
        self.shards = []
        self._add_runs(all_ids, all_rows)
        self.retune = True

    # ---- merging small shards

    def compact(self) -> None:
        small = [
            (i, s.count, layout.envelope_key(s.meta.envelope))
            for i, s in enumerate(self.shards)
            if s.count < self.settings.shard_min_vectors and s.meta.envelope
        ]
        groups = layout.merge_groups(small, self.settings.shard_max_vectors)
        if not groups:
            return
        merged_away = {i for g in groups for i in g}
        out = [s for i, s in enumerate(self.shards) if i not in merged_away]
        for i in merged_away:
            self._discard(self.shards[i])
        for group in groups:
            parts = [self.shards[i] for i in group]
            ids = np.concatenate([np.asarray(s.ids) for s in parts])
            rows = np.concatenate([np.asarray(s.rows) for s in parts])
            out += self._write(ids, rows, self._tile_info(np.unique(tile_of(ids))))
        log.info("merged %d small shards into %d", len(merged_away), len(groups))
        self.shards = out

    # ---- helpers

    def _discard(self, shard: ShardData) -> None:
        """Remove the files of a shard written by this change and replaced before publishing
        (files of published shards are left to the garbage collector)."""
        if shard.meta.stem in self.written:
            for rel in shard.meta.files():
                (self.index_dir / rel).unlink(missing_ok=True)

    def _total(self) -> int:
        return sum(s.count for s in self.shards)

    def _tile_info(self, tile_ids: np.ndarray) -> list[layout.TileInfo]:
        rows = repository.tile_positions(self.conn, tile_ids.tolist())
        if len(rows) != len(tile_ids):
            missing = sorted(set(tile_ids.tolist()) - {r[0] for r in rows})
            raise ClipRSError(f"vectors of tiles the database does not know: {missing[:10]}")
        return [layout.TileInfo(*r) for r in rows]

    def _write(self, ids: np.ndarray, rows: np.ndarray, tiles: list[layout.TileInfo]) -> list[ShardData]:
        stem, kind = write_shard(self.index_dir, ids, rows, self.codec_index if self.codec else None)
        self.written.add(stem)
        meta = Shard(
            stem=stem,
            count=len(ids),
            kind=kind,
            envelope=layout.envelope(tiles) if tiles else [],
            zooms=sorted({t.z for t in tiles}),
            tiles=len(tiles),
        )
        return [open_shard(self.index_dir, meta, self.dim, searchable=False)]

    def finish(self) -> Manifest:
        """The new version's manifest (numbered, area ids refreshed, a new codec tuned)."""
        area_of = repository.live_areas_of_tiles(self.conn)
        metas = []
        for s in self.shards:
            areas = sorted({a for t in s.tiles.tolist() for a in area_of.get(t, ())})
            metas.append(replace(s.meta, area_ids=areas, tiles=len(s.tiles)))
        version = _next_version(self.conn, self.current)
        manifest = Manifest(
            version=version, model_id=self.model_id, dim=self.dim, shards=metas, codec=self.codec
        )
        if (
            manifest.codec is not None
            and manifest.shards
            and (self.retune or manifest.codec.recall_at_10 is None)
        ):
            # A new codec is tuned before its first use (untuned it probes every list).
            manifest.codec = shards.tune(
                _searchable(self.index_dir, manifest, self.codec_index),
                self.settings,
                text_sample(self.core, manifest),
            )
        return manifest


def _next_version(conn: Connection, current: Manifest | None) -> int:
    return max(repository.last_index_version(conn), current.version if current else 0) + 1


def _searchable(index_dir: Path, manifest: Manifest, codec: LoadedCodec) -> ShardSet:
    return ShardSet(manifest, [open_shard(index_dir, m, manifest.dim, codec) for m in manifest.shards], codec)


def _publish(core: CoreSettings, conn: Connection, manifest: Manifest) -> None:
    """Write the manifest, point CURRENT at it and record the version (under the publish lock)."""
    path = publish(core.index_dir, manifest)
    repository.record_index_version(
        conn, manifest.version, str(path), sorted(manifest.files()), manifest.vector_count, manifest.model_id
    )


def retune_due(manifest: Manifest, settings: IndexerSettings, sampled_text_queries: int = 0) -> bool:
    """True when the index has grown ``retune_growth`` times since its codec was last tuned, when
    the codec has no text probe yet (tuned before there was one), or when its text probe was
    tuned on the modality-gap model and ``sampled_text_queries`` real ones are now enough."""
    if manifest.codec is None or not manifest.shards:
        return False
    codec = manifest.codec
    tuned_on = codec.params.get("tuned_on") or codec.trained_on
    on_model = codec.params.get("text_tuned_with") != shards.TUNED_ON_QUERIES
    return (
        manifest.vector_count >= settings.retune_growth * tuned_on
        or codec.text_nprobe is None
        or (on_model and sampled_text_queries >= settings.text_tune_min_queries)
    )


def sampled_text_queries(core: CoreSettings, manifest: Manifest) -> int:
    """How many text query vectors the search-api has kept for the index's model."""
    return _read_sample(core, lambda c: query_sample.size(c, core.redis_namespace, manifest.model_id), 0)


def text_sample(core: CoreSettings, manifest: Manifest) -> np.ndarray:
    """The text query vectors the search-api kept for the index's model (none when Redis fails:
    the tuning then uses the modality-gap model)."""
    ns, model, dim = core.redis_namespace, manifest.model_id, manifest.dim
    return _read_sample(
        core, lambda c: query_sample.recent(c, ns, model, dim), np.empty((0, dim), dtype=np.float32)
    )


def _read_sample(core: CoreSettings, read: Callable[[redis.Redis], _T], failed: _T) -> _T:
    """``read`` on a Redis client, or ``failed`` (logged) when Redis cannot answer."""
    try:
        with redis.Redis.from_url(core.redis_url) as client:
            return read(client)
    except redis.RedisError as exc:
        log.warning("the text query sample could not be read: %s", type(exc).__name__)
        return failed


def retune(core: CoreSettings, settings: IndexerSettings) -> Manifest | None:
    """Tune the current version's codec again and publish the same shards with the new search
    parameters (the indexer's ``indexer.retune`` task, queued by a change that made
    `retune_due` true, so the tuning, minutes at 10M vectors, never delays serving that change).
    It runs outside the publish lock; the result is published only if the codec is still the one
    it measured (a rebuild meanwhile retrains and tunes its own)."""
    current = load_manifest(core.index_dir)
    if current is None or current.codec is None or not current.shards:
        return None
    measured = copy.deepcopy(current)
    tuned = shards.tune(
        _searchable(core.index_dir, measured, read_codec(core.index_dir, current.codec.file)),
        settings,
        text_sample(core, current),
    )
    with sync_engine(core.database_url).begin() as conn:
        repository.lock_publishing(conn)
        latest = load_manifest(core.index_dir)
        if latest is None or latest.codec is None or latest.codec.file != tuned.file:
            return None
        latest.version = _next_version(conn, latest)
        latest.codec = tuned
        latest.created_at = 0.0
        _publish(core, conn, latest)
    announce(core, latest.version)
    log.info(
        "published index version %s: re-tuned nprobe=%d k_factor=%d, text nprobe=%d k_factor=%d",
        latest.version,
        tuned.nprobe,
        tuned.k_factor,
        tuned.text_nprobe,
        tuned.text_k_factor,
    )
    return latest


def apply(
    core: CoreSettings,
    settings: IndexerSettings,
    add: AreaVectors | Callable[[Connection], AreaVectors | None] | None = None,
    remove_tiles: Iterable[int] = (),
    only_if_alive: int | None = None,
    fresh: bool = False,
) -> Manifest | None:
    """Publish a new version: the current one minus the windows of ``remove_tiles`` plus ``add``.

    ``add`` may be a function of the connection that holds the publish lock: it then reads what
    to add under the lock, so nothing published meanwhile is overwritten by an older view
    (what a full rebuild needs). ``fresh``: start from an empty index instead (a full rebuild:
    the codec is trained again). ``only_if_alive``: an area id; nothing is published when that
    area is gone or being deleted by then (a delete wins over a late index job). Returns the new
    manifest, or None.
    """
    with sync_engine(core.database_url).begin() as conn:
        repository.lock_publishing(conn)
        if only_if_alive is not None and not repository.live_area_ids(conn, [only_if_alive]):
            log.info("area %s was deleted meanwhile; its vectors are not published", only_if_alive)
            return None
        if callable(add):
            add = add(conn)
        current = load_manifest(core.index_dir)
        change = _Change(core, settings, conn, None if fresh else current)
        change.current = current
        removed = change.remove_tiles(np.asarray(sorted(set(remove_tiles)), dtype=np.int64))
        added = change.add(add) if add is not None else 0
        change.compact()
        manifest = change.finish()
        _publish(core, conn, manifest)
    announce(core, manifest.version)
    log.info(
        "published index version %s: +%d -%d windows, %d shards (%d reused), %d vectors",
        manifest.version,
        added,
        removed,
        len(manifest.shards),
        len(
            set(s.stem for s in manifest.shards)
            & {s.stem for s in (change.current.shards if change.current else [])}
        ),
        manifest.vector_count,
    )
    return manifest


def publish_area(
    core: CoreSettings,
    area_id: int,
    vectors: AreaVectors | None,
    settings: IndexerSettings | None = None,
) -> Manifest | None:
    """Publish a version that holds the area's windows (its tiles not indexed yet are added)."""
    if vectors is None:
        return None
    return apply(core, settings or IndexerSettings(), add=vectors, only_if_alive=area_id)


def announce(core: CoreSettings, version: int) -> None:
    """Tell every searcher that a new version is out."""
    client = redis.Redis.from_url(core.redis_url)
    try:
        client.publish(core.index_channel, json.dumps({"version": version}))
    finally:
        client.close()
