"""The searcher's view of the FAISS index, swapped atomically when a new version is published.

A request takes one snapshot (`LoadedIndex`) and uses it to the end, so a swap in the middle of
a request never mixes versions; new versions load in a background thread before the swap, and
only their new shards are read (shards the live version holds too are shared). Of several
versions announced while one loads, only the newest (or CURRENT, when it is newer) is read.

Each process registers the versions it holds (and the one it is loading) in Redis with a TTL,
renewed by a thread of its own (a long load never lets it lapse), so the indexer never removes
files a searcher is about to read.

A version whose files are missing or unreadable is never swapped in: the live version keeps
serving (or CURRENT, when it is another version that loads), the failure is logged once with
its reason, and the version is tried again only when CURRENT changes or after a backoff.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
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


@dataclass
class _Broken:
    """A version that could not be loaded: when, and what CURRENT named then."""

    at: float  # time.monotonic()
    current: int | None


class IndexHolder:
    """Holds the current `LoadedIndex` and follows new versions (Redis announcements + polling).

    ``heartbeat_s``: how often the registration is renewed (default: a quarter of its TTL, at
    most 5 s; `follow` sets it); ``retry_broken_s``: how long a version that failed to load is
    left alone while CURRENT does not change.
    """

    def __init__(
        self,
        index_dir: Path,
        registration: Registration | None = None,
        heartbeat_s: float | None = None,
        retry_broken_s: float = 60.0,
    ):
        self.index_dir = Path(index_dir)
        self.registration = registration
        ttl = registration.ttl_s if registration is not None else 20.0
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else min(5.0, ttl / 4)
        self.retry_broken_s = retry_broken_s
        self._current: LoadedIndex | None = None
        self._loading: int | None = None
        self._broken: dict[int, _Broken] = {}
        self._load_lock = threading.Lock()
        self._registry_lock = threading.Lock()  # orders renewals against the final release
        self._heartbeat_thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def current(self) -> LoadedIndex | None:
        return self._current

    def heartbeat(self) -> None:
        """Renew this process's claim on the versions it holds or is loading."""
        if self.registration is None:
            return
        with self._registry_lock:
            if self._stop.is_set():  # released: never register again
                return
            held = {v for v in (self._loading, self._current.version if self._current else None) if v}
            self.registration.hold(held)

    def start_heartbeat(self) -> None:
        """Renew the registration every ``heartbeat_s`` on a thread of its own (idempotent), so a
        load that takes longer than the TTL keeps its claim on the files it reads."""
        if self.registration is None or self._stop.is_set():
            return
        with self._registry_lock:
            if self._heartbeat_thread is not None:
                return

            def beat() -> None:
                while not self._stop.wait(self.heartbeat_s):
                    try:
                        self.heartbeat()
                    except Exception:  # never let the renewals stop
                        log.exception("renewing the index registration failed")

            self._heartbeat_thread = threading.Thread(target=beat, name="index-heartbeat", daemon=True)
            self._heartbeat_thread.start()

    def load(self, version: int | None = None) -> LoadedIndex | None:
        """Swap in the newest of ``version`` (an announcement) and CURRENT, unless the live
        version is not older. A version that cannot be loaded (files missing or unreadable) is
        skipped for the next candidate (CURRENT), remembered and not read again until CURRENT
        changes or ``retry_broken_s`` passes; the live version keeps serving meanwhile."""
        self.start_heartbeat()
        with self._load_lock:
            newest = current_version(self.index_dir)
            tried: set[int] = set()
            while True:
                candidates = {v for v in (version, newest) if v is not None} - tried
                if not candidates:
                    return self._current
                target = max(candidates)
                if self._current is not None and self._current.version >= target:
                    return self._current
                tried.add(target)
                if self._skip_broken(target, newest):
                    continue
                loaded = self._try_read(target, newest)
                if loaded is None:
                    newest = current_version(self.index_dir)  # it may name a newer one by now
                    continue
                self._broken = {v: b for v, b in self._broken.items() if v > target}
                self._current = loaded  # the swap: one reference assignment
                self.heartbeat()
                log.info(
                    "index version %s live: %d shards, %d vectors",
                    loaded.version,
                    len(loaded.shards),
                    loaded.manifest.vector_count,
                )
                return self._current

    def _skip_broken(self, version: int, newest: int | None) -> bool:
        broken = self._broken.get(version)
        if broken is None:
            return False
        return broken.current == newest and time.monotonic() - broken.at < self.retry_broken_s

    def _try_read(self, version: int, newest: int | None) -> LoadedIndex | None:
        """The version read from disk while registered as loading it, or None when it cannot be
        (logged once per version, with the reason: which file is missing or unreadable)."""
        self._loading = version
        self.heartbeat()  # claim it before reading its files
        try:
            return self._read(version)
        except Exception as exc:  # missing (OSError), unreadable (faiss RuntimeError, ValueError)
            first = version not in self._broken
            self._broken[version] = _Broken(time.monotonic(), newest)
            live = self._current.version if self._current else None
            try:
                now = current_version(self.index_dir)
            except (OSError, ValueError):
                now = None
            if now is not None and now > version:
                # Collected meanwhile: a newer version replaced it before we registered.
                log.info("index version %s is gone (%s); CURRENT is %s", version, exc, now)
                return None
            (log.warning if first else log.debug)(
                "index version %s cannot be loaded (%s: %s); serving version %s; retrying when "
                "CURRENT changes or in %.0f s",
                version,
                type(exc).__name__,
                exc,
                live,
                self.retry_broken_s,
            )
            return None
        finally:
            self._loading = None

    def _read(self, version: int) -> LoadedIndex:
        """Open the version's shards, sharing the live version's that it names too; a file it
        needs that is gone raises FileNotFoundError naming it."""
        manifest = load_manifest(self.index_dir, version)
        if manifest is None:  # only when no version is given and none is published
            raise FileNotFoundError(f"no manifest of index version {version} in {self.index_dir}")
        live = {s.meta.stem: s for s in self._current.shards} if self._current else {}
        needed = [f for s in manifest.shards if s.stem not in live for f in s.files()]
        held_codec = self._current.codec.file if self._current and self._current.codec else None
        if manifest.codec is not None and manifest.codec.file != held_codec:
            needed.append(manifest.codec.file)
        missing = [f for f in needed if not (self.index_dir / f).exists()]
        if missing:
            raise FileNotFoundError(f"missing {', '.join(missing)} in {self.index_dir}")
        return load_shardset(self.index_dir, manifest, live, cls=LoadedIndex)

    def follow(
        self, redis_url: str, channel: str, poll_s: float, heartbeat_s: float = 5.0
    ) -> threading.Thread:
        """Start a daemon thread that loads the newest announced version (announcements queued
        during a load are drained, only their newest is loaded), polls CURRENT every ``poll_s``
        as a safety net; the registration is renewed every ``heartbeat_s`` on its own thread."""
        self.heartbeat_s = heartbeat_s
        self.start_heartbeat()

        def run() -> None:
            while not self._stop.is_set():
                try:
                    client = redis.Redis.from_url(redis_url, socket_timeout=poll_s + 5)
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(channel)
                    self.load()  # catch up on anything published before we subscribed
                    last_poll = time.monotonic()
                    while not self._stop.is_set():
                        msg = pubsub.get_message(timeout=poll_s)
                        announced: list[int] = []
                        while msg is not None:  # drain what queued up: only the newest matters
                            if (version := _announced(msg)) is not None:
                                announced.append(version)
                            msg = pubsub.get_message(timeout=0)
                        if self._stop.is_set():
                            break
                        if announced:
                            self.load(max(announced))
                        elif time.monotonic() - last_poll >= poll_s:
                            self.load()
                            last_poll = time.monotonic()
                except Exception:
                    log.exception("index follower error; retrying")
                    self._stop.wait(2)

        thread = threading.Thread(target=run, name="index-follower", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
        if self.registration is not None:
            with self._registry_lock:
                self.registration.release()


def _announced(msg: dict | None) -> int | None:
    """The version an index announcement names (None for anything else)."""
    if not msg or msg.get("type") != "message":
        return None
    try:
        return int(json.loads(msg["data"])["version"])
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed index announcement: %r", msg.get("data"))
        return None
