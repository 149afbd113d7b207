"""Remote (billed) tiles are fetched only for what an area planned: a map request for any other
zoom or place inside the area, or a window's neighbour outside the plan, costs the provider
nothing. Against a real HTTP tile server that counts requests, and real PostGIS."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import mercantile
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text
from sqlalchemy.orm import Session

from cliprs.db.engine import sync_engine
from cliprs.db.models import Area
from cliprs.settings import CoreSettings
from cliprs_testing.factories import make_area, make_window
from cliprs_testing.faultserver import TileServer
from cliprs_tiler.app import create_app
from cliprs_tiler.fetch import plan_area
from cliprs_tiler.repository import PlannedTile
from cliprs_tiler.settings import TilerSettings

CENTRE = (10.7522, 59.9139)  # Oslo: far from the other tests' areas
BOX = (10.749, 59.912, 10.755, 59.916)
ZOOMS = [16, 17]


@pytest.fixture
def server() -> Iterator[TileServer]:
    srv = TileServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def planned(core_settings: CoreSettings, server: TileServer, seeded_areas: list[int]) -> Iterator[dict]:
    """An area of a remote source planned at z16-17 (its tile rows written, nothing fetched)."""
    source = f"billed-{uuid.uuid4().hex[:6]}"
    core = CoreSettings(
        **core_settings.model_dump(exclude={"tile_sources"}),
        tile_sources={source: f"{server.base}/{{z}}/{{x}}/{{y}}.png?access_token=t"},
    )
    engine = sync_engine(core.database_url)
    with Session(engine) as session, session.begin():
        area_id = make_area(session.connection(), name="billed", bbox=BOX, zooms=ZOOMS, source=source)
        seeded_areas.append(area_id)
        tiles = plan_area(session.connection(), session.get(Area, area_id))
    yield {"core": core, "source": source, "tiles": tiles, "engine": engine}


def _path(z: int, x: int, y: int) -> str:
    return f"/{z}/{x}/{y}.png"


def test_tiles_outside_the_plan_are_never_fetched(planned: dict, server: TileServer) -> None:
    source, tiles = planned["source"], planned["tiles"]
    assert {t.z for t in tiles} == set(ZOOMS)
    with TestClient(create_app(planned["core"], TilerSettings(retries=0))) as client:
        # Inside the area, at zooms it did not plan: refused, and the provider never asked.
        for z in (22, 20, 18, 15):
            t = mercantile.tile(*CENTRE, z)
            resp = client.get(f"/tiles/{source}/{z}/{t.x}/{t.y}.png")
            assert resp.status_code == 404, (z, resp.text)
            assert "not planned" in resp.json()["error"]["message"]
        assert server.hits == []

        # A planned tile is fetched once, then served from the cache.
        t = next(t for t in tiles if t.z == 17)
        first = client.get(f"/tiles/{source}/17/{t.x}/{t.y}.png")
        assert first.status_code == 200 and first.content == server.tile(17, t.x, t.y)
        assert client.get(f"/tiles/{source}/17/{t.x}/{t.y}").status_code == 200
        assert server.counts() == {_path(17, t.x, t.y): 1}


def test_a_window_never_fetches_a_neighbour_outside_the_plan(planned: dict, server: TileServer) -> None:
    tiles = planned["tiles"]
    z17 = {(t.x, t.y): t for t in tiles if t.z == 17}
    # The west-most planned tile of a row: its western neighbour is outside the plan.
    edge: PlannedTile = min(z17.values(), key=lambda t: (t.x, t.y))
    assert (edge.x - 1, edge.y) not in z17
    with planned["engine"].begin() as conn:
        conn.execute(
            text("UPDATE tiles SET tile_size = 256, status = 'fetched' WHERE id = :id"), {"id": edge.id}
        )
        window = make_window(conn, edge.id * 4096 + 7, edge.id, px=(-100, 0, 100, 200), scale=0.5)
    with TestClient(create_app(planned["core"], TilerSettings(retries=0))) as client:
        resp = client.get(f"/windows/{window}.png")
        assert resp.status_code == 200, resp.text
        pixels = np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))
    # The window's own tile came from the provider (it is planned); the neighbour did not.
    assert server.counts() == {_path(17, edge.x, edge.y): 1}
    assert pixels[:, :100].max() == 0  # the unplanned neighbour's part stays black
    own = np.asarray(Image.open(io.BytesIO(server.tile(17, edge.x, edge.y))).convert("RGB"))
    np.testing.assert_array_equal(pixels[:, 100:], own[0:200, 0:100])
