"""Search latency, throughput and recall at 100k and 1M windows.

    make bench-search           (or: .venv/bin/python benchmarks/bench_search.py --sizes 100000,1000000)

For each size: a throwaway PostGIS database gets that many window rows (tiles of the original
study area in Northern Virginia at zooms 16-19, cut exactly as the embedder cuts them), the
windows get synthetic CLIP-like 512-d vectors (clustered unit vectors: `cliprs_testing.synthetic`),
and the indexer builds the shard it would build for that size (exact while at most
INDEXER_FLAT_MAX_VECTORS, IVF-PQ tuned to recall@10 >= 0.95 above). Then:

- index alone: one query at a time through `search_shard` (what each search-api request runs),
  one FAISS thread, held-out queries; recall@10 against exact search on the same queries;
- end to end: the embedder (tiny CLIP on CPU) and the search-api as real processes, `GET
  /v1/search?q=...&k=10` over HTTP: embedding, FAISS, PostGIS join, merging, reverse geocoding;
  sequentially (p50/p99), then with 8 concurrent clients (QPS, p50/p99), plus one selective
  polygon filter (ID selector) and one broad box filter (over-fetch).

At 100k the IVF-PQ index is also built (forced) so both index kinds are compared at one size.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import faiss
import httpx
import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.fsutil import atomic_path
from cliprs.manifest import Shard, search_shard
from cliprs.settings import CoreSettings
from cliprs.tiles import BBox, tiles_for_bbox, zorder
from cliprs_indexer.build import publish_changes
from cliprs_indexer.settings import IndexerSettings
from cliprs_indexer.shards import build_index, recall_at_k
from cliprs_testing.db import ADMIN_URL, throwaway_database
from cliprs_testing.model import default_cache_dir, tiny_clip
from cliprs_testing.platform import run_platform
from cliprs_testing.synthetic import clustered_unit_vectors, seed_area
from cliprs_tools.cli import cli_config, run_cli

REPO = Path(__file__).resolve().parents[1]
HELP = __doc__  # the whole module docstring is the --help text
STUDY_AREA = BBox(-77.274, 38.812, -76.986, 38.912)  # Northern Virginia, Arlington, the National Mall
DIM = 512
PHRASES = [
    "boats near a pier", "a red car in a parking lot", "the Washington Monument", "a baseball field",
    "a river with a bridge", "dense residential area", "an airport runway", "a golf course", "a church",
    "storage tanks", "a stadium", "trees in a park", "a highway interchange", "a school with a playground",
    "a pond", "railway tracks", "commercial buildings", "a parking garage", "a marina", "farmland",
    "a forest", "a beach", "a construction site", "white roofs", "a cemetery", "tennis courts",
    "a swimming pool", "a large warehouse", "a traffic circle", "a helicopter pad",
]  # fmt: skip


class SearchBenchSettings(BaseSettings):
    """Search latency, throughput and recall at 100k and 1M windows."""

    model_config = cli_config(
        "BENCH_SEARCH_", "python benchmarks/bench_search.py", json_schema_extra={"description": HELP}
    )

    sizes: str = Field("100000,1000000", description="comma-separated window counts")
    queries: int = Field(300, gt=0, description="sequential end-to-end queries per size")
    held_out: int = Field(1000, gt=0, description="held-out queries for index latency and recall")
    concurrency: int = Field(8, gt=0)
    duration: float = Field(20.0, gt=0, description="seconds of concurrent load")
    admin_url: str = ADMIN_URL
    redis_url: str = os.environ.get("CLIPRS_REDIS_URL", "redis://127.0.0.1:6379/0")
    tmp: str | None = Field(None, description="where shards are written (default: the system temp dir)")


def study_tiles(n_windows: int, per_tile: int = 26) -> list:
    """Tiles of the study area, zoom by zoom from 16, until they hold ``n_windows`` windows."""
    need = -(-n_windows // per_tile)
    out: list = []
    for z in range(16, 23):
        out += zorder(tiles_for_bbox(STUDY_AREA, [z]))[: need - len(out)]
        if len(out) >= need:
            return out
    raise ValueError("the study area is too small for that many windows")


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) if values else float("nan")


def index_alone(index: faiss.Index, shard: Shard, queries: np.ndarray, truth: np.ndarray) -> dict:
    faiss.omp_set_num_threads(1)  # as in the search-api: one thread per request
    for q in queries[:20]:
        search_shard(index, shard, q, 10)
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = search_shard(index, shard, q, 10)
        times.append((time.perf_counter() - t) * 1000)
        found.append(ids[0])
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return {"p50": pct(times, 50), "p99": pct(times, 99), "recall": recall_at_k(np.array(found), truth)}


def hammer(url: str, clients: int, duration_s: float) -> tuple[float, list[float], int]:
    """(QPS, latencies ms, failures) with ``clients`` concurrent clients for ``duration_s``."""
    latencies: list[float] = []
    failures = [0]
    stop = time.monotonic() + duration_s
    lock = threading.Lock()

    def run(seed: int) -> None:
        i = seed
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < stop:
                t = time.perf_counter()
                resp = client.get(url, params={"q": PHRASES[i % len(PHRASES)], "k": 10})
                dt = (time.perf_counter() - t) * 1000
                with lock:
                    if resp.status_code == 200:
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


def end_to_end(
    core: CoreSettings, model_dir: Path, options: SearchBenchSettings, area_bbox: list[float]
) -> dict:
    with (
        tempfile.TemporaryDirectory() as run_dir,
        run_platform(
            Path(run_dir),
            database_url=core.database_url,
            redis_url=core.redis_url,
            data_dir=core.data_dir,
            namespace=core.redis_namespace,
            env={"CLIP_MODEL": str(model_dir)},
            services={"embedder", "search-api"},
            ready_timeout_s=600,
            cwd=REPO,
        ) as platform,
    ):
        url = f"{platform['api']}/v1/search"
        out: dict = {}
        with httpx.Client(timeout=60) as client:
            for i in range(20):  # warm-up: connections, caches
                client.get(url, params={"q": PHRASES[i % len(PHRASES)], "k": 10}).raise_for_status()
            seq, server, stages = [], [], []
            for i in range(options.queries):
                t = time.perf_counter()
                resp = client.get(url, params={"q": PHRASES[i % len(PHRASES)], "k": 10})
                seq.append((time.perf_counter() - t) * 1000)
                resp.raise_for_status()
                server.append(resp.json()["took_ms"])
                stages.append(resp.json()["timings_ms"])
            out["seq"] = {
                "p50": pct(seq, 50),
                "p99": pct(seq, 99),
                "server_p50": pct(server, 50),
                "stages_p50": {k: pct([s.get(k, 0.0) for s in stages], 50) for k in stages[0]},
            }
            w, s, e, n = area_bbox
            cx, cy = (w + e) / 2, (s + n) / 2
            d = (e - w) / 200  # a small triangle: a few hundred windows (selective)
            poly = {"type": "Polygon", "coordinates": [[[cx, cy], [cx + d, cy], [cx, cy + d], [cx, cy]]]}
            broad = f"{w},{s},{(w + e) / 2},{n}"  # half the area (broad)
            for name, call in (
                ("polygon", lambda q: client.post(url, json={"q": q, "k": 10, "polygon": poly})),
                ("bbox", lambda q: client.get(url, params={"q": q, "k": 10, "bbox": broad})),
            ):
                times, strategy = [], None
                for i in range(max(20, options.queries // 5)):
                    t = time.perf_counter()
                    resp = call(PHRASES[i % len(PHRASES)])
                    times.append((time.perf_counter() - t) * 1000)
                    resp.raise_for_status()
                    strategy = resp.json()["filter"]["strategy"]
                out[name] = {"p50": pct(times, 50), "p99": pct(times, 99), "strategy": strategy}
        qps, lat, failures = hammer(url, options.concurrency, options.duration)
        out["load"] = {"qps": qps, "p50": pct(lat, 50), "p99": pct(lat, 99), "failures": failures}
        return out


def run_size(n: int, options: SearchBenchSettings, model_dir: Path) -> dict:
    print(f"\n=== {n:,} windows ===", flush=True)
    result: dict = {"n": n}
    with (
        throwaway_database(options.admin_url) as db_url,
        tempfile.TemporaryDirectory(dir=options.tmp) as data,
    ):
        core = CoreSettings(
            database_url=db_url,
            redis_url=options.redis_url,
            data_dir=Path(data),
            redis_namespace=f"bench-{uuid.uuid4().hex[:6]}",
        )
        t = time.perf_counter()
        area = seed_area(db_url, study_tiles(n), name="bench", source="bench")
        with sync_engine(db_url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE windows"))
        n_real, area_id, ids = len(area.ids), area.area_id, area.ids
        print(
            f"PostGIS rows: {n_real:,} windows in {len(area.tile_ids):,} tiles, {time.perf_counter() - t:.0f} s",
            flush=True,
        )
        result["n"] = n_real
        bbox = [
            area.boxes[:, 0].min(),
            area.boxes[:, 1].min(),
            area.boxes[:, 2].max(),
            area.boxes[:, 3].max(),
        ]
        del area

        t = time.perf_counter()
        vectors = clustered_unit_vectors(n_real + options.held_out, DIM, seed=7)
        # Held-out queries: random rows swapped to the end, so the index never holds them.
        rng = np.random.default_rng(8)
        held = rng.choice(n_real + options.held_out, options.held_out, replace=False)
        tail = np.arange(n_real, n_real + options.held_out)
        swap, free = np.setdiff1d(held, tail), np.setdiff1d(tail, held)
        vectors[swap], vectors[free] = vectors[free], vectors[swap].copy()
        data, queries = vectors[:n_real], vectors[n_real:].copy()
        print(f"vectors: {time.perf_counter() - t:.0f} s", flush=True)

        exact = faiss.IndexFlatIP(DIM)
        exact.add(data)
        truth = ids[exact.search(queries, 10)[1]]
        del exact

        served = IndexerSettings()
        variants = [served] + (
            [IndexerSettings(flat_max_vectors=0)] if n_real <= served.flat_max_vectors else []
        )
        for settings in variants:
            t = time.perf_counter()
            built = build_index(ids, data, settings)
            build_s = time.perf_counter() - t
            alone = index_alone(
                built.index, Shard(area_id, "", n_real, built.kind, built.params), queries, truth
            )
            result[f"index_{built.kind}"] = {**alone, "build_s": build_s, "params": built.params}
            print(
                f"index alone ({built.kind}): p50 {alone['p50']:.2f} ms, p99 {alone['p99']:.2f} ms, "
                f"recall@10 {alone['recall']:.3f}, build+tune {build_s:.0f} s {built.params or ''}",
                flush=True,
            )
            if settings is served:  # what the indexer would publish: the search-api serves it
                rel = f"shards/area-{area_id}-bench.faiss"
                with atomic_path(core.index_dir / rel) as tmp:
                    faiss.write_index(built.index, str(tmp))
                shard = Shard(area_id, rel, n_real, built.kind, built.params)
                publish_changes(core, {area_id: shard}, str(model_dir), DIM)
                result["served"] = built.kind
            del built
        del vectors, data
        result["e2e"] = end_to_end(core, model_dir, options, bbox)
        e = result["e2e"]
        print(
            f"end to end (sequential): p50 {e['seq']['p50']:.1f} ms, p99 {e['seq']['p99']:.1f} ms "
            f"(server-side p50 {e['seq']['server_p50']:.1f} ms; stage p50s "
            + ", ".join(f"{k} {v:.1f}" for k, v in e["seq"]["stages_p50"].items())
            + " ms)\n"
            f"end to end ({options.concurrency} clients): {e['load']['qps']:.1f} QPS, p50 {e['load']['p50']:.1f} ms, "
            f"p99 {e['load']['p99']:.1f} ms, {e['load']['failures']} failed\n"
            f"polygon filter ({e['polygon']['strategy']}): p50 {e['polygon']['p50']:.1f} ms; "
            f"broad bbox filter ({e['bbox']['strategy']}): p50 {e['bbox']['p50']:.1f} ms",
            flush=True,
        )
    return result


def summary(results: list[dict], options: SearchBenchSettings) -> None:
    print(f"\n=== summary (this machine: {os.cpu_count() or 0} CPUs) ===")
    head = f"{'windows':>10} {'index':>6} {'recall@10':>9} {'idx p50':>8} {'idx p99':>8} {'e2e p50':>8} {'e2e p99':>8} {'QPS x' + str(options.concurrency):>8} {'load p50':>9}"
    print(head)
    for r in results:
        idx = r[f"index_{r['served']}"]
        e = r["e2e"]
        print(
            f"{r['n']:>10,} {r['served']:>6} {idx['recall']:>9.3f} {idx['p50']:>6.2f}ms {idx['p99']:>6.2f}ms "
            f"{e['seq']['p50']:>6.1f}ms {e['seq']['p99']:>6.1f}ms {e['load']['qps']:>8.1f} {e['load']['p50']:>7.1f}ms"
        )
        if "index_ivfpq" in r and r["served"] != "ivfpq":
            ivf, flat = r["index_ivfpq"], r["index_flat"]
            print(
                f"{'':>10} ivfpq  {ivf['recall']:>9.3f} {ivf['p50']:>6.2f}ms {ivf['p99']:>6.2f}ms "
                f"(not served; {flat['p50'] / ivf['p50']:.1f}x faster than flat at this size)"
            )
    big = results[-1]
    p50, recall = big["e2e"]["seq"]["p50"], big[f"index_{big['served']}"]["recall"]
    verdict = "met" if p50 < 50 and recall >= 0.95 else "NOT met"
    print(
        f"goal at {big['n']:,} windows (p50 < 50 ms end to end, recall@10 >= 0.95): {verdict} "
        f"({p50:.1f} ms, {recall:.3f})"
    )


def run(options: SearchBenchSettings) -> None:
    """Measure every size, then print the summary and the process's peak memory."""
    model_dir = tiny_clip(default_cache_dir(REPO))
    results = [run_size(int(n), options, model_dir) for n in options.sizes.split(",")]
    summary(results, options)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"peak memory of the benchmark process (vectors, exact ground truth, index build): {peak_gb:.1f} GB"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; bad options are reported as one ``error: ...`` line (exit 2)."""
    return run_cli(SearchBenchSettings, run, argv)


if __name__ == "__main__":
    sys.exit(main())
