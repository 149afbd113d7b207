"""The searcher's view of the FAISS index, swapped atomically when a new version is published.

A request takes one snapshot (`LoadedIndex`) and uses it to the end, so a swap in the middle of
a request never mixes versions; new versions load in a background thread before the swap.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import redis

from cliprs.manifest import Manifest, current_version, load_manifest

log = logging.getLogger("cliprs.search.index")


@dataclass
class LoadedIndex:
    manifest: Manifest
    shards: list[faiss.Index] = field(default_factory=list)

    @property
    def version(self) -> int:
        return self.manifest.version

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Best ``k`` (window id, score) over all shards, highest score first, ids unique."""
        best: dict[int, float] = {}
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        for shard in self.shards:
            scores, ids = shard.search(q, min(k, shard.ntotal))
            for wid, score in zip(ids[0].tolist(), scores[0].tolist(), strict=True):
                if wid >= 0 and score > best.get(wid, -np.inf):
                    best[wid] = score
        return sorted(best.items(), key=lambda kv: -kv[1])[:k]

    def vector_of(self, window_id: int) -> np.ndarray | None:
        for shard in self.shards:
            try:
                return shard.reconstruct(window_id)
            except RuntimeError:  # not in this shard
                continue
        return None


class IndexHolder:
    """Holds the current `LoadedIndex` and follows new versions (Redis announcements + polling)."""

    def __init__(self, index_dir: Path):
        self.index_dir = Path(index_dir)
        self._current: LoadedIndex | None = None
        self._load_lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def current(self) -> LoadedIndex | None:
        return self._current

    def load(self, version: int | None = None) -> LoadedIndex | None:
        """Load ``version`` (default: CURRENT) unless it is not newer; then swap it in."""
        with self._load_lock:
            version = current_version(self.index_dir) if version is None else version
            if version is None or (self._current and self._current.version >= version):
                return self._current
            manifest = load_manifest(self.index_dir, version)
            assert manifest is not None
            shards = [faiss.read_index(str(self.index_dir / s.file)) for s in manifest.shards]
            self._current = LoadedIndex(manifest, shards)  # the swap: one reference assignment
            log.info(
                "index version %s live: %d shards, %d vectors", version, len(shards), manifest.vector_count
            )
            return self._current

    def follow(self, redis_url: str, channel: str, poll_s: float) -> threading.Thread:
        """Start a daemon thread that loads each announced version (and polls as a safety net)."""

        def run() -> None:
            while not self._stop.is_set():
                try:
                    client = redis.Redis.from_url(redis_url, socket_timeout=poll_s)
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(channel)
                    self.load()  # catch up on anything published before we subscribed
                    while not self._stop.is_set():
                        msg = pubsub.get_message(timeout=poll_s)
                        if msg and msg.get("type") == "message":
                            self.load(int(json.loads(msg["data"])["version"]))
                        else:
                            self.load()
                except Exception:
                    log.exception("index follower error; retrying")
                    self._stop.wait(2)

        thread = threading.Thread(target=run, name="index-follower", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
