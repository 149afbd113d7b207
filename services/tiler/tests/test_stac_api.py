"""STAC sources over an API (``stac+http://``): pystac-client against a small STAC API on loopback
that serves the demo catalog's items through the item-search protocol (landing page,
conformance, ``POST /search`` with collections, bbox, datetime and the ``query`` extension)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import mercantile
import pystac
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cliprs.errors import InvalidInput, Unavailable
from cliprs.settings import CoreSettings
from cliprs_testing.loopback import free_port, serving
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.sources import TileNotFound, open_source
from cliprs_tiler.stac import SEARCH_ZOOM

TOKEN = "stac-sekrit-7f3a9c"
S2_ITEM = "demo-s2-eastern-shore"
CONFORMS = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
]


def _overlaps(box: list[float], other: list[float]) -> bool:
    return box[0] <= other[2] and other[0] <= box[2] and box[1] <= other[3] and other[1] <= box[3]


def _in_range(item: dict, interval: str | None) -> bool:
    if not interval:
        return True
    when = datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))
    start, end = (
        None if v in ("", "..") else datetime.fromisoformat(v.replace("Z", "+00:00"))
        for v in interval.split("/")
    )
    return (start is None or when >= start) and (end is None or when <= end)


def stac_api(items: list[dict], calls: list[dict]) -> FastAPI:
    """The item-search part of a STAC API over ``items``; every request is recorded in ``calls``
    (path, its Authorization header, the search body)."""
    app = FastAPI()

    @app.get("/")
    async def landing(request: Request) -> dict:
        calls.append({"path": "/", "auth": request.headers.get("authorization")})
        base = str(request.base_url).rstrip("/")
        links = [
            {"rel": "self", "href": f"{base}/", "type": "application/json"},
            {"rel": "root", "href": f"{base}/", "type": "application/json"},
            {"rel": "search", "href": f"{base}/search", "type": "application/geo+json", "method": "POST"},
        ]
        return {"type": "Catalog", "id": "loopback", "stac_version": "1.0.0", "description": "test API",
                "conformsTo": CONFORMS, "links": links}  # fmt: skip

    @app.get("/plain/")
    async def plain_catalog(request: Request) -> dict:
        """A catalog over HTTP that is no API: no conformance, no search link."""
        base = str(request.base_url).rstrip("/")
        return {"type": "Catalog", "id": "plain", "stac_version": "1.0.0", "description": "no API",
                "links": [{"rel": "self", "href": f"{base}/plain/"}]}  # fmt: skip

    @app.get("/broken/")
    async def broken_landing(request: Request) -> dict:
        base = str(request.base_url).rstrip("/")
        links = [{"rel": "search", "href": f"{base}/broken/search", "method": "POST"}]
        return {"type": "Catalog", "id": "broken", "stac_version": "1.0.0", "description": "fails",
                "conformsTo": CONFORMS, "links": links}  # fmt: skip

    @app.post("/broken/search")
    async def broken_search() -> JSONResponse:
        return JSONResponse({"code": "ServerError", "description": "database is down"}, status_code=500)

    @app.post("/search")
    async def search(request: Request) -> JSONResponse:
        body = await request.json()
        calls.append({"path": "/search", "auth": request.headers.get("authorization"), "body": body})
        limit = (body.get("query") or {}).get("eo:cloud_cover", {}).get("lte")
        hits = [
            item for item in items
            if (not body.get("collections") or item["collection"] in body["collections"])
            and (not body.get("bbox") or _overlaps(item["bbox"], body["bbox"]))
            and _in_range(item, body.get("datetime"))
            and (limit is None or item["properties"]["eo:cloud_cover"] <= limit)
        ][: body.get("limit") or 100]  # fmt: skip
        return JSONResponse({"type": "FeatureCollection", "features": hits, "links": []})

    return app


@pytest.fixture(scope="module")
def api_items(demo_stac: Path) -> list[dict]:
    """The demo catalog's items as an API serves them: absolute asset hrefs, no catalog links."""
    catalog = pystac.Catalog.from_file(str(demo_stac))
    out = []
    for item in catalog.get_items(recursive=True):
        item.make_asset_hrefs_absolute()
        doc = item.to_dict(include_self_link=False, transform_hrefs=False)
        doc["links"] = []
        out.append(doc)
    return out


@pytest.fixture
def api(api_items: list[dict]) -> Iterator[tuple[str, list[dict]]]:
    calls: list[dict] = []
    with serving(stac_api(api_items, calls)) as port:
        yield f"127.0.0.1:{port}", calls


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
    src = source(f"stac+http://{host}/?{options}&header.Authorization=Bearer%20${{CLIPRS_TEST_STAC_TOKEN}}")
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
    body = searches[1]["body"]
    assert body["collections"] == ["demo-sentinel-2"] and body["query"] == {"eo:cloud_cover": {"lte": 10.0}}
    assert body["datetime"].startswith("2019-01-01T00:00:00") and "2019-12-31T23:59:59" in body["datetime"]
    assert {c["auth"] for c in calls} == {f"Bearer {TOKEN}"}  # the token went to the API...
    assert TOKEN not in caplog.text and "***" in caplog.text  # ...and into no log line
    assert "${CLIPRS_TEST_STAC_TOKEN}" in str(src.query.headers)  # kept as written


def test_an_api_that_finds_nothing_or_fails_or_is_not_there(
    api: tuple[str, list[dict]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    host, _ = api
    monkeypatch.setenv("CLIPRS_TEST_STAC_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    auth = "header.Authorization=Bearer%20${CLIPRS_TEST_STAC_TOKEN}"
    with pytest.raises(InvalidInput) as caught:
        source(f"stac+http://{host}/?collections=demo-landsat-8&assets=visual&max_cloud=20&{auth}")
    assert "no STAC item matches the search: STAC API http://" in str(caught.value)
    assert "collections demo-landsat-8" in str(caught.value) and "eo:cloud_cover <= 20" in str(caught.value)
    with pytest.raises(InvalidInput, match="the assets they have: blue, green, qa_pixel, red, visual"):
        source(f"stac+http://{host}/?collections=demo-landsat-8&assets=nir&{auth}")
    with pytest.raises(InvalidInput, match="is not a STAC API with item search"):
        source(f"stac+http://{host}/plain/?assets=visual")
    with pytest.raises(Unavailable, match=r"the search failed: STAC API .*database is down"):
        source(f"stac+http://{host}/broken/?assets=visual&{auth}")
    port = free_port()
    with pytest.raises(Unavailable) as caught:
        source(f"stac+http://127.0.0.1:{port}/v1?assets=visual&{auth}")
    message = str(caught.value)
    assert f"the STAC API at http://127.0.0.1:{port}/v1 could not be reached" in message
    assert f"tried GET http://127.0.0.1:{port}/v1" in message
    assert TOKEN not in message and TOKEN not in caplog.text
