"""Detection runs: what the indexer (which scores) and the search-api (which re-thresholds) share.

A run's scores (window ids and float16 probabilities) live in ``{data_dir}/runs/{run_id}.npz``,
with the out-of-fold probabilities of its labelled windows (what the held-out estimate is
measured on, so a new threshold re-measures it: `estimate_at`);
its histogram (``HIST_BINS`` bins on 0..1) lives in ``detect_runs.histogram``. Thresholds are
snapped to the histogram's grid (multiples of 1/HIST_BINS, i.e. 0.001) and a window is a hit when
its score's bin is at or above the threshold's bin, so the count the histogram gives at a
threshold is exactly the number of rows that applying it writes to ``run_hits``.

`replace_run_polygons` dissolves a run's hits into ``run_polygons``; both sides call it, so both
run the same statement (PostGIS does the geometry).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection

from cliprs.fsutil import atomic_path

HIST_BINS = 1000
# States whose results can be read: a run being re-thresholded keeps its current ones until
# the indexer swaps them.
RESULT_STATES = ("done", "rethresholding")

# Replaces a run's polygons from its current run_hits: per zoom level, hits whose footprints
# intersect or touch form one cluster (ST_ClusterDBSCAN with one point per cluster is
# ST_ClusterIntersecting as a window function), and each cluster's footprints are unioned into
# one (multi)polygon; its area is measured on the spheroid (geography). Neighbouring tiles'
# footprints are computed tile by tile, so a shared edge can differ in the last bits: clusters
# use a tolerance of SNAP_DEG (about a millimetre) and the union snaps to that grid, so
# touching windows merge and no hairline slivers remain.
SNAP_DEG = 1e-8
_DELETE_POLYGONS_SQL = "DELETE FROM run_polygons WHERE run_id = :run_id"
_INSERT_POLYGONS_SQL = """
INSERT INTO run_polygons (run_id, z, geom, area_m2, max_score, mean_score, window_count, window_ids)
SELECT :run_id, z, geom, ST_Area(geom::geography), max_score, mean_score, window_count, window_ids
FROM (
    SELECT z, ST_Multi(ST_Union(ST_SnapToGrid(footprint, 1e-8))) AS geom, max(score) AS max_score,
           avg(score) AS mean_score, count(*) AS window_count,
           array_agg(window_id ORDER BY window_id) AS window_ids
    FROM (
        SELECT h.window_id, h.score, w.z, w.footprint,
               ST_ClusterDBSCAN(w.footprint, 1e-8, 1) OVER (PARTITION BY w.z) AS cluster
        FROM run_hits h JOIN windows w ON w.id = h.window_id
        WHERE h.run_id = :run_id
    ) clustered
    GROUP BY z, cluster
) dissolved
"""


def replace_run_polygons(conn: Connection, run_id: int) -> None:
    """Replace a run's polygons with the dissolve of its current ``run_hits`` (in the caller's
    transaction; the search-api calls it through ``AsyncConnection.run_sync``)."""
    conn.execute(text(_DELETE_POLYGONS_SQL), {"run_id": run_id})
    conn.execute(text(_INSERT_POLYGONS_SQL), {"run_id": run_id})


def snap_threshold(threshold: float) -> float:
    """The threshold on the histogram's grid (0.001 steps), within [0, 1]."""
    if not math.isfinite(threshold):
        raise ValueError("a threshold must be a finite number between 0 and 1")
    return round(min(1.0, max(0.0, float(threshold))) * HIST_BINS) / HIST_BINS


def bins_of(scores: np.ndarray) -> np.ndarray:
    """Each score's histogram bin (a score of exactly 1 falls in the last bin)."""
    b = np.floor(np.asarray(scores, dtype=np.float64) * HIST_BINS).astype(np.int64)
    return np.clip(b, 0, HIST_BINS - 1)


def threshold_bin(threshold: float) -> int:
    """The first bin at or above ``threshold`` (1.0 means the last bin: scores of 0.999 and up)."""
    return min(round(snap_threshold(threshold) * HIST_BINS), HIST_BINS - 1)


def histogram(scores: np.ndarray) -> list[int]:
    """Counts of scores per bin (``HIST_BINS`` bins of width 0.001 on 0..1)."""
    return np.bincount(bins_of(scores), minlength=HIST_BINS).astype(np.int64).tolist()


def count_at(hist: Sequence[int], threshold: float) -> int:
    """Windows whose score is at or above ``threshold`` (snapped to the grid)."""
    return int(sum(hist[threshold_bin(threshold) :]))


def hits_at(ids: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of the windows at or above ``threshold`` (by bin, as `count_at` counts)."""
    keep = bins_of(scores) >= threshold_bin(threshold)
    return np.asarray(ids)[keep], np.asarray(scores)[keep]


def scores_path(data_dir: Path, run_id: int) -> Path:
    return Path(data_dir) / "runs" / f"{int(run_id)}.npz"


def scores_files(data_dir: Path) -> dict[int, Path]:
    """Run id -> its scores file, for every scores file in ``data_dir`` (nothing else there)."""
    folder = Path(data_dir) / "runs"
    if not folder.is_dir():
        return {}
    return {
        int(p.stem): p
        for p in folder.glob("*.npz")
        if p.stem.isdigit() and p == scores_path(data_dir, int(p.stem))
    }


def remove_scores(data_dir: Path, run_ids: Sequence[int]) -> int:
    """Delete these runs' scores files (a run's file goes with its row); how many there were."""
    removed = 0
    for run_id in run_ids:
        try:
            scores_path(data_dir, run_id).unlink()
        except FileNotFoundError:  # never scored, or removed meanwhile
            continue
        removed += 1
    return removed


def write_scores(
    path: Path,
    ids: np.ndarray,
    scores: np.ndarray,
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write a run's scores atomically: ``ids`` int64 and ``scores`` float16 (what is stored is
    what later thresholds read, so they are rounded to float16 before anything else uses them);
    ``held_out``: the labelled windows' out-of-fold probabilities and classes (`estimate_at`)."""
    extra = {}
    if held_out is not None:
        extra = {
            "held_out_scores": np.asarray(held_out[0], dtype=np.float16),
            "held_out_positive": np.asarray(held_out[1], dtype=bool),
        }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh, ids=np.asarray(ids, dtype=np.int64), scores=np.asarray(scores, dtype=np.float16), **extra
            )


def read_scores(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, scores float16) of a run; FileNotFoundError when the file is gone."""
    with np.load(path) as data:
        return data["ids"], data["scores"]


def read_held_out(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(out-of-fold probabilities float16, classes bool) of a run's labelled windows; None when
    the file has none (too few labels to hold any out, or written before they were kept)."""
    with np.load(path) as data:
        if "held_out_scores" not in data.files:
            return None
        return data["held_out_scores"], data["held_out_positive"]


def estimate_at(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Precision and recall at ``threshold`` of held-out probabilities against their classes
    (a window is predicted positive by bin, as `count_at` counts): None where undefined."""
    predicted = bins_of(np.asarray(scores, dtype=np.float16)) >= threshold_bin(threshold)
    y = np.asarray(positive, dtype=bool)
    tp = int((predicted & y).sum())
    fp = int((predicted & ~y).sum())
    fn = int((~predicted & y).sum())
    return {"precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None}


def estimate_for(
    estimate: dict | None, held_out: tuple[np.ndarray, np.ndarray] | None, threshold: float
) -> dict | None:
    """A run's stored estimate re-measured at ``threshold`` (its ``threshold`` member updated);
    unchanged when there is nothing to re-measure it on."""
    if estimate is None or held_out is None:
        return estimate
    return {
        **estimate,
        **estimate_at(held_out[0], held_out[1], threshold),
        "threshold": snap_threshold(threshold),
    }
