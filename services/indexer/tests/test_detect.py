"""Detect on real PostGIS and a real index: labels -> classifier -> every window of the project's
areas scored from the shards -> histogram, scores file, hits and polygons."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import mercantile
import numpy as np
import pytest
from sqlalchemy import text

from cliprs import runs
from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings
from cliprs_indexer.build import collect_area_vectors, publish_area
from cliprs_indexer.detect import run_detect
from cliprs_testing.synthetic import clustered_unit_vectors, delete_seeded, seed_area, write_area_chunks

MODEL = "test/detect"
ORIGIN = mercantile.tile(-75.6, 37.7, 16)


def _tiles(dx0: int, n: int) -> list[mercantile.Tile]:
    return [mercantile.Tile(ORIGIN.x + dx0 + dx, ORIGIN.y + dy, 16) for dx in range(n) for dy in range(n)]


@pytest.fixture(scope="module")
def world(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Two areas side by side; in the project's, the windows of the first column of tiles are
    the class (their vectors share an extra direction); the other area is not the project's."""
    core = CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("detect"),
        redis_namespace=f"detect-{uuid.uuid4().hex[:6]}",
    )
    area = seed_area(pg_url, _tiles(0, 4), name="detect")
    other = seed_area(pg_url, _tiles(10, 2), name="detect-other")
    rng = np.random.default_rng(7)
    direction = rng.standard_normal(512).astype(np.float32)
    direction /= np.linalg.norm(direction)
    column = {t for t in area.tile_ids.tolist() if t in area.tile_ids[:4].tolist()}  # 4 tiles, x = 0
    positive = np.isin(area.tile_of, list(column))
    vectors = clustered_unit_vectors(len(area.ids), 512, seed=11)
    vectors[positive] += 0.8 * direction
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_area_chunks(core.vectors_dir, area, vectors, MODEL)
    write_area_chunks(core.vectors_dir, other, clustered_unit_vectors(len(other.ids), 512, seed=12), MODEL)
    publish_area(core, area.area_id, collect_area_vectors(core, area.area_id))
    publish_area(core, other.area_id, collect_area_vectors(core, other.area_id))
    engine = sync_engine(pg_url)
    with engine.begin() as conn:
        project = conn.execute(
            text("INSERT INTO projects (name) VALUES ('detect') RETURNING id")
        ).scalar_one()
        conn.execute(
            text("INSERT INTO project_areas (project_id, area_id) VALUES (:p, :a)"),
            {"p": project, "a": area.area_id},
        )
    pos_ids = rng.choice(area.ids[positive], 8, replace=False)
    neg_ids = rng.choice(area.ids[~positive], 8, replace=False)
    with engine.begin() as conn:
        for ids, flag in ((pos_ids, True), (neg_ids, False)):
            for wid in ids.tolist():
                conn.execute(
                    text("INSERT INTO labels (project_id, window_id, positive) VALUES (:p, :w, :f)"),
                    {"p": project, "w": wid, "f": flag},
                )
    yield {
        "core": core,
        "area": area,
        "other": other,
        "project": project,
        "positive": positive,
        "labelled": set(pos_ids.tolist()) | set(neg_ids.tolist()),
    }
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM projects WHERE id = :p"), {"p": project})
    delete_seeded(pg_url, [area.area_id, other.area_id])


def new_run(world: dict, threshold: float = 0.5, project: int | None = None) -> int:
    with sync_engine(world["core"].database_url).begin() as conn:
        return conn.execute(
            text("INSERT INTO detect_runs (project_id, threshold) VALUES (:p, :t) RETURNING id"),
            {"p": project or world["project"], "t": threshold},
        ).scalar_one()


def run_row(world: dict, run_id: int):
    with sync_engine(world["core"].database_url).connect() as conn:
        return conn.execute(text("SELECT * FROM detect_runs WHERE id = :r"), {"r": run_id}).mappings().one()


def test_detect_scores_every_window_of_the_project_and_finds_the_class(world: dict) -> None:
    run_id = new_run(world)
    report = run_detect(world["core"], run_id, threads=2)
    row = run_row(world, run_id)
    area = world["area"]
    assert row["state"] == "done" and row["error"] is None and row["finished_at"] is not None
    # Every window of the project's area, none of the other area's.
    assert row["windows_scored"] == report["windows_scored"] == len(area.ids)
    ids, scores = runs.read_scores(runs.scores_path(world["core"].data_dir, run_id))
    assert scores.dtype == np.float16
    assert np.array_equal(np.sort(ids), np.sort(area.ids))
    # Against the truth, on the windows nobody labelled.
    truth = dict(zip(area.ids.tolist(), world["positive"].tolist(), strict=True))
    unlabelled = np.array([i not in world["labelled"] for i in ids.tolist()])
    y = np.array([truth[i] for i in ids.tolist()])[unlabelled]
    hit = (scores.astype(np.float32) >= 0.5)[unlabelled]
    precision = (hit & y).sum() / hit.sum()
    recall = (hit & y).sum() / y.sum()
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    # The histogram counts what the hits hold, at any threshold.
    hist = row["histogram"]
    assert len(hist) == runs.HIST_BINS and sum(hist) == len(ids)
    with sync_engine(world["core"].database_url).connect() as conn:
        hits = conn.execute(
            text("SELECT count(*) FROM run_hits WHERE run_id = :r"), {"r": run_id}
        ).scalar_one()
        polys = conn.execute(
            text(
                "SELECT z, window_count, window_ids, area_m2, ST_Area(geom::geography) AS a FROM run_polygons WHERE run_id = :r"
            ),
            {"r": run_id},
        ).all()
    assert hits == row["hits"] == runs.count_at(hist, 0.5) > 0
    # Polygons: every hit in exactly one, per zoom; the class is one column of touching tiles.
    assert sum(p.window_count for p in polys) == hits
    assert len({w for p in polys for w in p.window_ids}) == hits
    assert all(p.area_m2 == pytest.approx(p.a) and p.area_m2 > 0 for p in polys)
    biggest = max(polys, key=lambda p: p.window_count)
    assert biggest.window_count >= 0.8 * world["positive"].sum()
    # The held-out estimate and the model summary.
    est = row["estimate"]
    assert est["held_out_positive"] == 8 and est["held_out_negative"] == 8
    assert est["precision"] is not None and est["recall"] is not None
    model = row["model"]
    assert model["kind"] == "logistic_regression" and len(model["coef"]) == 512
    assert model["extra_negatives"] + model["extra_negatives_dropped"] == 50
    assert set(row["stage_seconds"]) >= {"load", "train", "score", "hits_polygons"}


def test_a_run_without_negatives_fails_with_how_to_fix_it(world: dict) -> None:
    engine = sync_engine(world["core"].database_url)
    with engine.begin() as conn:
        project = conn.execute(
            text("INSERT INTO projects (name) VALUES ('only positives') RETURNING id")
        ).scalar_one()
        conn.execute(
            text("INSERT INTO project_areas VALUES (:p, :a)"), {"p": project, "a": world["area"].area_id}
        )
        conn.execute(
            text("INSERT INTO labels (project_id, window_id, positive) VALUES (:p, :w, true)"),
            {"p": project, "w": int(world["area"].ids[0])},
        )
    try:
        run_id = new_run(world, project=project)
        with pytest.raises(RuntimeError):
            run_detect(world["core"], run_id)
        row = run_row(world, run_id)
        assert row["state"] == "failed" and "label at least one of each" in row["error"]
        # A finished run is not run again when its task is redelivered.
        assert run_detect(world["core"], run_id) == {}
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM projects WHERE id = :p"), {"p": project})


def test_thresholds_snap_to_the_histogram_grid() -> None:
    scores = np.array([0.0, 0.2995, 0.3, 0.3004, 0.5, 0.999, 1.0], dtype=np.float16)
    hist = runs.histogram(scores)
    for t in (0.0, 0.3, 0.30049, 0.5, 0.9995, 1.0):
        ids, _ = runs.hits_at(np.arange(len(scores)), scores, t)
        assert runs.count_at(hist, t) == len(ids)
    assert runs.count_at(hist, 0.3) == 5 and runs.count_at(hist, 1.0) == 2
    assert runs.snap_threshold(0.30049) == 0.3 and runs.snap_threshold(7) == 1.0


def test_a_run_beats_while_the_indexer_works_on_it(world: dict) -> None:
    """The reconciler takes a running run whose heartbeat stopped for lost: the indexer's
    heartbeat keeps it fresh (here every 5 ms) from start to finish."""
    run_id = new_run(world)
    engine = sync_engine(world["core"].database_url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE detect_runs SET heartbeat_at = now() - interval '1 hour' WHERE id = :r"),
            {"r": run_id},
        )
    core = world["core"].model_copy(update={"stall_s": 0.02})
    worker = threading.Thread(target=run_detect, args=(core, run_id), kwargs={"threads": 1})
    beats: set = set()
    worker.start()
    while worker.is_alive():
        with engine.connect() as conn:
            state, beat = conn.execute(
                text("SELECT state, heartbeat_at FROM detect_runs WHERE id = :r"), {"r": run_id}
            ).one()
        if state == "running":
            beats.add(beat)
        time.sleep(0.002)
    worker.join()
    assert run_row(world, run_id)["state"] == "done"
    assert len(beats) >= 2, beats  # the start, then beats while it worked
