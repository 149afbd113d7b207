"""Search at scale: one index grown area by area to 1M, 3M and 10M windows, measured at each size.

    make bench-search    (or: .venv/bin/python benchmarks/bench_search.py --sizes 1000000,3000000,10000000)
    quick check:         .venv/bin/python benchmarks/bench_search.py --sizes 60000,120000 --queries 40 \\
                             --duration 3 --held-out 100 --swap-tiles 40 --out /tmp/search-smoke.json

What the product builds, built the product's way. Tiles of the original study area (Northern
Virginia: Arlington, the National Mall) zoom by zoom from 16, Morton order within a zoom, are cut
into areas of at most the tile budget (``CLIPRS_MAX_TILES_PER_AREA``, 5,000 tiles) of consecutive
tiles; the last area before a size is cut short so the size is met to a tile. Each area is
seeded into one throwaway PostGIS database (areas, tiles, window rows, cut as the embedder cuts
them: 26 windows per tile, 195 from zoom 17 on) and its vector chunks are written (float16), then
it is indexed by the indexer's own code (``collect_area_vectors`` + ``publish_area``), one area
after the other into one growing index. Nothing holds every vector: each area's vectors are drawn,
written, scored against the held-out queries and dropped.

Vectors (512-d, `cliprs_testing.synthetic.ClusteredStream`): one shared mean direction, Zipf-sized
clusters ("scene types"), new places per area, 16 windows around each place. Queries, never indexed:

- image-like: one new window around each of ``--held-out`` random places of the first area;
- text-like, with the modality-gap model (`cliprs_index.text_queries`: text and image embeddings
  live in two cones; a caption and its image meet at a cosine of about 0.3, two text queries at
  about 0.68; the measured mean ``cos(q, x)`` is reported), across one gap direction.

Users' text queries: before the first area, ``--sampled-text-queries`` other text-like queries
(around other places, across the same gap: one model's texts share its gap) go into the query
sample as the search-api keeps them (`cliprs.query_sample.record`), so the indexer tunes the text
probe on "recent text queries", as a deployment that has been searched does. The search-api's own
sample is off in this run (``SEARCH_QUERY_SAMPLE_SIZE=0``): its queries are the tiny CLIP's,
which mean nothing in the synthetic vectors' space.

Exact top 10 of every query is kept as a running top 10 while areas are added, scored against the
vectors as stored (rounded to float16), so it costs one pass over the data in all.

At each size:

- index alone: the published version loaded in this process through the search-api's own
  `IndexHolder`, ``ShardSet.search`` one query at a time on one FAISS thread (as a request runs),
  as deep as the search-api's first round (ranking depth 21 x overfetch 3 = 63 candidates);
  p50/p99 and recall@10 of its top 10 against the exact top 10, for image-like and text-like queries;
- end to end: the embedder (tiny CLIP on CPU) and the search-api as real processes (started on the
  built index), ``GET /v1/search?q=...&k=10`` over HTTP: embedding, index, PostGIS join, merging,
  reverse geocoding; sequentially (p50/p99), one selective polygon and one broad bbox filter (p50,
  with the strategy the API chose), then ``--concurrency`` clients for ``--duration`` seconds (QPS);
- memory: the search-api process's RssAnon (its own memory) per window, and RssFile (mapped index
  pages it touched) per window, from /proc/PID/status after the load;
- hot swap: while a client keeps searching over HTTP, one more area (``--swap-tiles`` tiles, seeded
  beforehand as the embedder would) is collected and published; the time from starting that to
  the first answer carrying the new ``index_version``, and the failed requests (must be 0). That
  area stays: it is part of the next size.

The product's defaults where they matter: access control on, every request sending a read key
made by the core key store (the search quota, taken from Redis on every search, is raised out of
the load test's way); the windows carry the quality fields the embedder stores (``set_quality``:
some partial, some cloudy, so the default ``max_cloud`` / ``min_valid`` filters drop some hits)
and a fingerprint each. Every setting off its default is recorded in the results
(``non_default_settings``), with the commit, the date and the load at the start and the end.

Results go to ``--out`` (a JSON list, one object per size, rewritten after each size) and a summary
with the goals: end to end p50 <= 25 ms up to 3M windows and <= 50 ms up to 10M (p99 <= 60 ms at 10M), recall@10 of
image-like and text-like queries >= 0.95, <= 150 resident bytes per window (from 1M windows on: below, the
process's fixed memory dominates), a hot swap <= 5 s with no failed request.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import httpx
import mercantile
import numpy as np
import redis
import redis.asyncio as aioredis
import workspace  # noqa: F401  (the repository on sys.path, for tests.support)
from machine_info import finish, run_info
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings
from sqlalchemy import text

from cliprs import keys as key_store
from cliprs import query_sample
from cliprs.db.engine import sync_engine
from cliprs.manifest import load_manifest
from cliprs.settings import CoreSettings
from cliprs.tiles import BBox, tiles_for_bbox, zorder
from cliprs.windows import plan_windows
from cliprs_embedder.settings import EmbedderSettings
from cliprs_index.text_queries import gap_direction, modality_gap_queries
from cliprs_indexer.build import collect_area_vectors, publish_area, retune, retune_due, sampled_text_queries
from cliprs_indexer.maintenance import garbage_collect
from cliprs_indexer.settings import IndexerSettings
from cliprs_search.index import IndexHolder
from cliprs_search.service.search import text_effort
from cliprs_search.settings import SearchSettings
from cliprs_testing.db import ADMIN_URL, throwaway_database
from cliprs_testing.model import default_cache_dir, tiny_clip
from cliprs_testing.synthetic import ClusteredStream, SeededArea, seed_area, write_area_chunks
from cliprs_tools.cli import cli_config, run_cli
from tests.support.platform import run_platform

REPO = Path(__file__).resolve().parents[1]
HELP = __doc__  # the whole module docstring is the --help text
STUDY_AREA = BBox(-77.274, 38.812, -76.986, 38.912)  # Northern Virginia, Arlington, the National Mall
DIM = 512
K = 10
# Goals (issue 11).
GOAL_P50_3M_MS, GOAL_P50_10M_MS = 25.0, 50.0
GOAL_RECALL = 0.95  # image-like and text-like queries alike (issue 24)
GOAL_P99_10M_MS = 60.0
GOAL_BYTES_PER_WINDOW = 150.0
GOAL_SWAP_S = 5.0
# The services run on their defaults (access control on: SEARCH_AUTH defaults to "on") but for
# these, each recorded in the results. The search quota (5 searches/s, bursts of 20 per key)
# would answer most of the load test's requests with 429: raised out of the way, the quota is
# still taken from Redis on every search.
PRODUCT_ENV = {
    "SEARCH_AUTH": "on",  # the default, stated: the test platform starter turns it off otherwise
    "SEARCH_SEARCH_RATE_PER_S": "1000000",
    "SEARCH_SEARCH_BURST": "1000000",
    "SEARCH_QUERY_SAMPLE_SIZE": "0",  # the tiny CLIP's queries stay out of the tuning's sample
}
PHRASES = [
    "boats near a pier", "a red car in a parking lot", "the Washington Monument", "a baseball field",
    "a river with a bridge", "dense residential area", "an airport runway", "a golf course", "a church",
    "storage tanks", "a stadium", "trees in a park", "a highway interchange", "a school with a playground",
    "a pond", "railway tracks", "commercial buildings", "a parking garage", "a marina", "farmland",
    "a forest", "a beach", "a construction site", "white roofs", "a cemetery", "tennis courts",
    "a swimming pool", "a large warehouse", "a traffic circle", "a helicopter pad",
]  # fmt: skip


class SearchBenchSettings(BaseSettings):
    """Search at 1M, 3M and 10M windows: one index grown area by area, measured at each size."""

    model_config = cli_config(
        "BENCH_SEARCH_", "python benchmarks/bench_search.py", json_schema_extra={"description": HELP}
    )

    sizes: str = Field("1000000,3000000,10000000", description="comma-separated window counts")
    queries: int = Field(300, gt=0, description="sequential end-to-end queries per size")
    held_out: int = Field(500, gt=0, description="held-out queries of each kind (image-like, text-like)")
    sampled_text_queries: int = Field(
        1000, ge=0, description="users' text queries put in the query sample before the first area"
    )
    concurrency: int = Field(8, gt=0)
    duration: float = Field(20.0, gt=0, description="seconds of concurrent load")
    swap_tiles: int = Field(1000, gt=0, description="tiles of the area added during the hot-swap test")
    cloudy_share: float = Field(
        0.15, ge=0, le=1, description="share of windows given a random cloud_score (the rest: 0)"
    )
    partial_share: float = Field(
        0.05, ge=0, le=1, description="share of windows given a valid_fraction below 1 (the rest: 1)"
    )
    max_tiles: int | None = Field(
        None, gt=0, description="tiles per area (default: CLIPRS_MAX_TILES_PER_AREA)"
    )
    seed: int = 7
    out: Path = Field(REPO / "benchmarks/results/search.json", description="where the JSON results go")
    admin_url: str = ADMIN_URL
    redis_url: str = os.environ.get("CLIPRS_REDIS_URL", "redis://127.0.0.1:6379/0")
    tmp: str | None = Field(
        None, description="where chunks and shards are written (default: the system temp dir)"
    )

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, value: str) -> str:
        try:
            sizes = [int(n) for n in value.split(",")]
        except ValueError:
            raise ValueError("must be comma-separated integers") from None
        if min(sizes) <= 0:
            raise ValueError("must be positive")
        return ",".join(str(n) for n in sorted(set(sizes)))


# ----------------------------------------------------------------------------- data


class StudyTiles:
    """Tiles of the study area zoom by zoom from 16, Morton order within a zoom, handed out in
    consecutive runs (one per area) with the windows the embedder cuts from each."""

    def __init__(self, embedder: EmbedderSettings):
        self.embedder = embedder
        self._iter = self._tiles()
        self._next: mercantile.Tile | None = next(self._iter, None)
        self._per_zoom: dict[int, int] = {}

    @staticmethod
    def _tiles() -> Iterator[mercantile.Tile]:
        for z in range(16, 23):
            yield from zorder(tiles_for_bbox(STUDY_AREA, [z]))

    def windows_of(self, z: int) -> int:
        if z not in self._per_zoom:
            scales = self.embedder.scales_for_zoom(z)
            self._per_zoom[z] = len(plan_windows(256, scales, self.embedder.stride_ratio))
        return self._per_zoom[z]

    def take(self, max_tiles: int, max_windows: int) -> list[mercantile.Tile]:
        """The next run of at most ``max_tiles`` tiles, stopping once it holds ``max_windows``."""
        out: list[mercantile.Tile] = []
        windows = 0
        while len(out) < max_tiles and windows < max_windows:
            if self._next is None:
                raise ValueError("the study area is too small for that many windows")
            out.append(self._next)
            windows += self.windows_of(self._next.z)
            self._next = next(self._iter, None)
        return out


class RunningTopK:
    """Exact top ``k`` of each query over every vector added so far (blocks of rows at a time)."""

    def __init__(self, queries: np.ndarray, k: int = K, block: int = 32_768):
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k, self.block = k, block
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        for start in range(0, len(ids), self.block):
            rows = np.asarray(vectors[start : start + self.block], dtype=np.float32)
            block_ids = np.asarray(ids[start : start + self.block], dtype=np.int64)
            scores = self.queries @ rows.T
            if len(block_ids) > self.k:  # the block's own top k first: merging stays small
                top = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
                scores, cand = np.take_along_axis(scores, top, axis=1), block_ids[top]
            else:
                cand = np.broadcast_to(block_ids, scores.shape)
            both_s = np.concatenate([self.scores, scores], axis=1)
            both_i = np.concatenate([self.ids, cand], axis=1)
            top = np.argpartition(-both_s, self.k - 1, axis=1)[:, : self.k]
            self.scores = np.take_along_axis(both_s, top, axis=1)
            self.ids = np.take_along_axis(both_i, top, axis=1)


def set_quality(database_url: str, area: SeededArea, min_valid: float, options: SearchBenchSettings) -> None:
    """Give the area's windows the quality fields the embedder stores (``seed_area`` leaves them
    NULL, which every filter passes): ``valid_fraction`` 1 but for ``partial_share`` of windows
    (edges of the imagery, uniform above the embedder's ``min_valid``: it keeps no window below),
    ``cloud_score`` 0 but for ``cloudy_share`` (uniform 0..1: the search-api's default
    ``max_cloud`` then drops some of them), and a distinct ``fingerprint`` per window (distinct
    model inputs: nothing to collapse, but the collapse runs)."""
    with sync_engine(database_url).begin() as conn:
        conn.execute(
            text(
                "UPDATE windows w SET "
                "valid_fraction = CASE WHEN random() < :partial "
                "  THEN :min_valid + random() * (1 - :min_valid) ELSE 1 END, "
                "cloud_score = CASE WHEN random() < :cloudy THEN random() ELSE 0 END, "
                "fingerprint = w.id "
                "FROM tiles t WHERE w.tile_id = t.id AND t.area_id = :area"
            ),
            {
                "partial": options.partial_share,
                "min_valid": min_valid,
                "cloudy": options.cloudy_share,
                "area": area.area_id,
            },
        )


@dataclass
class Growth:
    """The growing database and index, and where the build time went."""

    core: CoreSettings
    model_id: str
    tiles: StudyTiles
    stream: ClusteredStream
    options: SearchBenchSettings
    rng: np.random.Generator
    api_key: str = ""  # a read key of the run's database, sent with every request
    truth: RunningTopK | None = None
    image_queries: np.ndarray | None = None
    text_queries: np.ndarray | None = None
    windows: int = 0
    n_tiles: int = 0
    areas: list[int] = field(default_factory=list)
    bounds: list[float] = field(default_factory=lambda: [180.0, 90.0, -180.0, -90.0])
    times: dict[str, float] = field(default_factory=dict)

    def _tick(self, what: str, since: float) -> float:
        now = time.perf_counter()
        self.times[what] = self.times.get(what, 0.0) + now - since
        return now

    def seed(self, tiles: list[mercantile.Tile]) -> SeededArea:
        """Rows, chunks and ground truth of a new area (the tiler's and the embedder's part)."""
        t = time.perf_counter()
        emb = self.tiles.embedder
        area = seed_area(
            self.core.database_url,
            tiles,
            name=f"bench-{len(self.areas) + 1}",
            source="bench",
            scales_for_zoom=emb.scales_for_zoom,
            stride_ratio=emb.stride_ratio,
        )
        set_quality(self.core.database_url, area, emb.min_valid, self.options)
        with (
            sync_engine(self.core.database_url)
            .connect()
            .execution_options(isolation_level="AUTOCOMMIT") as conn
        ):
            conn.execute(text("ANALYZE windows"))
        t = self._tick("seed_s", t)
        vectors, places = self.stream.batch(len(area.ids))
        if self.truth is None:  # the held-out queries: new windows of places of the first area
            pick = self.rng.choice(
                len(places), self.options.held_out, replace=len(places) < self.options.held_out
            )
            self.image_queries = self.stream.around(places[pick], 1)
            gap = gap_direction(self.image_queries, self.options.seed + 1)
            self.text_queries = modality_gap_queries(self.image_queries, gap, self.options.seed + 1)
            self.sample_users_queries(places, gap)
            self.truth = RunningTopK(np.concatenate([self.image_queries, self.text_queries]))
        stored = vectors.astype(np.float16)  # what the chunks (and the shards) hold
        del vectors, places
        t = self._tick("vectors_s", t)
        write_area_chunks(self.core.vectors_dir, area, stored, self.model_id)
        t = self._tick("chunks_s", t)
        self.truth.add(area.ids, stored)
        self._tick("truth_s", t)
        self.areas.append(area.area_id)
        self.windows += len(area.ids)
        self.n_tiles += len(area.tile_ids)
        b = self.bounds
        self.bounds = [
            min(b[0], float(area.boxes[:, 0].min())),
            min(b[1], float(area.boxes[:, 1].min())),
            max(b[2], float(area.boxes[:, 2].max())),
            max(b[3], float(area.boxes[:, 3].max())),
        ]
        return area

    def sample_users_queries(self, places: np.ndarray, gap: np.ndarray) -> None:
        """Text queries "users typed" into the query sample (see the module docstring)."""
        n = self.options.sampled_text_queries
        if n == 0:
            return
        pick = self.rng.choice(len(places), n, replace=len(places) < n)
        queries = modality_gap_queries(self.stream.around(places[pick], 1), gap, self.options.seed + 2)

        async def record() -> None:
            client = aioredis.Redis.from_url(self.core.redis_url)
            try:
                for q in queries:
                    await query_sample.record(client, self.core.redis_namespace, self.model_id, q, n)
            finally:
                await client.aclose()

        asyncio.run(record())

    def index(self, area_id: int) -> tuple[float, float, int]:
        """(collect s, publish s, version): the indexer's part for one area."""
        t = time.perf_counter()
        vectors = collect_area_vectors(self.core, area_id)
        t1 = self._tick("collect_s", t)
        settings = IndexerSettings()
        manifest = publish_area(self.core, area_id, vectors, settings)
        t2 = self._tick("publish_s", t1)
        if manifest is None:
            raise RuntimeError(f"publishing area {area_id} published nothing")
        sampled = sampled_text_queries(self.core, manifest)
        if retune_due(manifest, settings, sampled):  # what the indexer's queued indexer.retune task does
            retune(self.core, settings)
            self._tick("retune_s", t2)
        return t1 - t, t2 - t1, manifest.version

    def grow_to(self, target: int) -> None:
        """Add areas (at most the tile budget each) until the database holds ``target`` windows."""
        budget = self.options.max_tiles or self.core.max_tiles_per_area
        while self.windows < target:
            tiles = self.tiles.take(budget, target - self.windows)
            area = self.seed(tiles)
            collect_s, publish_s, version = self.index(area.area_id)
            print(
                f"  area {len(self.areas)}: {len(area.ids):,} windows in {len(tiles):,} tiles "
                f"(zooms {sorted({t.z for t in tiles})}), total {self.windows:,}; collect {collect_s:.1f} s, "
                f"publish {publish_s:.1f} s -> version {version}",
                flush=True,
            )
            garbage_collect(self.core, IndexerSettings(gc_min_age_s=0))  # old versions' files: disk


# ----------------------------------------------------------------------------- measuring


def pct(values: Sequence[float], p: float) -> float:
    return float(np.percentile(values, p)) if len(values) else float("nan")


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def index_alone(core: CoreSettings, growth: Growth) -> dict:
    """ShardSet.search through the search-api's IndexHolder, one query at a time, one thread."""
    t = time.perf_counter()
    holder = IndexHolder(core.index_dir)
    index = holder.load()
    if index is None:
        raise RuntimeError("no index version is published")
    load_s = time.perf_counter() - t
    assert growth.truth is not None and growth.image_queries is not None and growth.text_queries is not None
    n = len(growth.image_queries)
    out: dict = {"load_s": load_s, "version": index.version}
    faiss.omp_set_num_threads(1)  # as in the search-api: one thread per request
    try:
        for q in growth.image_queries[:20]:  # warm-up: mapped pages, caches
            index.search(q, K)
        # As the search-api searches: a first round ranking_depth x overfetch deep (the page is
        # its top 10), text queries with its text effort.
        depth = SearchSettings().ranking_depth * SearchSettings().overfetch
        out["depth"] = depth
        for kind, queries, truth, effort in (
            ("image", growth.image_queries, growth.truth.ids[:n], None),
            ("text", growth.text_queries, growth.truth.ids[n:], text_effort(SearchSettings())),
        ):
            times, found = [], []
            for q in queries:
                t = time.perf_counter()
                hits = index.search(q, depth, effort=effort)
                times.append((time.perf_counter() - t) * 1000)
                found.append([wid for wid, _ in hits[:K]])
            out[kind] = {
                "p50_ms": pct(times, 50),
                "p99_ms": pct(times, 99),
                "recall_at_10": recall(found, truth),
            }
    finally:
        faiss.omp_set_num_threads(os.cpu_count() or 1)
    shards = index.manifest.shards
    out["shards"] = len(shards)
    out["shard_kinds"] = {
        kind: sum(s.kind == kind for s in shards) for kind in sorted({s.kind for s in shards})
    }
    codec = getattr(index.manifest, "codec", None)
    out["codec"] = None if codec is None else {k: v for k, v in vars(codec).items() if k != "file"}
    del index, holder
    gc.collect()
    return out


def proc_status(pid: int) -> dict[str, int]:
    """Memory lines of /proc/PID/status, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
    return out


def hammer(
    url: str, clients: int, duration_s: float, headers: dict[str, str]
) -> tuple[float, list[float], int]:
    """(QPS, latencies ms, failures) with ``clients`` concurrent clients for ``duration_s``."""
    latencies: list[float] = []
    failures = [0]
    stop = time.monotonic() + duration_s
    lock = threading.Lock()

    def run(seed: int) -> None:
        i = seed
        with httpx.Client(timeout=60, headers=headers) as client:
            while time.monotonic() < stop:
                t = time.perf_counter()
                try:
                    ok = client.get(url, params={"q": PHRASES[i % len(PHRASES)], "k": K}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = (time.perf_counter() - t) * 1000
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        failures[0] += 1
                i += 1

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i * 7,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.monotonic() - started), latencies, failures[0]


def sequential(client: httpx.Client, url: str, n: int) -> dict:
    seq, server, stages = [], [], []
    for i in range(n):
        t = time.perf_counter()
        resp = client.get(url, params={"q": PHRASES[i % len(PHRASES)], "k": K})
        seq.append((time.perf_counter() - t) * 1000)
        resp.raise_for_status()
        body = resp.json()
        server.append(body["took_ms"])
        stages.append(body.get("timings_ms") or {})
    keys = sorted({k for s in stages for k in s})
    return {
        "p50_ms": pct(seq, 50),
        "p99_ms": pct(seq, 99),
        "server_p50_ms": pct(server, 50),
        "stages_p50_ms": {k: pct([s.get(k, 0.0) for s in stages], 50) for k in keys},
        "stages_p99_ms": {k: pct([s.get(k, 0.0) for s in stages], 99) for k in keys},
        "server_p99_ms": pct(server, 99),
    }


def filters(client: httpx.Client, url: str, bounds: list[float], n: int) -> dict:
    """p50/p99 and the strategy of a selective polygon and a broad bbox filter."""
    w, s, e, north = bounds
    cx, cy = (w + e) / 2, (s + north) / 2
    d = (e - w) / 200  # a small triangle at the centre: a few hundred windows (selective)
    poly = {"type": "Polygon", "coordinates": [[[cx, cy], [cx + d, cy], [cx, cy + d], [cx, cy]]]}
    broad = f"{w},{s},{cx},{north}"  # the west half (broad)
    out = {}
    for name, call in (
        ("polygon", lambda q: client.post(url, json={"q": q, "k": K, "polygon": poly})),
        ("bbox", lambda q: client.get(url, params={"q": q, "k": K, "bbox": broad})),
    ):
        times, strategies, counts = [], set(), []
        for i in range(n):
            t = time.perf_counter()
            resp = call(PHRASES[i % len(PHRASES)])
            times.append((time.perf_counter() - t) * 1000)
            resp.raise_for_status()
            body = resp.json()
            strategies.add((body.get("filter") or {}).get("strategy"))
            counts.append(body.get("count", 0))
        out[name] = {
            "p50_ms": pct(times, 50),
            "p99_ms": pct(times, 99),
            "strategy": ",".join(sorted(str(s) for s in strategies)),
            "hits_p50": pct(counts, 50),
        }
    return out


def hot_swap(url: str, growth: Growth, area: SeededArea, headers: dict[str, str]) -> dict:
    """Index ``area`` (collect + publish) while a client searches; seconds until it is served."""
    responses: list[tuple[float, int, int | None]] = []  # (monotonic time answered, status, version)
    stop = threading.Event()

    def client() -> None:
        i = 0
        with httpx.Client(timeout=60, headers=headers) as http:
            while not stop.is_set():
                try:
                    resp = http.get(url, params={"q": PHRASES[i % len(PHRASES)], "k": K})
                    version = resp.json().get("index_version") if resp.status_code == 200 else None
                    responses.append((time.monotonic(), resp.status_code, version))
                except (httpx.HTTPError, ValueError):  # a dropped connection is a failed request too
                    responses.append((time.monotonic(), -1, None))
                i += 1

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        collect_s, publish_s, version = growth.index(area.area_id)
        deadline = time.monotonic() + 600
        served_at = None
        while served_at is None and time.monotonic() < deadline:
            served_at = next((t for t, _, v in list(responses) if v is not None and v >= version), None)
            time.sleep(0.01)
        time.sleep(1.0)  # keep searching on the new version for a moment
    finally:
        stop.set()
        thread.join(timeout=120)
    return {
        "swap_after_add_s": (served_at - t0) if served_at is not None else float("nan"),
        "swap_collect_s": collect_s,
        "swap_publish_s": publish_s,
        "swap_version": version,
        "swap_area_windows": len(area.ids),
        "swap_requests": len(responses),
        "swap_failed": sum(status != 200 for _, status, _ in responses),
    }


def end_to_end(growth: Growth, model_dir: Path, options: SearchBenchSettings, swap_tiles: list) -> dict:
    """The embedder and the search-api as processes on the built index: latency, filters, load,
    memory, then the hot swap of one more area (``swap_tiles``; none: skipped). Every request
    sends the run's API key: access control is on, as the product ships."""
    core = growth.core
    headers = {"Authorization": f"Bearer {growth.api_key}"}
    with tempfile.TemporaryDirectory() as run_dir:
        t = time.perf_counter()
        with run_platform(
            Path(run_dir),
            database_url=core.database_url,
            redis_url=core.redis_url,
            data_dir=core.data_dir,
            namespace=core.redis_namespace,
            env={"CLIP_MODEL": str(model_dir), **PRODUCT_ENV},
            services={"embedder", "search-api"},
            ready_timeout_s=900,
            cwd=REPO,
        ) as platform:
            out: dict = {"ready_s": time.perf_counter() - t}
            pid = platform["stack"].procs["search-api"].pid
            url = f"{platform['api']}/v1/search"
            with httpx.Client(timeout=60, headers=headers) as client:
                for i in range(20):  # warm-up: connections, caches
                    client.get(url, params={"q": PHRASES[i % len(PHRASES)], "k": K}).raise_for_status()
                out["seq"] = sequential(client, url, options.queries)
                out["filters"] = filters(client, url, growth.bounds, max(20, options.queries // 5))
            qps, lat, failures = hammer(url, options.concurrency, options.duration, headers)
            out["load"] = {"qps": qps, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "failures": failures}
            out["memory"] = proc_status(pid)
            if swap_tiles:
                area = growth.seed(swap_tiles)  # the embedder's part, before the clock starts
                out["swap"] = hot_swap(url, growth, area, headers)
                out["memory_after_swap"] = proc_status(pid)
    garbage_collect(core, IndexerSettings(gc_min_age_s=0))
    return out


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def measure(growth: Growth, model_dir: Path, options: SearchBenchSettings, swap_tiles: list) -> dict:
    core = growth.core
    at_start = run_info(
        options,
        product={
            **PRODUCT_ENV,
            "CLIP_MODEL": f"{model_dir} (tiny CLIP on CPU: the text encoder, not the model shipped)",
        },
        faiss=faiss.__version__,
    )
    alone = index_alone(core, growth)
    print(
        f"index alone ({alone['shards']} shards {alone['shard_kinds']}, loaded in {alone['load_s']:.1f} s): "
        f"image p50 {alone['image']['p50_ms']:.2f} ms, p99 {alone['image']['p99_ms']:.2f} ms, "
        f"recall@10 {alone['image']['recall_at_10']:.3f}; text p50 {alone['text']['p50_ms']:.2f} ms, "
        f"recall@10 {alone['text']['recall_at_10']:.3f}",
        flush=True,
    )
    windows = growth.windows  # before the swap area joins
    areas, tiles = len(growth.areas), growth.n_tiles
    manifest = load_manifest(core.index_dir)
    index_bytes = sum((core.index_dir / f).stat().st_size for f in manifest.files()) if manifest else 0
    e = end_to_end(growth, model_dir, options, swap_tiles)
    mem = e["memory"]
    c = options.concurrency
    result = {
        "windows": windows,
        "areas": areas,
        "tiles": tiles,
        "shards": alone["shards"],
        "shard_kinds": alone["shard_kinds"],
        "index_version": alone["version"],
        "codec": alone["codec"],
        "e2e_p50_ms": e["seq"]["p50_ms"],
        "e2e_p99_ms": e["seq"]["p99_ms"],
        "e2e_server_p50_ms": e["seq"]["server_p50_ms"],
        "e2e_stages_p50_ms": e["seq"]["stages_p50_ms"],
        "e2e_server_p99_ms": e["seq"]["server_p99_ms"],
        "e2e_stages_p99_ms": e["seq"]["stages_p99_ms"],
        "index_p50_ms": alone["image"]["p50_ms"],
        "index_p99_ms": alone["image"]["p99_ms"],
        "index_p50_ms_text": alone["text"]["p50_ms"],
        "index_p99_ms_text": alone["text"]["p99_ms"],
        "index_load_s": alone["load_s"],
        f"qps_{c}_clients": e["load"]["qps"],
        "load_p50_ms": e["load"]["p50_ms"],
        "load_p99_ms": e["load"]["p99_ms"],
        "load_failures": e["load"]["failures"],
        "recall_at_10_image": alone["image"]["recall_at_10"],
        "recall_at_10_text": alone["text"]["recall_at_10"],
        "rss_anon_bytes": mem.get("RssAnon"),
        "rss_file_bytes": mem.get("RssFile"),
        "rss_bytes_per_window": mem["RssAnon"] / windows if "RssAnon" in mem else None,
        "rss_file_bytes_per_window": mem["RssFile"] / windows if "RssFile" in mem else None,
        "api_memory": mem,
        "api_memory_after_swap": e.get("memory_after_swap"),
        "api_ready_s": e["ready_s"],
        **e.get("swap", {}),
        "filters": e["filters"],
        "index_bytes": index_bytes,
        "chunk_bytes": du(core.vectors_dir),
        "held_out": options.held_out,
        **finish(at_start),
    }
    print(
        f"end to end (sequential): p50 {result['e2e_p50_ms']:.1f} ms, p99 {result['e2e_p99_ms']:.1f} ms "
        f"(server p50 {result['e2e_server_p50_ms']:.1f} ms; "
        + ", ".join(f"{k} {v:.1f}" for k, v in result["e2e_stages_p50_ms"].items())
        + f")\nend to end ({c} clients): {result[f'qps_{c}_clients']:.1f} QPS, p50 {result['load_p50_ms']:.1f} ms, "
        f"p99 {result['load_p99_ms']:.1f} ms, {result['load_failures']} failed\n"
        f"polygon filter ({e['filters']['polygon']['strategy']}): p50 {e['filters']['polygon']['p50_ms']:.1f} ms; "
        f"broad bbox filter ({e['filters']['bbox']['strategy']}): p50 {e['filters']['bbox']['p50_ms']:.1f} ms\n"
        f"search-api memory: RssAnon {mem.get('RssAnon', 0) / 2**20:.0f} MiB "
        f"({result['rss_bytes_per_window'] or 0:.0f} B/window), RssFile {mem.get('RssFile', 0) / 2**20:.0f} MiB "
        f"({result['rss_file_bytes_per_window'] or 0:.0f} B/window); "
        f"index files {index_bytes / 2**30:.2f} GiB, chunks {result['chunk_bytes'] / 2**30:.2f} GiB",
        flush=True,
    )
    if "swap_after_add_s" in result:
        print(
            f"hot swap of a {result['swap_area_windows']:,}-window area: served after "
            f"{result['swap_after_add_s']:.2f} s (collect {result['swap_collect_s']:.2f} s, publish "
            f"{result['swap_publish_s']:.2f} s), {result['swap_failed']} of {result['swap_requests']} requests failed",
            flush=True,
        )
    return result


# ----------------------------------------------------------------------------- report


def goals(r: dict) -> dict[str, tuple[bool | None, str]]:
    """Each goal at this size: (met; None when it does not apply, what was measured)."""
    limit = GOAL_P50_3M_MS if r["windows"] <= 3_000_000 * 1.05 else GOAL_P50_10M_MS
    bpw = r["rss_bytes_per_window"]
    swap = r.get("swap_after_add_s")
    return {
        f"e2e p50 <= {limit:.0f} ms": (r["e2e_p50_ms"] <= limit, f"{r['e2e_p50_ms']:.1f} ms"),
        f"recall@10 image >= {GOAL_RECALL}": (
            r["recall_at_10_image"] >= GOAL_RECALL,
            f"{r['recall_at_10_image']:.3f}",
        ),
        f"recall@10 text >= {GOAL_RECALL}": (
            r["recall_at_10_text"] >= GOAL_RECALL,
            f"{r['recall_at_10_text']:.3f}",
        ),
        f"e2e p99 <= {GOAL_P99_10M_MS:.0f} ms at 10M": (
            (r["e2e_p99_ms"] <= GOAL_P99_10M_MS) if r["windows"] > 3_000_000 * 1.05 else None,
            f"{r['e2e_p99_ms']:.1f} ms",
        ),
        f"<= {GOAL_BYTES_PER_WINDOW:.0f} resident B/window": (
            (bpw <= GOAL_BYTES_PER_WINDOW) if bpw is not None and r["windows"] >= 1_000_000 else None,
            f"{bpw:.0f} B" if bpw is not None else "n/a",
        ),
        f"swap <= {GOAL_SWAP_S:.0f} s, 0 failed": (
            (swap <= GOAL_SWAP_S and r["swap_failed"] == 0) if swap is not None else None,
            f"{swap:.2f} s, {r['swap_failed']} failed" if swap is not None else "n/a",
        ),
    }


def summary(results: list[dict], options: SearchBenchSettings) -> None:
    c = options.concurrency
    print(f"\n=== summary (this machine: {os.cpu_count() or 0} CPUs, load {os.getloadavg()[0]:.1f}) ===")
    print(
        f"{'windows':>11} {'areas':>5} {'shards':>6} {'e2e p50':>8} {'e2e p99':>8} {'idx p50':>8} "
        f"{f'QPS x{c}':>8} {'R@10 img':>8} {'R@10 txt':>8} {'anon B/w':>8} {'file B/w':>8} {'swap s':>7} "
        f"{'build s':>8}"
    )
    for r in results:
        swap = r.get("swap_after_add_s")
        print(
            f"{r['windows']:>11,} {r['areas']:>5} {r['shards']:>6} {r['e2e_p50_ms']:>6.1f}ms "
            f"{r['e2e_p99_ms']:>6.1f}ms {r['index_p50_ms']:>6.2f}ms {r[f'qps_{c}_clients']:>8.1f} "
            f"{r['recall_at_10_image']:>8.3f} {r['recall_at_10_text']:>8.3f} {r['rss_bytes_per_window'] or 0:>8.0f} "
            f"{r['rss_file_bytes_per_window'] or 0:>8.0f} {swap if swap is not None else float('nan'):>7.2f} "
            f"{r['build']['total_s']:>8.0f}"
        )
    print("goals:")
    for r in results:
        marks = []
        for name, (met, got) in goals(r).items():
            verdict = "n/a" if met is None else ("met" if met else "NOT met")
            marks.append(f"{name}: {verdict} ({got})")
        print(f"  {r['windows']:>11,}: " + "; ".join(marks))


def write_results(path: Path, results: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float))
    tmp.replace(path)


def read_key(database_url: str) -> str:
    """A new key with scope ``read`` in the run's database, made by the core key store."""
    with sync_engine(database_url).begin() as conn:
        _, secret = key_store.create_key(conn, "bench-search", ["read"])
    return secret


def run(options: SearchBenchSettings) -> None:
    """Grow the index to each size, measure it, then print the summary."""
    sizes = [int(n) for n in options.sizes.split(",")]  # ascending (validated)
    model_dir = tiny_clip(default_cache_dir(REPO))
    results: list[dict] = []
    with (
        throwaway_database(options.admin_url, prefix="bench_search") as db_url,
        tempfile.TemporaryDirectory(dir=options.tmp, prefix="bench-search-") as data,
    ):
        core = CoreSettings(
            database_url=db_url,
            redis_url=options.redis_url,
            data_dir=Path(data),
            redis_namespace=f"bench-{uuid.uuid4().hex[:6]}",
        )
        growth = Growth(
            core=core,
            model_id=str(model_dir),  # what the embedder reports: the search-api checks it
            tiles=StudyTiles(EmbedderSettings()),
            stream=ClusteredStream(DIM, seed=options.seed, planned=sizes[-1]),
            options=options,
            rng=np.random.default_rng(options.seed + 2),
            api_key=read_key(db_url),
        )
        budget = options.max_tiles or core.max_tiles_per_area
        started = time.perf_counter()
        for i, size in enumerate(sizes):
            print(f"\n=== {size:,} windows ===", flush=True)
            t = time.perf_counter()
            before = dict(growth.times)
            growth.grow_to(size)
            build_s = time.perf_counter() - t
            # The hot-swap area: part of the next size (cut so that it does not overshoot it).
            room = sizes[i + 1] - growth.windows if i + 1 < len(sizes) else 1 << 62
            swap_tiles = growth.tiles.take(min(options.swap_tiles, budget), room) if room > 0 else []
            build = {k: v - before.get(k, 0.0) for k, v in growth.times.items()}
            print(
                f"built {growth.windows:,} windows in {len(growth.areas)} areas: {build_s:.0f} s ("
                + ", ".join(f"{k} {v:.0f}" for k, v in build.items())
                + ")",
                flush=True,
            )
            result = measure(growth, model_dir, options, swap_tiles)
            result["build"] = {"total_s": build_s, **build, "cumulative_s": time.perf_counter() - started}
            result["settings"] = options.model_dump(mode="json")
            if growth.image_queries is not None and growth.text_queries is not None:
                result["text_to_source_cosine"] = float(
                    np.mean(np.sum(growth.image_queries * growth.text_queries, axis=1))
                )
            results.append(result)
            write_results(options.out, results)
        with redis.Redis.from_url(core.redis_url) as client:  # the users' queries go with the run
            client.delete(query_sample.sample_key(core.redis_namespace, growth.model_id))
    summary(results, options)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"results: {options.out}\npeak memory of the benchmark process: {peak_gb:.1f} GB")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; bad options are reported as one ``error: ...`` line (exit 2)."""
    return run_cli(SearchBenchSettings, run, argv)


if __name__ == "__main__":
    sys.exit(main())
