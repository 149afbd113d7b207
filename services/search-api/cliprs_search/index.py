"""The searcher's view of the FAISS index, swapped atomically when a new version is published.

A request takes one snapshot (`LoadedIndex`) and uses it to the end, so a swap in the middle of
a request never mixes versions; new versions load in a background thread before the swap, and
only their new shards are read (shards the live version holds too are shared).
Each process registers the versions it holds (and the one it is loading) in Redis with a TTL,
so the indexer never removes files a searcher is about to read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from pathlib import Path

import redis

from cliprs.manifest import (
    Manifest,
    current_version,
    load_manifest,
    register_searcher,
    unregister_searcher,
)
from cliprs_index.shardset import ShardSet, load_shardset

log = logging.getLogger("cliprs.search.index")


class LoadedIndex(ShardSet):
    """One index version as the search-api holds it (see `cliprs_index.shardset.ShardSet`)."""

    @classmethod
    def empty(cls, manifest: Manifest) -> LoadedIndex:
        return cls(manifest, [], None)


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

    def __init__(self, index_dir: Path, registration: Registration | None = None):
        self.index_dir = Path(index_dir)
        self.registration = registration
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
        """Open the version's shards, sharing the live version's that it names too."""
        manifest = load_manifest(self.index_dir, version)
        if manifest is None:  # only when no version is given and none is published
            raise FileNotFoundError(f"no manifest of index version {version} in {self.index_dir}")
        live = {s.meta.stem: s for s in self._current.shards} if self._current else {}
        return load_shardset(self.index_dir, manifest, live, cls=LoadedIndex)

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
