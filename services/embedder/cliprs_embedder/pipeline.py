"""Streaming a job's fetched tiles through the model: leases, decoding, the device, bulk writes.

A worker (`Embedder.drain`) leases work units of many tiles from PostGIS (`SKIP LOCKED`, so
workers never share a tile), and streams them through one continuous pipeline: the next unit is
leased while the current one is still on the device, so the device does not wait between units.

    lease units --> decode (process pool) --> device: resize, cut, normalise, encode (fp16 on GPU)
                --> writer thread: vector chunks, then window rows (COPY) + tile status + job
                    counters and stage timers, one transaction per write batch

Nothing is lost or duplicated when a worker dies: a batch's chunks are written atomically
before the transaction that records its rows (keyed by window id, ``ON CONFLICT DO NOTHING``)
and marks its tiles embedded; a dead worker's leases stop being renewed and expire, and the
next drain of the job (any worker's) leases those tiles again and produces the same ids.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cliprs.db.engine import sync_engine
from cliprs.jobs import Periodic, job_heartbeat
from cliprs.settings import CoreSettings
from cliprs.tilecache import find_tile
from cliprs.vectors import write_chunk
from cliprs.windows import WINDOWS_PER_TILE_LIMIT, footprints, window_plan
from cliprs_embedder import repository
from cliprs_embedder.decode import Decoded, decode_pool, decode_tile, default_decode_workers
from cliprs_embedder.repository import WindowRows
from cliprs_embedder.settings import EmbedderSettings
from cliprs_model import ClipEncoder

log = logging.getLogger("cliprs.embedder")

WRITER_THREADS = 2  # write transactions in flight: the INSERT's index and key checks run in the database
MISSING = "tile file missing from the cache"
MAX_PENDING_WRITES = 4  # write batches embedded but not yet stored (bounds memory if storage stalls)


@dataclass
class TileWork:
    id: int
    source: str
    z: int
    x: int
    y: int
    unit: int  # the work unit (lease) it came in
    last_of_unit: bool
    path: Path | None = None
    # The windows embedded (those with enough valid pixels), as arrays over them:
    index: np.ndarray | None = None  # (n,) window index in the tile's plan (the id's low part)
    boxes: np.ndarray | None = None  # (n, 4) window pixel boxes
    scales: np.ndarray | None = None
    valid_fraction: np.ndarray | None = None
    cloud_score: np.ndarray | None = None
    fingerprints: np.ndarray | None = None  # (n,) int64 hashes of the model inputs
    skipped: int = 0  # windows of the plan left out for no-data
    size: int = 0
    decode_s: float = 0.0
    error: str | None = None


def window_rows(t: TileWork) -> WindowRows:
    """A tile's window rows as column arrays, footprints computed vectorised."""
    assert t.index is not None and t.boxes is not None and t.scales is not None
    assert t.valid_fraction is not None and t.cloud_score is not None and t.fingerprints is not None
    n = len(t.boxes)
    return WindowRows(
        ids=window_ids(t),
        tile_ids=np.full(n, t.id, dtype=np.int64),
        z=np.full(n, t.z, dtype=np.int16),
        boxes=t.boxes,
        scale=t.scales,
        bounds=footprints(t.z, t.x, t.y, t.size, t.boxes),
        valid_fraction=t.valid_fraction,
        cloud_score=t.cloud_score,
        fingerprints=t.fingerprints,
    )


def window_ids(t: TileWork) -> np.ndarray:
    """Ids of the tile's embedded windows: the tile's id and each window's index in the plan,
    so skipping a window leaves a gap and never renumbers the others."""
    assert t.index is not None
    return t.id * WINDOWS_PER_TILE_LIMIT + t.index.astype(np.int64)


@dataclass
class WriteBatch:
    """Embedded tiles waiting to be stored together, and what their work cost."""

    tiles: list[tuple[TileWork, np.ndarray]] = field(default_factory=list)
    failed: list[TileWork] = field(default_factory=list)
    windows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    ends_unit: bool = False

    def add_seconds(self, more: dict[str, float]) -> None:
        for k, v in more.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v


class WindowConfigMismatch(Exception):
    """This worker cuts windows differently from how the job's tiles are being cut."""


class Embedder:
    """A worker's model, decoding pool and identity; `drain` embeds what a job has fetched."""

    def __init__(self, encoder: ClipEncoder, core: CoreSettings, settings: EmbedderSettings):
        self.encoder, self.core, self.settings = encoder, core, settings
        self.engine = sync_engine(core.database_url)
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.decode_workers = settings.decode_workers or default_decode_workers(encoder.device.type)
        self._pool: ProcessPoolExecutor | None = None

    @property
    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = decode_pool(self.decode_workers)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # -- the stream -----------------------------------------------------------------------------

    def _leased_tiles(self, job_id: int, stats: dict) -> Iterator[TileWork]:
        """Tiles of work units leased one after another, until the job has none left to lease."""
        s = self.settings
        while rows := repository.claim_tiles(self.engine, job_id, self.worker, s.lease_tiles, s.lease_s):
            stats["units"] += 1
            for i, r in enumerate(rows):
                yield TileWork(
                    r.id,
                    r.source,
                    r.z,
                    r.x,
                    r.y,
                    unit=stats["units"],
                    last_of_unit=i == len(rows) - 1,
                    path=find_tile(self.core.tile_cache_dir, r.source, r.z, r.x, r.y),
                )

    def _decoded(self, tiles: Iterator[TileWork]) -> Iterator[tuple[TileWork, Decoded | None]]:
        """Tiles with their pixels, decoded by the pool a bounded number of tiles ahead."""
        ahead = 4 * self.decode_workers + 4
        pending: deque[tuple[TileWork, Future[Decoded] | None]] = deque()
        try:
            for t in tiles:
                job = (t.path, self._scales(t.z), self.settings.stride_ratio, self.core.nodata_for(t.source))
                pending.append((t, self.pool.submit(decode_tile, *job) if t.path else None))
                if len(pending) >= ahead:
                    t0, f = pending.popleft()
                    yield t0, f.result() if f else None
            while pending:
                t0, f = pending.popleft()
                yield t0, f.result() if f else None
        finally:
            for _, f in pending:
                if f:
                    f.cancel()

    def _inputs(
        self, decoded: Iterator[tuple[TileWork, Decoded | None]], skipped: list[TileWork]
    ) -> Iterator[tuple[TileWork, np.ndarray, np.ndarray]]:
        """What the encoder takes: (tile, pixels, window boxes); failed tiles go to ``skipped``."""
        s = self.settings
        for t, d in decoded:
            if d is None:
                t.error = MISSING
            else:
                t.decode_s = d.seconds
                t.error = d.error
            if t.error is None:
                assert d is not None and d.pixels is not None and d.valid_fraction is not None
                t.size = d.pixels.shape[0]
                boxes, scales = window_plan(t.size, self._scales(t.z), s.stride_ratio)
                # Mostly no-data windows are not embedded: their vectors would describe the
                # no-data, and identical ones would crowd every result list.
                keep = np.flatnonzero(d.valid_fraction >= s.min_valid)
                t.index, t.boxes, t.scales = keep, boxes[keep], scales[keep]
                t.valid_fraction, t.cloud_score = d.valid_fraction[keep], d.cloud_score[keep]
                t.skipped = len(boxes) - len(keep)
                yield t, d.pixels, t.boxes
            else:
                skipped.append(t)

    def _scales(self, z: int) -> tuple[float, ...]:
        return tuple(self.settings.scales_for_zoom(z))

    def _store(self, job_id: int, batch: WriteBatch) -> tuple[int, int, int]:
        """Chunks first, then rows, statuses and counters in one transaction; tiles whose file
        vanished go back to the fetch stage. Returns (tiles moved, windows, tiles sent back)."""
        start = time.perf_counter()
        for t, vectors in batch.tiles:
            write_chunk(self.core.vectors_dir, t.id, window_ids(t), vectors, self.encoder.info.loaded)
        rows = WindowRows.concat([window_rows(t) for t, _ in batch.tiles])
        batch.add_seconds({"write": time.perf_counter() - start})
        moved = repository.record_embedded(
            self.engine, job_id, rows, {t.id: t.skipped for t, _ in batch.tiles}, batch.seconds
        )
        missing = [t.id for t in batch.failed if t.error == MISSING]
        refetch = repository.send_back_to_fetch(self.engine, missing)
        repository.mark_failed(
            self.engine, {t.id: t.error for t in batch.failed if t.error and t.error != MISSING}
        )
        return moved, batch.windows, refetch

    def drain(self, job_id: int, batch_size: int | None = None) -> dict:
        """Embed every fetched tile of the job that no live worker holds; returns counts.

        When nothing is left to lease but a lease looks abandoned (its holder stopped renewing
        it), wait for it to expire and take those tiles too, so a job never waits on a dead
        worker while a live one is draining it."""
        start = time.perf_counter()
        stats = {"units": 0, "tiles": 0, "failed": 0, "windows": 0, "refetch": 0}
        mine = self.settings.window_config()
        recorded = repository.bind_window_config(self.engine, job_id, mine)
        if recorded is None:
            return stats  # the job is gone (its area was deleted)
        if recorded != mine:
            raise WindowConfigMismatch(
                f"job {job_id}'s tiles are cut with window configuration {recorded}, but worker "
                f"{self.worker} uses {mine}: give every embedder worker the same EMBEDDER_WINDOW_SCALES, "
                "EMBEDDER_FINE_SCALES, EMBEDDER_FINE_MIN_ZOOM and EMBEDDER_STRIDE_RATIO"
            )
        try:
            with (
                # Leases are renewed every third of their length while work is in flight.
                Periodic(
                    "embed-lease",
                    self.settings.lease_s / 3,
                    lambda: repository.renew_leases(self.engine, self.worker, self.settings.lease_s),
                ),
                job_heartbeat(self.engine, job_id, self.core.stall_s / 4),
            ):
                while True:
                    self._stream(job_id, stats, batch_size)
                    wait = repository.stale_leases(self.engine, job_id, self.settings.lease_s)
                    if wait is None:
                        break
                    time.sleep(min(max(wait, 0.1), self.settings.lease_s))
        finally:
            try:  # on a failure, hand back what was leased so another worker can take it now
                repository.release_leases(self.engine, self.worker)
            except Exception:
                log.warning("could not release the leases of %s", self.worker, exc_info=True)
        elapsed = time.perf_counter() - start
        stats["windows_per_s"] = round(stats["windows"] / elapsed, 1) if elapsed else None
        return stats

    def _stream(self, job_id: int, stats: dict, batch_size: int | None) -> None:
        skipped: list[TileWork] = []
        tiles = self._inputs(self._decoded(self._leased_tiles(job_id, stats)), skipped)
        batch = WriteBatch()
        pending: deque[Future[tuple[int, int, int]]] = deque()
        unit_start = time.perf_counter()
        unit_windows = 0

        def collect(block: bool) -> None:
            while pending and (block or len(pending) > MAX_PENDING_WRITES or pending[0].done()):
                moved, windows, refetch = pending.popleft().result()  # a failed write fails the drain here
                stats["tiles"] += moved
                stats["windows"] += windows
                stats["refetch"] += refetch

        def flush() -> None:
            nonlocal batch, unit_start, unit_windows
            batch.failed, skipped[:] = list(skipped), []
            batch.add_seconds(self.encoder.clock.take())
            if batch.ends_unit:
                took = time.perf_counter() - unit_start
                log.info(
                    "job %s unit %d: %d windows in %.2f s (%.0f windows/s); stage seconds %s",
                    job_id,
                    stats["units"],
                    unit_windows + batch.windows,
                    took,
                    (unit_windows + batch.windows) / took if took else 0,
                    {k: round(v, 3) for k, v in batch.seconds.items()},
                )
                unit_start, unit_windows = time.perf_counter(), 0
            else:
                unit_windows += batch.windows
            stats["failed"] += sum(1 for t in batch.failed if t.error != MISSING)
            pending.append(writer.submit(self._store, job_id, batch))
            batch = WriteBatch()
            collect(block=False)

        # Writer threads: chunk fsyncs and the database's work overlap the device work.
        with ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="embed-write") as writer:
            for t, vectors, fingerprints in self.encoder.embed_tiles(tiles, batch_size):
                t.fingerprints = fingerprints
                batch.tiles.append((t, vectors))
                batch.windows += len(vectors)
                batch.add_seconds({"decode": t.decode_s})
                batch.ends_unit = t.last_of_unit
                if batch.windows >= self.settings.write_windows or t.last_of_unit:
                    flush()
            if batch.tiles or skipped:
                flush()
            collect(block=True)
