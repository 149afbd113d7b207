"""The searcher's view of the FAISS index, swapped atomically when a new version is published.

A request takes one snapshot (`LoadedIndex`) and uses it to the end, so a swap in the middle of
a request never mixes versions; new versions load in a background thread before the swap.
Each process registers the versions it holds (and the one it is loading) in Redis with a TTL,
so the indexer never removes files a searcher is about to read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import redis

from cliprs.manifest import (
    Manifest,
    Shard,
    current_version,
    load_manifest,
    register_searcher,
    search_shard,
    unregister_searcher,
)

log = logging.getLogger("cliprs.search.index")


@dataclass
class LoadedIndex:
    manifest: Manifest
    shards: list[faiss.Index] = field(default_factory=list)
    # Random indexed windows: filter selectivity and query confidence are estimated on them.
    sample: Sample | None = None
    # Window ids by position of the IVF-PQ shards (selector searches map positions back).
    id_maps: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, (meta, shard) in enumerate(zip(self.manifest.shards, self.shards, strict=True)):
            if meta.kind == "ivfpq" and i not in self.id_maps:
                self.id_maps[i] = faiss.vector_to_array(shard.id_map)

    @property
    def version(self) -> int:
        return self.manifest.version

    def _picked(self, area_id: int | None) -> list[tuple[int, Shard, faiss.Index]]:
        pairs = enumerate(zip(self.manifest.shards, self.shards, strict=True))
        return [(i, m, s) for i, (m, s) in pairs if area_id is None or m.area_id == area_id]

    def total(self, area_id: int | None = None) -> int:
        """Vectors a search (of one area, or all) looks at."""
        return sum(s.ntotal for _, _, s in self._picked(area_id))

    def search(
        self,
        query: np.ndarray,
        k: int,
        area_id: int | None = None,
        selector: faiss.IDSelector | None = None,
    ) -> list[tuple[int, float]]:
        """Best ``k`` (window id, score) over the shards (of ``area_id``), highest score first,
        ids unique; ``selector`` limits the search to the window ids it contains."""
        best: dict[int, float] = {}
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        for i, meta, shard in self._picked(area_id):
            if shard.ntotal == 0:
                continue
            scores, ids = search_shard(shard, meta, q, min(k, shard.ntotal), selector, self.id_maps.get(i))
            for wid, score in zip(ids[0].tolist(), scores[0].tolist(), strict=True):
                if wid >= 0 and score > best.get(wid, -np.inf):
                    best[wid] = score
        return sorted(best.items(), key=lambda kv: -kv[1])[:k]

    def vector_of(self, window_id: int) -> np.ndarray | None:
        for shard in self.shards:
            try:
                return shard.reconstruct(int(window_id))
            except RuntimeError:  # not in this shard
                continue
        return None

    def vectors_of(self, window_ids: list[int]) -> tuple[list[int], np.ndarray]:
        """(ids found, their vectors) for the ids that are in the index."""
        found, vecs = [], []
        for wid in window_ids:
            v = self.vector_of(wid)
            if v is not None:
                found.append(wid)
                vecs.append(v)
        dim = self.manifest.dim or (self.shards[0].d if self.shards else 0)
        return found, np.asarray(vecs, dtype=np.float32).reshape(len(found), dim)


@dataclass
class Sample:
    """Random indexed windows: their ids (whose rows estimate how selective a filter is) and
    vectors (the baseline that query confidence is measured against), by shard."""

    ids: np.ndarray
    vectors: np.ndarray
    area_ids: np.ndarray

    def ids_of(self, area_id: int | None = None) -> np.ndarray:
        return self.ids if area_id is None else self.ids[self.area_ids == area_id]


def sample_index(
    shards: list[faiss.Index], area_ids: list[int], n: int, per_shard: int = 256, seed: int = 0
) -> Sample | None:
    """About ``n`` random windows over all shards in proportion to their sizes, and at least
    ``per_shard`` (or all) of each shard, so that a search of one area has a sample too."""
    total = sum(s.ntotal for s in shards)
    if total == 0 or n <= 0:
        return None
    rng = np.random.default_rng(seed)
    ids, vectors, areas = [], [], []
    for shard, area_id in zip(shards, area_ids, strict=True):
        if shard.ntotal == 0:
            continue
        take = min(shard.ntotal, max(per_shard, round(n * shard.ntotal / total)))
        all_ids = faiss.vector_to_array(shard.id_map) if hasattr(shard, "id_map") else np.arange(shard.ntotal)
        for wid in rng.choice(all_ids, take, replace=False).tolist():
            ids.append(wid)
            vectors.append(shard.reconstruct(int(wid)))
            areas.append(area_id)
    return Sample(np.asarray(ids, dtype=np.int64), np.asarray(vectors, dtype=np.float32), np.asarray(areas))


class Registration:
    """This process's entry in the indexer's list of live searchers (best effort)."""

    def __init__(self, redis_url: str, namespace: str, ttl_s: float, searcher_id: str | None = None):
        self.client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.searcher_id = searcher_id or uuid.uuid4().hex[:12]

    def hold(self, versions: set[int]) -> None:
        try:
            register_searcher(self.client, self.namespace, self.searcher_id, versions, self.ttl_s)
        except redis.RedisError as exc:  # the index still serves; GC just cannot see us
            log.warning("cannot register held index versions: %s", exc)

    def release(self) -> None:
        try:
            unregister_searcher(self.client, self.namespace, self.searcher_id)
        except redis.RedisError:
            pass
        self.client.close()


class IndexHolder:
    """Holds the current `LoadedIndex` and follows new versions (Redis announcements + polling)."""

    def __init__(self, index_dir: Path, registration: Registration | None = None, sample_size: int = 2048):
        self.index_dir = Path(index_dir)
        self.registration = registration
        self.sample_size = sample_size
        self._current: LoadedIndex | None = None
        self._loading: int | None = None
        self._load_lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def current(self) -> LoadedIndex | None:
        return self._current

    def heartbeat(self) -> None:
        """Renew this process's claim on the versions it holds or is loading."""
        if self.registration is None:
            return
        held = {v for v in (self._loading, self._current.version if self._current else None) if v}
        self.registration.hold(held)

    def load(self, version: int | None = None) -> LoadedIndex | None:
        """Load ``version`` (default: CURRENT) unless it is not newer; then swap it in."""
        with self._load_lock:
            version = current_version(self.index_dir) if version is None else version
            if version is None or (self._current and self._current.version >= version):
                return self._current
            self._loading = version
            self.heartbeat()  # claim it before reading its files
            try:
                loaded = self._read(version)
            except FileNotFoundError:
                # Removed meanwhile: a newer version replaced it before we registered; CURRENT
                # names that one.
                log.info("index version %s is gone; loading CURRENT instead", version)
                self._loading = None
                newest = current_version(self.index_dir)
                if newest is None or newest == version:
                    raise
                self._loading = newest
                self.heartbeat()
                loaded = self._read(newest)
            finally:
                self._loading = None
            if self._current is None or loaded.version > self._current.version:
                self._current = loaded  # the swap: one reference assignment
            self.heartbeat()
            log.info(
                "index version %s live: %d shards, %d vectors",
                loaded.version,
                len(loaded.shards),
                loaded.manifest.vector_count,
            )
            return self._current

    def _read(self, version: int) -> LoadedIndex:
        manifest = load_manifest(self.index_dir, version)
        if manifest is None:  # only when no version is given and none is published
            raise FileNotFoundError(f"no manifest of index version {version} in {self.index_dir}")
        shards = [faiss.read_index(str(self.index_dir / s.file)) for s in manifest.shards]
        sample = sample_index(shards, [s.area_id for s in manifest.shards], self.sample_size)
        return LoadedIndex(manifest, shards, sample)

    def follow(
        self, redis_url: str, channel: str, poll_s: float, heartbeat_s: float = 5.0
    ) -> threading.Thread:
        """Start a daemon thread that loads each announced version, polls CURRENT every
        ``poll_s`` as a safety net, and renews the registration every ``heartbeat_s``."""

        def run() -> None:
            while not self._stop.is_set():
                try:
                    client = redis.Redis.from_url(redis_url, socket_timeout=max(poll_s, heartbeat_s) + 5)
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(channel)
                    self.load()  # catch up on anything published before we subscribed
                    last_poll = time.monotonic()
                    while not self._stop.is_set():
                        msg = pubsub.get_message(timeout=min(poll_s, heartbeat_s))
                        if msg and msg.get("type") == "message":
                            self.load(int(json.loads(msg["data"])["version"]))
                        elif time.monotonic() - last_poll >= poll_s:
                            self.load()
                            last_poll = time.monotonic()
                        self.heartbeat()
                except Exception:
                    log.exception("index follower error; retrying")
                    self._stop.wait(2)

        thread = threading.Thread(target=run, name="index-follower", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        if self.registration is not None:
            self.registration.release()
