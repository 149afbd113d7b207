"""Detect over 3M windows: exhaustive scoring from float16 shards, and the water figures.

1. Writes 3M synthetic CLIP-like unit vectors (`cliprs_testing.synthetic.ClusteredStream`) as
   the indexer writes shards (`cliprs_index.store.write_shard`, 500k rows each, float16 rows
   memory-mapped), into a temporary folder (about 3 GB; removed at the end).
2. Trains Detect's classifier (`cliprs_indexer.detect`) on 20 + 20 labels of a planted class
   plus its random extra negatives, then scores every window: one cold run (rows read from
   disk or page cache as it happens) and ``--runs`` warm ones; ``detect_s`` is the warm median
   of train + score + histogram + scores file (the part of a run that grows with the windows;
   hits and polygons grow with the hits).
3. Runs the acceptance test `tests/test_detect_water.py` (platform, demo area, NDWI truth) and
   reads the water precision and recall it prints.

Writes ``benchmarks/results/detect.json``: water_precision, water_recall, windows_scored,
detect_s, score_s, the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine_info import finish, run_info

from cliprs import runs
from cliprs.manifest import Shard
from cliprs_index.store import open_shard, write_shard
from cliprs_indexer.detect import (
    EXTRA_MIN,
    AreaWindows,
    build_training_set,
    estimate,
    fit,
    score_windows,
)
from cliprs_testing.synthetic import ClusteredStream

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "detect.json"
SHARD_ROWS = 500_000
DIM = 512


def write_shards(folder: Path, total: int, seed: int = 0) -> tuple[AreaWindows, np.ndarray, np.ndarray]:
    """Shards of ``total`` windows; a planted class (2 % of the places, shifted along one
    direction) gives the classifier something to find. Returns the windows, the planted ids and
    one vector of every 97th window with its class (a labelling pool)."""
    stream = ClusteredStream(DIM, seed=seed, planned=total)
    rng = np.random.default_rng(seed + 1)
    direction = rng.standard_normal(DIM).astype(np.float32)
    direction /= np.linalg.norm(direction)
    shards, planted, pool_ids = [], [], []
    next_id = 0
    for start in range(0, total, SHARD_ROWS):
        n = min(SHARD_ROWS, total - start)
        vectors, _ = stream.batch(n)
        cls = np.repeat(rng.random(-(-n // 16)) < 0.02, 16)[:n]
        vectors[cls] += 0.8 * direction
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        # Window ids as the embedder makes them: tile id * 4096 + index, 26 windows per tile.
        seq = np.arange(next_id, next_id + n, dtype=np.int64)
        ids = (1 + seq // 26) * 4096 + seq % 26
        next_id += n
        stem, kind = write_shard(folder, ids, vectors)
        meta = Shard(stem=stem, count=n, kind=kind, area_ids=[1])
        shards.append(open_shard(folder, meta, DIM, searchable=False))
        planted.append(ids[cls])
        pool_ids.append(ids[::97])
    windows = AreaWindows(shards, [None] * len(shards), [s.count for s in shards])
    return windows, np.concatenate(planted), np.concatenate(pool_ids)


def detect_once(
    windows: AreaWindows, pos: np.ndarray, neg: np.ndarray, folder: Path, threads: int | None
) -> dict:
    t0 = time.perf_counter()
    _, extras = windows.sample(max(EXTRA_MIN, 3 * len(pos)), np.empty(0, dtype=np.int64), seed=0)
    ts, _ = build_training_set(pos, neg, extras)
    est = estimate(ts, 0.5)
    model = fit(ts)
    t1 = time.perf_counter()
    ids, scores = score_windows(windows, model, threads)
    t2 = time.perf_counter()
    hist = runs.histogram(scores)
    runs.write_scores(folder / "runs" / "bench.npz", ids, scores)
    t3 = time.perf_counter()
    return {
        "train_s": t1 - t0,
        "score_s": t2 - t1,
        "store_s": t3 - t2,
        "detect_s": t3 - t0,
        "windows": len(ids),
        "hits_at_0_5": runs.count_at(hist, 0.5),
        "estimate": est,
    }


def water_figures() -> dict:
    """Run the acceptance test and read the figures it prints."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_detect_water.py",
            "-x",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    out = proc.stdout + proc.stderr
    water = re.search(r"water \(NDWI truth.*?precision ([\d.]+) recall ([\d.]+)", out)
    shore = re.search(r"shoreline .*?precision ([\d.]+) recall ([\d.]+)", out)
    return {
        "water_precision": float(water.group(1)) if water else None,
        "water_recall": float(water.group(2)) if water else None,
        "shoreline_precision": float(shore.group(1)) if shore else None,
        "shoreline_recall": float(shore.group(2)) if shore else None,
        "water_test_passed": proc.returncode == 0,
        "water_test_s": round(time.perf_counter() - t0, 1),
        "water_test_tail": None if proc.returncode == 0 else out[-2000:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=3_000_000)
    parser.add_argument("--runs", type=int, default=3, help="warm runs (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="scoring threads (default min(4, CPUs))")
    parser.add_argument("--skip-water", action="store_true", help="do not run the water acceptance test")
    args = parser.parse_args()
    at_start = run_info({k: v for k, v in vars(args).items() if v != parser.get_default(k)})
    folder = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    try:
        t = time.perf_counter()
        windows, planted, pool = write_shards(folder, args.windows)
        print(
            f"wrote {windows.total:,} windows in {len(windows.shards)} shards in {time.perf_counter() - t:.0f} s"
        )
        rng = np.random.default_rng(3)
        is_planted = np.isin(pool, planted)
        pos_ids = rng.choice(pool[is_planted], 20, replace=False)
        neg_ids = rng.choice(pool[~is_planted], 20, replace=False)
        _, pos = windows.locate(pos_ids)
        _, neg = windows.locate(neg_ids)
        cold = detect_once(windows, pos, neg, folder, args.threads)
        print(f"cold: {cold['detect_s']:.2f} s (score {cold['score_s']:.2f} s)")
        warm = []
        for i in range(args.runs):
            warm.append(detect_once(windows, pos, neg, folder, args.threads))
            print(f"warm {i + 1}: {warm[-1]['detect_s']:.2f} s (score {warm[-1]['score_s']:.2f} s)")
        detect_s = statistics.median(r["detect_s"] for r in warm)
        score_s = statistics.median(r["score_s"] for r in warm)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {
        "windows_scored": warm[-1]["windows"],
        "detect_s": round(detect_s, 3),
        "score_s": round(score_s, 3),
        "train_s": round(statistics.median(r["train_s"] for r in warm), 3),
        "store_s": round(statistics.median(r["store_s"] for r in warm), 3),
        "cold_detect_s": round(cold["detect_s"], 3),
        "windows_per_s": round(warm[-1]["windows"] / score_s),
        "target_s": 10.0,
        "synthetic_estimate": warm[-1]["estimate"],
        "threads": args.threads or min(4, os.cpu_count() or 1),
    }
    if not args.skip_water:
        result.update(water_figures())
    result.update(finish(at_start))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "water_test_tail"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
