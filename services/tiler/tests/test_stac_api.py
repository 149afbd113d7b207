"""STAC sources over an API (``stac+http://``): pystac-client, as the tiler drives it, against a
real STAC API on loopback — stac-fastapi-pgstac over pgSTAC holding the demo catalog (the
``pgstac_api`` fixture of conftest.py) — searched by collections, bbox, datetime and cloud cover
(the ``query`` extension, which pgSTAC evaluates). What a real API does not do (fail its search,
be no API at all) comes from a small purpose-built server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mercantile
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pystac_client.warnings import NoConformsTo

from cliprs.errors import InvalidInput, Unavailable
from cliprs.settings import CoreSettings
from cliprs_testing.loopback import free_port, serving
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.sources import TileNotFound, open_source
from cliprs_tiler.stac import SEARCH_ZOOM

TOKEN = "stac-sekrit-7f3a9c"
S2_ITEM, LANDSAT_ITEM = "demo-s2-eastern-shore", "demo-l8-pensacola"  # cloud cover 0 and 33.54
S2_BOX, LANDSAT_BOX = "-75.70,37.60,-75.60,37.70", "-87.45,30.65,-87.35,30.75"
AUTH = "header.Authorization=Bearer%20${CLIPRS_TEST_STAC_TOKEN}"


@pytest.fixture
def api(pgstac_api: tuple[str, list[dict]]) -> tuple[str, list[dict]]:
    """The module's real STAC API, with only this test's requests in its record."""
    host, calls = pgstac_api
    calls.clear()
    return host, calls


def misbehaving_server(catalog_dir: Path) -> FastAPI:
    """Purpose-built for what a real STAC API never does on request: ``/static/`` serves the
    demo catalog as plain files (a catalog over HTTP, no API: no conformance, no search), and
    ``/broken/`` is a landing page whose search answers 500."""
    app = FastAPI()
    app.mount("/static", StaticFiles(directory=catalog_dir), name="static")

    @app.get("/broken/")
    async def broken_landing(request: Request) -> dict:
        base = str(request.base_url).rstrip("/")
        links = [
            {"rel": "self", "href": f"{base}/broken/", "type": "application/json"},
            {"rel": "root", "href": f"{base}/broken/", "type": "application/json"},
            {
                "rel": "search",
                "href": f"{base}/broken/search",
                "type": "application/geo+json",
                "method": "POST",
            },
        ]
        conforms = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"]
        return {"type": "Catalog", "id": "broken", "stac_version": "1.0.0", "description": "fails",
                "conformsTo": conforms, "links": links}  # fmt: skip

    @app.post("/broken/search")
    async def broken_search() -> JSONResponse:
        return JSONResponse({"code": "ServerError", "description": "database is down"}, status_code=500)

    return app


@pytest.fixture
def misbehaving(demo_stac: Path) -> Iterator[str]:
    with serving(misbehaving_server(demo_stac.parent)) as port:
        yield f"127.0.0.1:{port}"


def source(template: str) -> Any:
    return open_source("api", CoreSettings(tile_sources={"api": template}), TilerSettings(timeout_s=5))


async def test_an_api_source_searches_per_region_with_the_token_and_renders_like_the_catalog(
    api: tuple[str, list[dict]],
    demo_stac: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host, calls = api
    monkeypatch.setenv("CLIPRS_TEST_STAC_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)  # pystac-client logs every request's headers at DEBUG
    options = "collections=demo-sentinel-2&assets=visual&max_cloud=10&datetime=2019-01-01/2019-12-31"
    src = source(f"stac+http://{host}/?{options}&{AUTH}")
    static = source(f"stac+file://{demo_stac}?{options}")
    tiles = [
        mercantile.tile(lon, lat, 13) for lon, lat in [(-75.64, 37.665), (-75.60, 37.70), (-75.66, 37.62)]
    ]
    assert len({mercantile.parent(t, zoom=SEARCH_ZOOM) for t in tiles}) == 1
    for t in tiles:
        got, want = await src.fetch(t.z, t.x, t.y), await static.fetch(t.z, t.x, t.y)
        assert got.data == want.data and got.items == (S2_ITEM,)
    with pytest.raises(TileNotFound):
        t = mercantile.tile(-87.40, 30.73, 13)  # another region: searched, nothing of this collection
        await src.fetch(t.z, t.x, t.y)
    searches = [c for c in calls if c["path"] == "/search"]
    # One search on opening (any item at all?), then one per region, whatever the tiles asked.
    assert len(searches) == 3 and searches[0]["body"].get("bbox") is None
    assert all(c["method"] == "POST" for c in searches)
    body = searches[1]["body"]
    assert body["collections"] == ["demo-sentinel-2"] and body["query"] == {"eo:cloud_cover": {"lte": 10.0}}
    assert body["datetime"].startswith("2019-01-01T00:00:00") and "2019-12-31T23:59:59" in body["datetime"]
    assert {c["auth"] for c in calls} == {f"Bearer {TOKEN}"}  # the token went to the API...
    assert TOKEN not in caplog.text and "***" in caplog.text  # ...and into no log line
    assert "${CLIPRS_TEST_STAC_TOKEN}" in str(src.query.headers)  # kept as written
    assert "stopped at" not in caplog.text  # the one-item probe on opening is no truncated search


@pytest.mark.parametrize(
    ("options", "found"),
    [
        ("collections=demo-sentinel-2", [S2_ITEM]),
        ("collections=demo-landsat-8", [LANDSAT_ITEM]),
        (f"bbox={LANDSAT_BOX}", [LANDSAT_ITEM]),
        (f"bbox={S2_BOX}&collections=demo-landsat-8", []),
        ("datetime=2019-01-01/2019-12-31", [S2_ITEM]),
        ("datetime=2017-06-01", [LANDSAT_ITEM]),
        ("datetime=2020-01-01/..", []),
        ("max_cloud=10", [S2_ITEM]),
        ("max_cloud=40", [S2_ITEM, LANDSAT_ITEM]),  # least cloudy first
        ("max_cloud=40&datetime=2017-01-01/2017-12-31", [LANDSAT_ITEM]),
        ("collections=demo-landsat-8&max_cloud=33", []),
    ],
)
def test_the_api_does_the_filtering_the_tiler_asks_for(
    api: tuple[str, list[dict]], options: str, found: list[str]
) -> None:
    """Each search the tiler sends, answered by pgSTAC itself: the raw answer to the very body the
    tiler posted holds the expected items (the tiler checks the items again, so only the raw
    answer shows the API understood collections, bbox, datetime and ``query``)."""
    host, calls = api
    template = f"stac+http://{host}/?assets=visual&{options}"
    if found:
        src = source(template)
        assert [f.id for f in src.catalog.search(src.query.bbox)] == found
    else:
        with pytest.raises(InvalidInput, match="no STAC item matches the search"):
            source(template)
    body = next(c["body"] for c in reversed(calls) if c["path"] == "/search")
    answer = httpx.post(f"http://{host}/search", json=body, timeout=10).raise_for_status().json()
    assert sorted(f["id"] for f in answer["features"]) == sorted(found)


def test_an_api_that_finds_nothing_or_fails_or_is_not_there(
    api: tuple[str, list[dict]],
    misbehaving: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host, _ = api
    monkeypatch.setenv("CLIPRS_TEST_STAC_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    # The Landsat item is there, but cloudier (33.54 %) than asked: pgSTAC leaves it out.
    with pytest.raises(InvalidInput) as caught:
        source(f"stac+http://{host}/?collections=demo-landsat-8&assets=visual&max_cloud=20&{AUTH}")
    assert "no STAC item matches the search: STAC API http://" in str(caught.value)
    assert "collections demo-landsat-8" in str(caught.value) and "eo:cloud_cover <= 20" in str(caught.value)
    with pytest.raises(InvalidInput, match="the assets they have: blue, green, qa_pixel, red, visual"):
        source(f"stac+http://{host}/?collections=demo-landsat-8&assets=nir&{AUTH}")
    # Reached, but no API's landing page: a collection of the real API, and its OpenAPI document.
    for path, found in [("collections/demo-sentinel-2", "Collection"), ("api", "None")]:
        with pytest.raises(InvalidInput) as caught:
            source(f"stac+http://{host}/{path}?assets=visual&{AUTH}")
        assert f"http://{host}/{path} is not a STAC API's landing page" in str(caught.value)
        assert f"found type={found}" in str(caught.value) and "give the API's root URL" in str(caught.value)
    # A catalog over HTTP: pystac-client opens it (warning that it conforms to nothing, links no
    # search), and its search is refused.
    with pytest.raises(InvalidInput, match="is not a STAC API with item search"):
        with pytest.warns(NoConformsTo):
            source(f"stac+http://{misbehaving}/static/catalog.json?assets=visual")
    with pytest.raises(Unavailable, match=r"the search failed: STAC API .*database is down"):
        source(f"stac+http://{misbehaving}/broken/?assets=visual&{AUTH}")
    port = free_port()
    with pytest.raises(Unavailable) as caught:
        source(f"stac+http://127.0.0.1:{port}/v1?assets=visual&{AUTH}")
    message = str(caught.value)
    assert f"the STAC API at http://127.0.0.1:{port}/v1 could not be reached" in message
    assert f"tried GET http://127.0.0.1:{port}/v1" in message
    assert TOKEN not in message and TOKEN not in caplog.text
