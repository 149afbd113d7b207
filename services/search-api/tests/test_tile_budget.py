"""The daily tile budget is spent by the areas service on the validated request: the default
source counts like a named one, and a request the service refuses spends nothing."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from cliprs.settings import CoreSettings
from cliprs_search.app import create_app
from cliprs_search.settings import SearchSettings
from cliprs_testing.keys import TestKey

REMOTE = "https://tiles.example.test/{z}/{x}/{y}.png"
# A small box in Virginia's Eastern Shore: 4 tiles at z14.
BOX = [-75.60, 37.66, -75.56, 37.70]


def test_the_default_source_spends_the_budget(
    pg_url: str, redis_url: str, tmp_path: Path, api_keys: dict[str, TestKey]
) -> None:
    core = CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        redis_namespace=f"budget-{uuid.uuid4().hex[:6]}",
        tile_sources={"demo": REMOTE},  # the source an area gets when it names none
    )
    settings = SearchSettings(
        auth="on", geocoder="none", daily_tile_budget=2, embedder_url="http://127.0.0.1:9"
    )
    with TestClient(create_app(core, settings)) as c:
        w = api_keys["write"].headers
        # Refused by the service (zoom out of range): nothing is spent, so it cannot use up the budget.
        bad = c.post("/v1/areas", json={"name": "bad", "bbox": BOX, "zooms": [99]}, headers=w)
        assert bad.status_code == 400, bad.text
        over = c.post("/v1/areas", json={"name": "no source named", "bbox": BOX, "zooms": [14]}, headers=w)
        assert over.status_code == 429, over.text
        assert over.json()["error"]["code"] == "tile_budget_exceeded"
        assert "has 2 of its 2 left" in over.json()["error"]["message"]
        assert int(over.headers["Retry-After"]) >= 1


def test_a_stac_api_source_spends_the_budget(
    pg_url: str, redis_url: str, tmp_path: Path, api_keys: dict[str, TestKey]
) -> None:
    """A STAC API's items are COGs on remote servers, metered like an XYZ provider's tiles
    (`cliprs.sources.is_remote`, which the tiler asks too); the refusal comes before any
    source is opened."""
    core = CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        redis_namespace=f"budget-{uuid.uuid4().hex[:6]}",
        tile_sources={
            "s2": "stac+https://stac.example.test/v1?collections=sentinel-2-l2a&assets=visual",
        },
    )
    settings = SearchSettings(
        auth="on", geocoder="none", daily_tile_budget=2, embedder_url="http://127.0.0.1:9"
    )
    with TestClient(create_app(core, settings)) as c:
        w = api_keys["write"].headers
        over = c.post(
            "/v1/areas", json={"name": "api", "bbox": BOX, "zooms": [14], "source": "s2"}, headers=w
        )
        assert over.status_code == 429, over.text
        assert over.json()["error"]["code"] == "tile_budget_exceeded"
