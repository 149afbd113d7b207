"""A run's scores file (``{data_dir}/runs/{id}.npz``) goes when its run does (issue 23, item 7):
deleting a project removes the scores files of its runs, over HTTP (in-process search-api)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from cliprs import runs
from cliprs.db.engine import sync_engine
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from tests.support.search_app import core_for_test, search_api


@pytest.fixture(scope="module")
def api(
    pg_url: str, redis_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    core = core_for_test(pg_url, redis_url, tmp_path_factory.mktemp("run-files"), "run-files")
    app, _ = search_api(core, load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu")))
    with TestClient(app) as client:
        yield {"client": client, "core": core}


def project_with_runs(api: dict, name: str, n: int) -> tuple[int, list[int]]:
    """A project (over HTTP) with ``n`` finished runs, each with its scores file."""
    resp = api["client"].post("/v1/projects", json={"name": name, "area_ids": []})
    assert resp.status_code == 201, resp.text
    project = resp.json()["id"]
    with sync_engine(api["core"].database_url).begin() as conn:
        run_ids = [
            conn.execute(
                text("INSERT INTO detect_runs (project_id, state) VALUES (:p, 'done') RETURNING id"),
                {"p": project},
            ).scalar_one()
            for _ in range(n)
        ]
    for run_id in run_ids:
        runs.write_scores(runs.scores_path(api["core"].data_dir, run_id), np.arange(4), np.full(4, 0.25))
    return project, run_ids


def test_deleting_a_project_deletes_its_runs_scores_files(api: dict) -> None:
    doomed, doomed_runs = project_with_runs(api, "doomed", 2)
    kept, kept_runs = project_with_runs(api, "kept", 1)
    resp = api["client"].delete(f"/v1/projects/{doomed}")
    assert resp.status_code == 200, resp.text
    data_dir = api["core"].data_dir
    assert not any(runs.scores_path(data_dir, r).exists() for r in doomed_runs)
    assert all(runs.scores_path(data_dir, r).exists() for r in kept_runs)  # another project's stay
    assert api["client"].delete(f"/v1/projects/{kept}").status_code == 200
    assert not runs.scores_path(data_dir, kept_runs[0]).exists()
