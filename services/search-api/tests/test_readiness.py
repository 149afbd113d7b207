"""``/readyz`` of the gateway: the embedder counts as failing unless it says it is ready."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from cliprs.settings import CoreSettings
from cliprs_search.app import create_app
from cliprs_search.settings import SearchSettings


def readyz_with_embedder(status: str, core: CoreSettings) -> httpx.Response:
    def embedder(request: httpx.Request) -> httpx.Response:
        body = {"status": status, "checks": {"model": {"ok": status == "ready"}}, "model": {"loaded": "tiny"}}
        return httpx.Response(200 if status == "ready" else 503, json=body)

    app = create_app(
        core,
        SearchSettings(embedder_url="http://embedder.test", geocoder="none"),
        embedder_transport=httpx.MockTransport(embedder),
    )
    with TestClient(app) as client:  # the lifespan loads the (empty) index and the geocoder
        return client.get("/readyz")


@pytest.mark.parametrize("status", ["ready", "unavailable"])
def test_readyz_follows_the_embedder(status: str, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    core = CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path,
        redis_namespace=f"ready-{uuid.uuid4().hex[:6]}",
    )
    resp = readyz_with_embedder(status, core)
    body = resp.json()
    assert body["model"] == {"loaded": "tiny"}  # named whether or not the embedder is ready
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
    if status == "ready":
        assert resp.status_code == 200 and body["status"] == "ready"
    else:
        assert resp.status_code == 503 and body["status"] == "unavailable"
        assert "not ready" in body["checks"]["embedder"]["error"]
