"""Detect: train a classifier on a project's labels and score every window of its areas.

1. **Training set.** The labelled windows' vectors (looked up in the current index version's
   float16 rows) plus ``max(50, 3 x positives)`` random unlabelled windows of the project's areas
   as extra negatives. An analyst labels a handful of windows, and the classes they pick are
   usually rare in an area, so a random window is very likely a negative: the extras show the
   classifier what "everything else" looks like, beyond the few negatives someone thought to
   mark. Because some extras will be unlabelled positives (common classes, e.g. water), each
   counts ``EXTRA_WEIGHT`` (0.5) of a real label, and an extra that a model of the labels alone
   calls positive (probability >= 0.5) is left out.
2. **Classifier.** Logistic regression (scikit-learn, ``class_weight="balanced"``) on the
   L2-normalised 512-d vectors with weak regularisation, C = 300: unit vectors have small
   components (~0.044), and a strongly regularised model both squeezes every probability towards
   0.5 and keeps its boundary close to the labelled positives, missing the less typical ones.
   Measured on the water acceptance data over 14 random draws of 20 + 20 labels, at threshold
   0.5: median recall 0.90 at C = 10, 0.99 at C = 300 (12 of 14 draws >= 0.94), precision
   >= 0.999 at both; C = 1000 and above change nothing more. Precision and recall are estimated on labels held out of
   training: stratified k-fold (k = min(5, positives, negatives)) over the labels, each fold
   trained on the other labels plus the extras; the out-of-fold probabilities are thresholded
   at the run's threshold. Then the model is fitted on all labels; its coefficients and
   intercept are stored in ``detect_runs.model``.
3. **Scoring.** Every window of the project's areas, exhaustively, from the index version's
   memory-mapped float16 rows (not the approximate index): blocks of ``BLOCK_ROWS`` rows are
   converted to float32, multiplied by the coefficient vector and passed through the sigmoid,
   on a few threads (numpy releases the GIL). A window belongs to an area when its tile
   (id >> 12) is in ``area_tiles``. Stored rows are already unit vectors (the embedder
   normalises them; float16 keeps norms within 1e-3), so scoring skips the per-row norm.
4. **Storing.** Scores (ids, float16) in ``{data_dir}/runs/{run_id}.npz`` (atomic), a 1,000-bin
   histogram in ``detect_runs.histogram`` (the count at any threshold, instantly), the hits at
   the run's threshold in ``run_hits`` (COPY), and the hits dissolved per zoom into
   ``run_polygons`` (`cliprs.runs`). States: queued -> running -> done | failed (with the error);
   ``stage_seconds`` times each stage. A running run beats (``heartbeat_at``) until it ends: the
   reconciler hands out again a run whose beats stopped (`cliprs.reconcile`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sqlalchemy import Connection, Engine, Row

from cliprs import jobs, runs
from cliprs.db.engine import sync_engine
from cliprs.manifest import Manifest, load_manifest
from cliprs.queue import TRANSIENT_ERRORS, retry_or_fail
from cliprs.settings import CoreSettings
from cliprs_index.store import ShardData, open_shard, tile_of
from cliprs_indexer import repository

log = logging.getLogger("cliprs.indexer.detect")

MODEL_KIND = "logistic_regression"
EXTRA_MIN = 50
EXTRA_PER_POSITIVE = 3
EXTRA_WEIGHT = 0.5
C = 300.0
MAX_FOLDS = 5
# Rows scored per step: 16k x 512 float32 = 32 MB, which stays in the caches' reach far better
# than huge blocks (measured: 4.5 s per 3M rows at 16k, 6 s at 256k, one core).
BLOCK_ROWS = 16_384


@dataclass
class LinearModel:
    """A fitted linear classifier: probability = sigmoid(coef . x + intercept)."""

    coef: np.ndarray  # float32 (dim,)
    intercept: float

    def probability(self, x: np.ndarray) -> np.ndarray:
        return _sigmoid(np.asarray(x, dtype=np.float32) @ self.coef + np.float32(self.intercept))


@dataclass
class TrainingSet:
    vectors: np.ndarray  # float32 (n, dim), L2-normalised
    positive: np.ndarray  # bool (n,)
    labelled: np.ndarray  # bool (n,): a real label (False: an extra negative)
    weights: np.ndarray  # float (n,)

    @property
    def positives(self) -> int:
        return int((self.positive & self.labelled).sum())

    @property
    def negatives(self) -> int:
        return int((~self.positive & self.labelled).sum())


@dataclass
class AreaWindows:
    """The shards that hold windows of some areas, and which of their rows do."""

    shards: list[ShardData]
    members: list[np.ndarray | None]  # per shard: bool mask of its rows in the areas (None: all)
    counts: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    def locate(self, window_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found in the areas' rows, their float32 vectors)."""
        ids = np.asarray(window_ids, dtype=np.int64)
        found, vectors = [], []
        for shard, member in zip(self.shards, self.members, strict=True):
            pos = shard.positions(ids)
            ok = pos >= 0
            if member is not None:
                ok[ok] = member[pos[ok]]
            if ok.any():
                order = np.argsort(pos[ok])
                found.append(ids[ok][order])
                vectors.append(np.asarray(shard.rows[pos[ok][order]], dtype=np.float32))
        if not found:
            dim = self.shards[0].rows.shape[1] if self.shards else 0
            return np.empty(0, dtype=np.int64), np.empty((0, dim), dtype=np.float32)
        return np.concatenate(found), np.concatenate(vectors)

    def sample(self, n: int, exclude: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` random windows of the areas, none of ``exclude``: (ids, float32 vectors)."""
        total = self.total
        if n <= 0 or total == 0:
            return self.locate(np.empty(0, dtype=np.int64))
        rng = np.random.default_rng(seed)
        # Draw a few more than needed: some may be excluded.
        picks = np.sort(rng.choice(total, size=min(total, n + len(exclude)), replace=False))
        offsets = np.concatenate([[0], np.cumsum(self.counts)])
        ids = []
        for i, (shard, member) in enumerate(zip(self.shards, self.members, strict=True)):
            mine = picks[(picks >= offsets[i]) & (picks < offsets[i + 1])] - offsets[i]
            rows = mine if member is None else np.flatnonzero(member)[mine]
            ids.append(np.asarray(shard.ids[rows]))
        chosen = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)
        chosen = chosen[~np.isin(chosen, exclude)]
        chosen = rng.permutation(chosen)[:n]
        return self.locate(np.sort(chosen))


# ---------------------------------------------------------------------------- reading


def area_tile_mask(conn: Connection, area_ids: list[int]) -> np.ndarray:
    """A boolean table indexed by tile id: True for the tiles of ``area_ids``."""
    tiles = np.array(repository.tile_ids_of_areas(conn, area_ids), dtype=np.int64)
    mask = np.zeros(int(tiles.max()) + 1 if len(tiles) else 0, dtype=bool)
    mask[tiles] = True
    return mask


def open_area_windows(
    index_dir: Path, manifest: Manifest, area_ids: list[int], tile_mask: np.ndarray
) -> AreaWindows:
    """The manifest's shards listing one of ``area_ids`` (ids and rows memory-mapped), with the
    rows whose tile is in ``tile_mask``."""
    wanted = set(area_ids)
    shards, members, counts = [], [], []
    for meta in manifest.shards:
        if not wanted.intersection(meta.area_ids) or meta.count == 0:
            continue
        shard = open_shard(index_dir, meta, manifest.dim, searchable=False)
        tiles = tile_of(np.asarray(shard.ids))
        inside = tiles < len(tile_mask)
        member = np.zeros(shard.count, dtype=bool)
        member[inside] = tile_mask[tiles[inside]]
        count = int(member.sum())
        if count == 0:
            continue
        shards.append(shard)
        members.append(None if count == shard.count else member)
        counts.append(count)
    return AreaWindows(shards, members, counts)


# ---------------------------------------------------------------------------- training


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a large negative argument overflows to inf harmlessly (1 / inf = 0).
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def build_training_set(
    pos: np.ndarray, neg: np.ndarray, extras: np.ndarray, extra_weight: float = EXTRA_WEIGHT
) -> tuple[TrainingSet, int]:
    """The training set from labelled positives, labelled negatives and random extras; extras
    that a model of the labels alone calls positive are dropped. Returns it and how many extras
    were dropped."""
    pos, neg = _normalise(pos), _normalise(neg)
    extras = _normalise(extras) if len(extras) else np.empty((0, pos.shape[1]), dtype=np.float32)
    dropped = 0
    if len(extras):
        # A model of the labels alone judges the extras first: those it calls positive may be
        # unlabelled positives (a common class, such as water, fills much of an area).
        labels_only = TrainingSet(
            np.concatenate([pos, neg]),
            np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)]),
            np.ones(len(pos) + len(neg), bool),
            np.ones(len(pos) + len(neg)),
        )
        keep = fit(labels_only).probability(extras) < 0.5
        dropped = int((~keep).sum())
        extras = extras[keep]
    x = np.concatenate([pos, neg, extras])
    positive = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg) + len(extras), bool)])
    labelled = np.concatenate([np.ones(len(pos) + len(neg), bool), np.zeros(len(extras), bool)])
    weights = np.where(labelled, 1.0, extra_weight)
    return TrainingSet(x, positive, labelled, weights), dropped


def fit(ts: TrainingSet, mask: np.ndarray | None = None, c: float = C) -> LinearModel:
    """Logistic regression (balanced classes) on the rows of ``mask`` (default: all)."""
    m = np.ones(len(ts.positive), bool) if mask is None else mask
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    clf.fit(ts.vectors[m], ts.positive[m], sample_weight=ts.weights[m])
    return LinearModel(clf.coef_[0].astype(np.float32), float(clf.intercept_[0]))


def held_out_probabilities(ts: TrainingSet, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """(out-of-fold probabilities, classes) of the labelled windows: stratified k-fold over the
    labels, each fold trained on the other labels plus the extras (extras always train, never
    test). None when a class has fewer than 2 labels."""
    labelled = np.flatnonzero(ts.labelled)
    y = ts.positive[labelled]
    k = min(MAX_FOLDS, ts.positives, ts.negatives)
    if k < 2:
        return None
    prob = np.empty(len(labelled), dtype=np.float64)
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for train_idx, test_idx in folds.split(np.zeros(len(y)), y):
        mask = ~ts.labelled.copy()
        mask[labelled[train_idx]] = True
        model = fit(ts, mask)
        prob[test_idx] = model.probability(ts.vectors[labelled[test_idx]])
    return prob.astype(np.float16), y


def estimate_of(ts: TrainingSet, held_out: tuple[np.ndarray, np.ndarray] | None, threshold: float) -> dict:
    """Precision and recall at ``threshold`` on the held-out probabilities (`runs.estimate_at`;
    the scores file keeps them, so a new threshold re-measures them)."""
    k = min(MAX_FOLDS, ts.positives, ts.negatives)
    out = {
        "precision": None,
        "recall": None,
        "held_out_positive": ts.positives,
        "held_out_negative": ts.negatives,
        "folds": k if k >= 2 else 0,
        "method": f"stratified {k}-fold over the labels" if k >= 2 else "too few labels to hold any out",
        "threshold": threshold,
    }
    if held_out is not None:
        out.update(runs.estimate_at(held_out[0], held_out[1], threshold))
    return out


def estimate(ts: TrainingSet, threshold: float, seed: int = 0) -> dict:
    """Precision and recall at ``threshold`` on labels held out of training
    (`held_out_probabilities`). None when a class has fewer than 2."""
    return estimate_of(ts, held_out_probabilities(ts, seed), threshold)


# ---------------------------------------------------------------------------- scoring


def score_windows(
    windows: AreaWindows, model: LinearModel, threads: int | None = None, block: int = BLOCK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float16 probabilities) of every window in ``windows``, in shard order."""
    threads = threads or min(4, os.cpu_count() or 1)
    coef = np.ascontiguousarray(model.coef, dtype=np.float32)
    bias = np.float32(model.intercept)
    out_ids = [np.empty(c, dtype=np.int64) for c in windows.counts]
    out_scores = [np.empty(c, dtype=np.float16) for c in windows.counts]
    jobs = []
    for i, (shard, member) in enumerate(zip(windows.shards, windows.members, strict=True)):
        # Where each block's members land in the shard's output.
        starts = range(0, shard.count, block)
        if member is None:
            offsets = list(starts)
        else:
            cum = np.concatenate([[0], np.cumsum(member)])
            offsets = [int(cum[s]) for s in starts]
        jobs.extend((i, s, o) for s, o in zip(starts, offsets, strict=True))

    def run(job: tuple[int, int, int]) -> None:
        i, start, offset = job
        shard, member = windows.shards[i], windows.members[i]
        stop = min(start + block, shard.count)
        x = np.asarray(shard.rows[start:stop], dtype=np.float32)
        p = _sigmoid(x @ coef + bias)
        ids = np.asarray(shard.ids[start:stop])
        if member is not None:
            keep = member[start:stop]
            p, ids = p[keep], ids[keep]
        out_scores[i][offset : offset + len(p)] = p
        out_ids[i][offset : offset + len(ids)] = ids

    if threads <= 1:
        for job in jobs:
            run(job)
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="detect") as pool:
            list(pool.map(run, jobs))
    if not out_ids:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float16)
    return np.concatenate(out_ids), np.concatenate(out_scores)


# ---------------------------------------------------------------------------- storing


def apply_threshold(
    conn: Connection, run_id: int, ids: np.ndarray, scores: np.ndarray, threshold: float
) -> int:
    """Write the hits at ``threshold`` and their polygons; return the number of hits."""
    hit_ids, hit_scores = runs.hits_at(ids, scores, threshold)
    repository.replace_run_hits(conn, run_id, hit_ids, hit_scores)
    runs.replace_run_polygons(conn, run_id)
    return len(hit_ids)


# ---------------------------------------------------------------------------- the run


def run_detect(core: CoreSettings, run_id: int, threads: int | None = None, seed: int = 0) -> dict:
    """Run Detect for ``run_id`` (queued or running: a redelivered run starts again). A transient
    error re-raises (the task retries); any other failure marks the run failed with its reason."""
    engine = sync_engine(core.database_url)
    with engine.begin() as conn:
        run = repository.lock_run(conn, run_id)
        if run is None or run.state not in ("queued", "running"):
            log.info("run %s is not waiting (%s); skipped", run_id, run.state if run else "gone")
            return {}
        repository.mark_run_running(conn, run_id)

    def fail(exc: Exception) -> None:
        with engine.begin() as conn:
            repository.fail_run(conn, run_id, str(exc)[:500] or type(exc).__name__)

    with retry_or_fail(f"run {run_id}", fail, log), run_heartbeat(engine, run_id, core.stall_s / 4):
        return _detect(core, run_id, run.project_id, float(run.threshold), threads, seed)


def run_heartbeat(engine: Engine, run_id: int, every_s: float) -> jobs.Periodic:
    """Marks the run alive every ``every_s`` seconds while the block works on it: the reconciler
    hands out again only a running run whose heartbeat stopped (`cliprs.reconcile`)."""

    def beat() -> None:
        with engine.begin() as conn:
            repository.beat_run(conn, run_id)

    return jobs.Periodic(f"run-{run_id}-heartbeat", every_s, beat)


def rethreshold_run(core: CoreSettings, run_id: int, threshold: float) -> dict:
    """Apply a new threshold to a run the search-api marked ``rethresholding`` (too many hits for
    a request): hits, polygons, threshold, hits count and held-out estimate replaced in one
    transaction (readers see the old results or the new, never a mix), and the run is ``done``
    again. A redelivered task whose run is no longer waiting is skipped. A transient error
    re-raises (the task retries); any other failure puts the run back to ``done`` with its
    results unchanged and the reason in ``error``."""
    engine = sync_engine(core.database_url)
    threshold = runs.snap_threshold(threshold)
    started = time.perf_counter()
    path = runs.scores_path(core.data_dir, run_id)
    try:
        ids, scores = runs.read_scores(path)
        held_out = runs.read_held_out(path)
        with engine.begin() as conn:
            run = repository.lock_run(conn, run_id)
            if run is None or run.state != "rethresholding":
                log.info(
                    "run %s is not waiting for a threshold (%s); skipped",
                    run_id,
                    run.state if run else "gone",
                )
                return {}
            hits = apply_threshold(conn, run_id, ids, scores, threshold)
            estimate = runs.estimate_for(repository.run_estimate(conn, run_id), held_out, threshold)
            repository.finish_rethreshold(
                conn, run_id, threshold, hits, estimate, round(time.perf_counter() - started, 4)
            )
    except FileNotFoundError:  # not transient: the file will not come back
        return _abandon_rethreshold(engine, run_id, threshold, "its scores file is gone")
    except TRANSIENT_ERRORS:
        log.warning(
            "run %s: re-threshold interrupted by a transient error; will retry", run_id, exc_info=True
        )
        raise
    except Exception as exc:
        log.exception("run %s: re-threshold to %s failed", run_id, threshold)
        return _abandon_rethreshold(engine, run_id, threshold, str(exc)[:400] or type(exc).__name__)
    log.info("run %s: threshold %s applied, %d hits", run_id, threshold, hits)
    return {"run_id": run_id, "threshold": threshold, "hits": hits}


def _abandon_rethreshold(engine: Engine, run_id: int, threshold: float, reason: str) -> dict:
    """Back to ``done`` with the results it had, saying why the new threshold was not applied."""
    with engine.begin() as conn:
        repository.abandon_rethreshold(conn, run_id, f"the threshold {threshold} was not applied: {reason}")
    return {}


class DetectError(RuntimeError):
    """A run that cannot be done as asked (its error says why and what to do)."""


@dataclass
class LabelledWindows:
    """The project's labelled windows, as found in its areas' index rows."""

    ids: np.ndarray  # int64: every labelled window, found or not
    vectors: np.ndarray  # float32 (found, dim)
    positive: np.ndarray  # bool (found,)
    missing: int  # labelled windows not indexed in the project's areas


@dataclass
class DetectInputs:
    """What a run reads before training: the index version, its rows in the project's areas,
    the labelled windows and the random extra negatives."""

    manifest: Manifest
    windows: AreaWindows
    labelled: LabelledWindows
    extras: np.ndarray  # float32 (n, dim)


@contextmanager
def _timed(stages: dict[str, float], name: str) -> Iterator[None]:
    """Record how long the block took as ``stages[name]`` (seconds; not when it raises)."""
    started = time.perf_counter()
    yield
    stages[name] = time.perf_counter() - started


def _detect(
    core: CoreSettings, run_id: int, project_id: int, threshold: float, threads: int | None, seed: int
) -> dict:
    """Load, train, score, save the scores, store the hits: each stage timed."""
    engine = sync_engine(core.database_url)
    stages: dict[str, float] = {}
    with _timed(stages, "load"):
        inputs = load_inputs(engine, core, project_id, seed)
    with _timed(stages, "train"):
        labelled = inputs.labelled
        ts, dropped = build_training_set(
            labelled.vectors[labelled.positive], labelled.vectors[~labelled.positive], inputs.extras
        )
        held_out = held_out_probabilities(ts, seed)
        est = estimate_of(ts, held_out, threshold)
        model = fit(ts)
    with _timed(stages, "score"):
        ids, scores = score_windows(inputs.windows, model, threads)
    with _timed(stages, "save_scores"):
        runs.write_scores(runs.scores_path(core.data_dir, run_id), ids, scores, held_out)
        hist = runs.histogram(scores)
    summary = model_summary(model, ts, inputs, dropped)
    hits = store_run(engine, run_id, ids, scores, threshold, stages, summary, est, hist)
    log.info("run %s: %d windows scored, %d hits, stages %s", run_id, len(ids), hits, stages)
    return {"run_id": run_id, "windows_scored": len(ids), "hits": hits, "stage_seconds": stages}


def load_inputs(engine: Engine, core: CoreSettings, project_id: int, seed: int) -> DetectInputs:
    """The project's areas in the current index version, its labels there and the extras."""
    with engine.connect() as conn:
        area_ids = repository.project_area_ids(conn, project_id)
        labels = repository.project_labels(conn, project_id)
        tile_mask = area_tile_mask(conn, area_ids)
    if not area_ids:
        raise DetectError("the project has no areas; add one with PATCH /v1/projects/{id}")
    manifest = load_manifest(core.index_dir)
    if manifest is None:
        raise DetectError("nothing is indexed yet; wait for the project's areas to finish ingesting")
    windows = open_area_windows(core.index_dir, manifest, area_ids, tile_mask)
    labelled = locate_labels(windows, labels)
    n_extra = max(EXTRA_MIN, EXTRA_PER_POSITIVE * int(labelled.positive.sum()))
    _, extras = windows.sample(n_extra, labelled.ids, seed)
    return DetectInputs(manifest, windows, labelled, extras)


def locate_labels(windows: AreaWindows, labels: list[Row]) -> LabelledWindows:
    """The labelled windows' vectors and classes; a DetectError unless both classes are there."""
    label_ids = np.array([r.window_id for r in labels], dtype=np.int64)
    label_pos = {r.window_id: r.positive for r in labels}
    found, vectors = windows.locate(label_ids)
    is_pos = np.array([label_pos[int(i)] for i in found], dtype=bool)
    missing = len(label_ids) - len(found)
    if not is_pos.any() or is_pos.all():
        raise DetectError(
            f"the labels found in the index hold {int(is_pos.sum())} positive and {int((~is_pos).sum())} "
            f"negative windows ({missing} labelled windows are not indexed in the project's areas); "
            "label at least one of each and start a new run"
        )
    return LabelledWindows(label_ids, vectors, is_pos, missing)


def model_summary(model: LinearModel, ts: TrainingSet, inputs: DetectInputs, dropped: int) -> dict:
    """What ``detect_runs.model`` records: the classifier, what it was trained on, the index."""
    return {
        "kind": MODEL_KIND,
        "C": C,
        "class_weight": "balanced",
        "coef": [round(float(v), 7) for v in model.coef],
        "intercept": model.intercept,
        "labels_positive": ts.positives,
        "labels_negative": ts.negatives,
        "labels_not_indexed": int(inputs.labelled.missing),
        "extra_negatives": int(len(inputs.extras) - dropped),
        "extra_negatives_dropped": dropped,
        "extra_weight": EXTRA_WEIGHT,
        "index_version": inputs.manifest.version,
        "model_id": inputs.manifest.model_id,
        "dim": inputs.manifest.dim,
    }


def store_run(
    engine: Engine,
    run_id: int,
    ids: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    stages: dict[str, float],
    summary: dict,
    est: dict,
    hist: list[int],
) -> int:
    """Write the hits and their polygons and mark the run done, in one transaction; the hits."""
    started = time.perf_counter()
    with engine.begin() as conn:
        hits = apply_threshold(conn, run_id, ids, scores, threshold)
        stages["hits_polygons"] = time.perf_counter() - started
        repository.finish_run(
            conn,
            run_id,
            model=summary,
            estimate=est,
            histogram=hist,
            windows_scored=len(ids),
            hits=hits,
            stage_seconds={k: round(v, 4) for k, v in stages.items()},
        )
    return hits
