"""The tiler end to end in one process: a polygon area fetched from a real HTTP tile server serving
real Sentinel-2 imagery with injected faults, then the tiler's HTTP API over the result (progress
per zoom, plan previews, map tiles, spliced window pixels). Real PostGIS throughout."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator

import mercantile
import numpy as np
import pytest
from aiolimiter import AsyncLimiter
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings
from cliprs.tilecache import find_tile
from cliprs.tiles import parse_polygon, tiles_for_area, zorder
from cliprs_raster.samples import demo_band_paths
from cliprs_testing.factories import make_area, make_job, make_window
from cliprs_testing.faultserver import Fault, TileServer
from cliprs_tiler.app import create_app
from cliprs_tiler.fetch import fetch_job
from cliprs_tiler.repository import job_with_area
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.sources import RasterSource

TOKEN = "pk.sekrit-token-4242"
# A triangle over the Sentinel-2 scene: fewer tiles than its bounding box needs.
POLYGON = {
    "type": "Polygon",
    "coordinates": [[[-75.70, 37.60], [-75.52, 37.63], [-75.62, 37.75], [-75.70, 37.60]]],
}
ZOOMS = [12, 13]
RATE = 10  # requests per second; aiolimiter lets one second's worth (RATE) go at once


@pytest.fixture(scope="module")
def imagery() -> Iterator[RasterSource]:
    src = RasterSource("s2", demo_band_paths())
    yield src
    src.close()


@pytest.fixture
def server(imagery: RasterSource) -> Iterator[TileServer]:
    srv = TileServer(provider=imagery.render).start()
    yield srv
    srv.stop()


def make_core(core_settings: CoreSettings, server: TileServer) -> CoreSettings:
    template = f"{server.base}/{{z}}/{{x}}/{{y}}.png?access_token=${{CLIPRS_TEST_TOKEN}}"
    return CoreSettings(
        **core_settings.model_dump(exclude={"tile_sources"}),
        tile_sources={
            "s2web": template,
            "s2tif": "geotiff://" + ",".join(str(p) for p in demo_band_paths()),
        },
    )


def new_job(core: CoreSettings, source: str, polygon: dict = POLYGON, zooms: list[int] = ZOOMS) -> int:
    with sync_engine(core.database_url).begin() as conn:
        area_id = make_area(conn, name="triangle", polygon=polygon, zooms=zooms, source=source)
        return make_job(conn, area_id)


def add_job(core: CoreSettings, job_id: int) -> int:
    """Another ingest job of the same area (a re-run)."""
    with sync_engine(core.database_url).begin() as conn:
        job = job_with_area(conn, job_id)
        assert job is not None
        return make_job(conn, job["area_id"])


def path(z: int, x: int, y: int) -> str:
    return f"/{z}/{x}/{y}.png"


def test_polygon_job_over_a_faulty_server_then_progress_windows_and_tiles(
    core_settings: CoreSettings,
    server: TileServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("CLIPRS_TEST_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "cliprs", "cliprs.tiler", "tenacity", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    core = make_core(core_settings, server)
    plan = [(t.z, t.x, t.y) for t in zorder(tiles_for_area(parse_polygon(POLYGON), ZOOMS))]
    assert len(plan) == 25
    permanent = {path(*plan[0]): Fault("404"), path(*plan[1]): Fault("500")}
    transient = {
        path(*plan[2]): Fault("500", times=1),
        path(*plan[3]): Fault("truncate", times=1),
        path(*plan[4]): Fault("reset", times=1),
        path(*plan[5]): Fault("429", times=1),
        path(*plan[6]): Fault("slow", times=1, delay=2.5),
    }
    server.faults.update(permanent | transient)
    for t in plan:  # rendered up front, so only the "slow" fault can make the client time out
        server.tile(*t)
    settings = TilerSettings(
        retries=2, concurrency=4, rate_limit=RATE, timeout_s=1.0, backoff_base_s=0.05, embed_batch=4
    )
    # Stamp each request where the rate limiter lets it go (the server sees arrivals bunched by
    # connection setup on a busy machine, which says nothing about the limiter).
    admitted: list[float] = []
    acquire = AsyncLimiter.acquire

    async def stamped(self: AsyncLimiter, amount: float = 1) -> None:
        await acquire(self, amount)
        admitted.append(time.monotonic())

    monkeypatch.setattr(AsyncLimiter, "acquire", stamped)
    job_id = new_job(core, "s2web")
    sent: list[list[int]] = []
    counts = asyncio.run(fetch_job(job_id, core, settings, lambda _job, ids: sent.append(list(ids))))
    monkeypatch.undo()  # later requests (the second job, the app) need no stamps
    monkeypatch.setenv("CLIPRS_TEST_TOKEN", TOKEN)

    # Every planned tile ended fetched, or failed with its reason; only the permanent faults failed.
    engine = sync_engine(core.database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, z, x, y, status, error FROM tiles WHERE source = 's2web' ORDER BY id")
        ).all()
    assert sorted((r.z, r.x, r.y) for r in rows) == sorted(plan)
    by_path = {path(r.z, r.x, r.y): r for r in rows}
    assert {p for p, r in by_path.items() if r.status == "failed"} == set(permanent)
    assert all(r.status == "fetched" and r.error is None for p, r in by_path.items() if p not in permanent)
    assert "HTTP 404" in by_path[path(*plan[0])].error and "HTTP 500" in by_path[path(*plan[1])].error
    assert counts["tiles_fetched"] == len(plan) - 2 and counts["tiles_failed"] == 2
    # Real imagery, cached byte for byte as served.
    for r in rows:
        if r.status == "fetched":
            cached = find_tile(core.tile_cache_dir, "s2web", r.z, r.x, r.y)
            assert cached.read_bytes() == server.tile(r.z, r.x, r.y)

    # No duplicate fetches: one request per tile, plus exactly the retries the faults called for.
    expected = (
        {path(*t): 1 for t in plan} | {p: 2 for p in transient} | {path(*plan[1]): settings.retries + 1}
    )
    assert dict(server.counts()) == expected
    assert sorted(i for batch in sent for i in batch) == sorted(r.id for r in rows if r.status == "fetched")
    assert all(len(batch) <= settings.embed_batch for batch in sent)

    # Retries included, every request went through the token bucket and kept its promise:
    # requests i..j fit in the bucket (RATE) plus what it refilled between them.
    times = sorted(admitted)
    assert len(times) == len(server.hits)
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            assert j - i + 1 <= RATE + RATE * (times[j] - times[i]) + 0.01, (i, j, times[j] - times[i])
    assert times[-1] - times[0] >= (len(times) - RATE) / RATE * 0.9

    # Progress per zoom, from the tiles table, through the API.
    app = create_app(core, settings)
    with TestClient(app) as client:
        progress = client.get(f"/v1/jobs/{job_id}/progress").json()
        assert progress["state"] == "embedding"
        assert progress["totals"] == {
            "planned": 25, "fetched": 23, "cached": 0, "failed": 2, "pending": 0, "embedded": 0,
        }  # fmt: skip
        per_zoom = {z["z"]: z for z in progress["zooms"]}
        assert {z: per_zoom[z]["planned"] for z in ZOOMS} == {12: 7, 13: 18}
        for z in per_zoom.values():
            assert z["fetched"] + z["cached"] + z["failed"] + z["pending"] == z["planned"]
        assert sorted((f["z"], f["x"], f["y"]) for f in progress["failures"]) == sorted(plan[:2])
        assert all(f["error"] for f in progress["failures"])
        assert client.get("/v1/jobs/999999/progress").status_code == 404

        # A second job over the same area takes every fetched tile from the cache.
        before = server.counts()
        job2 = add_job(core, job_id)
        asyncio.run(fetch_job(job2, core, settings, lambda _job, ids: None))
        again = server.counts() - before
        assert set(again) <= set(permanent)
        totals2 = client.get(f"/v1/jobs/{job2}/progress").json()["totals"]
        assert (totals2["cached"], totals2["fetched"], totals2["failed"]) == (23, 0, 2)

        # The token went to the server, and nowhere else: not logs, errors, the database or the API.
        assert all(f"access_token={TOKEN}" in h.target for h in server.hits)
        with engine.connect() as conn:
            dumped = json.dumps(
                [list(map(str, r)) for r in conn.execute(text("SELECT * FROM tiles")).all()]
                + [list(map(str, r)) for r in conn.execute(text("SELECT * FROM ingest_jobs")).all()]
                + [list(map(str, r)) for r in conn.execute(text("SELECT * FROM areas")).all()]
            )
        logged = [r.getMessage() for r in caplog.records] + [caplog.text]
        assert any("HTTP Request" in m and "access_token=" in m for m in logged)  # httpx did log URLs
        assert any("z13:" in m and "fetched" in m and "cached" in m for m in logged)  # per-zoom progress
        assert any(path(*plan[1])[1:-4] in m for m in logged)  # the failure was logged
        for blob in [*logged, dumped, json.dumps(progress), client.get("/readyz").text]:
            assert TOKEN not in blob

        # Window pixels: a window straddling four tiles is spliced from them, pixel for pixel;
        # one reaching outside the area fetches the missing neighbour from the source.
        inner = next(
            r for r in rows if r.status == "fetched" and r.z == 13 and _has_fetched_neighbours(by_path, r)
        )
        windows = {
            0: (64, 64, 192, 192),
            1: (192, 160, 320, 288),  # four tiles
            2: (-100, 50, 28, 178),  # two tiles, negative x
        }
        with engine.begin() as conn:
            for index, px in windows.items():
                make_window(conn, inner.id * 4096 + index, inner.id, px=px, scale=0.5)
        mosaic = np.vstack(
            [
                np.hstack([_pixels(server.tile(13, inner.x + dx, inner.y + dy)) for dx in (-1, 0, 1)])
                for dy in (-1, 0, 1)
            ]
        )
        for index, (x0, y0, x1, y1) in windows.items():
            resp = client.get(f"/windows/{inner.id * 4096 + index}.png")
            assert resp.status_code == 200, resp.text
            assert resp.headers["content-type"] == "image/png"
            got = _pixels(resp.content)
            np.testing.assert_array_equal(got, mosaic[y0 + 256 : y1 + 256, x0 + 256 : x1 + 256])
        missing = client.get(f"/windows/{inner.id * 4096 + 99}.png")
        assert missing.status_code == 404 and "no window" in missing.json()["error"]["message"]

        # Map tiles: cached with ETag and 304, outside every area 404, in an area fetched on demand.
        z, x, y = next(t for t in plan if path(*t) not in permanent)
        first = client.get(f"/tiles/s2web/{z}/{x}/{y}.png")
        assert first.status_code == 200 and first.content == server.tile(z, x, y)
        assert "max-age" in first.headers["cache-control"]
        assert (
            client.get(
                f"/tiles/s2web/{z}/{x}/{y}", headers={"If-None-Match": first.headers["etag"]}
            ).status_code
            == 304
        )
        paris = mercantile.tile(2.35, 48.85, 13)
        outside = client.get(f"/tiles/s2web/13/{paris.x}/{paris.y}")
        assert outside.status_code == 404 and "outside every area" in outside.json()["error"]["message"]
        assert client.get("/tiles/nope/1/0/0").status_code == 404
        assert client.get("/tiles/s2web/3/9/0").status_code == 400


def _has_fetched_neighbours(by_path: dict, r) -> bool:
    return all(
        (n := by_path.get(path(r.z, r.x + dx, r.y + dy))) is not None and n.status == "fetched"
        for dx in (-1, 0, 1)
        for dy in (0, 1)
    )


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_geotiff_source_ingests_and_serves_tiles_on_demand(core_settings: CoreSettings) -> None:
    core = CoreSettings(
        **core_settings.model_dump(exclude={"tile_sources"}),
        tile_sources={"s2tif": "geotiff://" + ",".join(str(p) for p in demo_band_paths())},
    )
    small = {
        "type": "Polygon",
        "coordinates": [[[-75.66, 37.66], [-75.62, 37.66], [-75.62, 37.69], [-75.66, 37.66]]],
    }
    job_id = new_job(core, "s2tif", small, [13])
    counts = asyncio.run(fetch_job(job_id, core, TilerSettings(), lambda _job, _ids: None))
    assert counts["tiles_fetched"] == counts["tiles_planned"] > 0
    with TestClient(create_app(core, TilerSettings())) as client:
        t = mercantile.tile(-75.64, 37.665, 13)
        resp = client.get(f"/tiles/s2tif/13/{t.x}/{t.y}.png")
        assert resp.status_code == 200
        assert resp.content == find_tile(core.tile_cache_dir, "s2tif", 13, t.x, t.y).read_bytes()
        # Zoom 14 was never ingested, but it is inside the area: rendered from the raster now.
        t14 = mercantile.tile(-75.64, 37.665, 14)
        assert find_tile(core.tile_cache_dir, "s2tif", 14, t14.x, t14.y) is None
        resp = client.get(f"/tiles/s2tif/14/{t14.x}/{t14.y}")
        assert resp.status_code == 200 and _pixels(resp.content).std() > 10
        assert find_tile(core.tile_cache_dir, "s2tif", 14, t14.x, t14.y) is not None


def test_plan_preview_for_boxes_and_polygons(core_settings: CoreSettings) -> None:
    core = CoreSettings(**core_settings.model_dump(exclude={"max_tiles_per_area"}), max_tiles_per_area=40)
    with TestClient(create_app(core, TilerSettings())) as client:
        resp = client.get("/v1/plan", params={"bbox": "-75.70,37.60,-75.52,37.75", "zooms": "12-13"})
        assert resp.status_code == 200
        assert resp.json() == {
            "tiles": 34, "per_zoom": {"12": 9, "13": 25}, "exact": True, "limit": 40, "within_limit": True,
        }  # fmt: skip
        resp = client.post("/v1/plan", json={"polygon": POLYGON, "zooms": [12, 13]})
        assert resp.json()["per_zoom"] == {"12": 7, "13": 18}
        resp = client.post(
            "/v1/plan", json={"polygon": {"type": "Feature", "geometry": POLYGON}, "zooms": [14]}
        )
        body = resp.json()
        assert resp.status_code == 200 and body["tiles"] == 49 and body["within_limit"] is False
        assert "needs 49 tiles at zooms [14] (z14: 49), above the limit of 40" in body["message"]

        for request, fragment in [
            (("get", {"params": {"bbox": "1,2,3", "zooms": "12"}}), "four numbers"),
            (("get", {"params": {"bbox": "0,0,1,1", "zooms": "14-10"}}), "runs backwards"),
            (("post", {"json": {"bbox": [0, 0, 1, 1], "polygon": POLYGON, "zooms": [3]}}), "either bbox"),
            (
                ("post", {"json": {"polygon": {"type": "Point", "coordinates": [0, 0]}, "zooms": [3]}}),
                "GeoJSON Polygon",
            ),
            (("post", {"json": {"bbox": [0, 0, 1, 1], "zooms": [30]}}), "0..22"),
            # The GET form's zoom spec is held to the same platform limit as the POST form.
            (("get", {"params": {"bbox": "0,0,1,1", "zooms": "20-30"}}), "0..22"),
        ]:
            method, kwargs = request
            resp = getattr(client, method)("/v1/plan", **kwargs)
            assert resp.status_code == 400, resp.text
            assert fragment in resp.json()["error"]["message"]


def test_a_job_above_the_limit_is_refused_by_the_worker_too(core_settings: CoreSettings) -> None:
    core = CoreSettings(**core_settings.model_dump(exclude={"max_tiles_per_area"}), max_tiles_per_area=10)
    job_id = new_job(core, "s2web")
    asyncio.run(fetch_job(job_id, core, TilerSettings(), lambda _job, _ids: pytest.fail("nothing to embed")))
    with sync_engine(core.database_url).connect() as conn:
        state, error = conn.execute(
            text("SELECT state, error FROM ingest_jobs WHERE id = :j"), {"j": job_id}
        ).one()
    assert state == "failed"
    assert "needs 25 tiles" in error and "limit of 10" in error
