"""A dependency that is down answers 503 with Retry-After and the shared error shape, not a 500.

The dependencies are real and really down: each URL names a loopback port nothing listens on.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings
from cliprs_search.app import create_app as create_search_app
from cliprs_search.settings import SearchSettings
from cliprs_testing.factories import make_area
from cliprs_testing.loopback import free_port
from cliprs_tiler.app import create_app as create_tiler_app


def _dead_postgres() -> str:
    return f"postgresql://postgres:postgres@127.0.0.1:{free_port()}/cliprs"


def _assert_unavailable(resp, what: str) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["Retry-After"].isdigit()
    error = resp.json()["error"]
    assert error["code"] == "unavailable" and what in error["message"], error
    assert "postgres:postgres" not in resp.text  # never the connection string


@pytest.fixture
def core_with(redis_url: str, tmp_path: Path):
    def make(**overrides: str) -> CoreSettings:
        return CoreSettings(
            **{
                "redis_url": redis_url,
                "data_dir": tmp_path / "data",
                "redis_namespace": f"deps-{uuid.uuid4().hex[:6]}",
                **overrides,
            }
        )

    return make


def test_search_api_without_postgres(core_with) -> None:
    app = create_search_app(core_with(database_url=_dead_postgres()), SearchSettings())
    with TestClient(app, raise_server_exceptions=False) as client:
        _assert_unavailable(client.get("/v1/areas"), "unavailable")
        _assert_unavailable(client.get("/v1/jobs/1"), "unavailable")


def test_tiler_without_postgres(core_with) -> None:
    app = create_tiler_app(core_with(database_url=_dead_postgres()))
    with TestClient(app, raise_server_exceptions=False) as client:
        _assert_unavailable(client.get("/v1/jobs/1/progress"), "unavailable")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"]["ok"] is False


def test_search_api_without_the_broker(core_with, pg_url: str) -> None:
    # Redis is the Celery broker: an area cannot be queued while it is down.
    core = core_with(database_url=pg_url, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    app = create_search_app(core, SearchSettings())
    area = {"name": f"deps {uuid.uuid4().hex[:6]}", "bbox": [-75.62, 37.60, -75.60, 37.62], "zooms": [12]}
    with TestClient(app, raise_server_exceptions=False) as client:
        _assert_unavailable(client.post("/v1/areas", json=area), "task queue")
        # Nothing half-made is left behind: the area was taken back.
        assert area["name"] not in {a["name"] for a in client.get("/v1/areas").json()}


def test_search_api_delete_without_the_broker(core_with, pg_url: str, seeded_areas: list[int]) -> None:
    with sync_engine(pg_url).begin() as conn:
        area_id = make_area(conn, name=f"deps {uuid.uuid4().hex[:6]}", status="ready")
    seeded_areas.append(area_id)
    core = core_with(database_url=pg_url, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_search_app(core, SearchSettings()), raise_server_exceptions=False) as client:
        _assert_unavailable(client.delete(f"/v1/areas/{area_id}"), "task queue")
        # Nothing will delete it, so it is not left marked as deleting.
        assert client.get(f"/v1/areas/{area_id}").json()["status"] == "ready"
