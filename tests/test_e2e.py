"""End to end: real processes on loopback (PostGIS, Redis, tiler, Celery workers, embedder,
indexer, search-api), one area ingested through the REST API, then searched."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import mercantile
import pytest
from PIL import Image
from shapely.geometry import box, shape

from cliprs.tiles import BBox, tiles_for_bbox
from cliprs_tools.devstack import follow_job
from tests.support.platform import finish_job

AREA_BBOX = [-75.66, 37.66, -75.62, 37.69]  # farmland and a creek on Virginia's Eastern Shore
AREA_ZOOMS = [13, 14]
MAX_TILES = 200


@pytest.fixture(scope="module")
def tile_folder(render_tiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Sentinel-2 tiles of the test area, rendered into an XYZ folder."""
    return render_tiles(tmp_path_factory.mktemp("tiles"), tiles_for_bbox(BBox(*AREA_BBOX), AREA_ZOOMS))


@pytest.fixture(scope="module")
def stack(start_platform, tiny_model_dir: Path, tile_folder: Path) -> Iterator[dict]:
    """Every backend service as a real process, on free loopback ports."""
    env = {
        "CLIPRS_TILE_SOURCES": json.dumps({"test": f"file://{tile_folder}/{{z}}/{{x}}/{{y}}.png"}),
        "CLIPRS_MAX_TILES_PER_AREA": str(MAX_TILES),
        "CLIP_MODEL": str(tiny_model_dir),
    }
    with start_platform("e2e", env) as platform:
        yield platform


@pytest.fixture(scope="module")
def ingested(stack: dict) -> dict:
    """The test area created through the API and followed until its job is done."""
    api = stack["api"]
    resp = httpx.post(
        f"{api}/v1/areas", json={"name": "e2e", "bbox": AREA_BBOX, "zooms": AREA_ZOOMS, "source": "test"}
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    return {"area": body["area"], "job": finish_job(stack, body["job"], timeout_s=240)}


def test_ingest_fetches_embeds_and_indexes_every_tile(ingested: dict) -> None:
    job = ingested["job"]
    expected_tiles = len(list(tiles_for_bbox(BBox(*AREA_BBOX), AREA_ZOOMS)))
    assert job["tiles_planned"] == expected_tiles
    assert job["tiles_fetched"] == job["tiles_embedded"] == expected_tiles
    assert job["tiles_failed"] == 0
    # 256 px tiles cut at scales 1 and 0.5 with a quarter stride: 1 + 5 x 5 windows each.
    assert job["windows_embedded"] == job["windows_indexed"] == expected_tiles * 26


def test_readyz_reports_the_model(stack: dict, ingested: dict, tiny_model_dir: Path) -> None:
    body = httpx.get(f"{stack['api']}/readyz").json()
    assert body["status"] == "ready"
    assert body["model"]["loaded"] == str(tiny_model_dir)
    assert body["model"]["fallback"] is False
    assert body["checks"]["index"]["vectors"] == ingested["job"]["windows_indexed"]


def test_text_search_returns_ordered_geojson_inside_the_area(stack: dict, ingested: dict) -> None:
    area_id = ingested["area"]["id"]
    resp = httpx.get(
        f"{stack['api']}/v1/search", params={"q": "boats near a pier", "k": 15, "area_id": area_id}
    )
    assert resp.status_code == 200, resp.text
    fc = resp.json()
    assert fc["type"] == "FeatureCollection"
    assert fc["count"] == len(fc["features"]) == 15
    area = box(*AREA_BBOX)
    scores = [f["properties"]["score"] for f in fc["features"]]
    assert scores == sorted(scores, reverse=True)
    for f in fc["features"]:
        props = f["properties"]
        footprint = shape(f["geometry"])
        assert footprint.intersects(area)
        tile = props["tile"]
        assert tile["z"] in AREA_ZOOMS and tile["source"] == "test"
        # The footprint lies inside its tile (coordinates are rounded to 7 decimals, ~1 cm).
        assert box(*mercantile.bounds(tile["x"], tile["y"], tile["z"])).buffer(1e-7).contains(footprint)
        assert props["z"] == tile["z"]
        assert props["image_url"].endswith(f"/windows/{props['window_id']}.png")
        assert -1.0 <= props["score"] <= 1.0


def test_window_image_is_the_exact_crop_of_its_tile(stack: dict, ingested: dict, tile_folder: Path) -> None:
    fc = httpx.get(f"{stack['api']}/v1/search", params={"q": "farmland", "k": 5}).json()
    props = fc["features"][0]["properties"]
    png = httpx.get(props["image_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    crop = Image.open(io.BytesIO(png.content)).convert("RGB")
    t = props["tile"]
    tile_img = Image.open(tile_folder / str(t["z"]) / str(t["x"]) / f"{t['y']}.png").convert("RGB")
    side = round(256 * props["scale"])
    assert crop.size == (side, side)
    # The same pixels must exist somewhere in the tile at the window's stride positions.
    matches = [
        (x0, y0)
        for y0 in range(0, 256 - side + 1, max(1, side // 4))
        for x0 in range(0, 256 - side + 1, max(1, side // 4))
        if tile_img.crop((x0, y0, x0 + side, y0 + side)).tobytes() == crop.tobytes()
    ]
    assert matches


def test_image_search_with_a_windows_own_pixels_finds_it_first(stack: dict, ingested: dict) -> None:
    # The query's pixels go through the same device preprocessing as the batch path (resized
    # alone rather than cut from the resized tile): windows of every scale must find themselves.
    fc = httpx.get(f"{stack['api']}/v1/search", params={"q": "a creek through farmland", "k": 50}).json()
    by_scale: dict[float, dict] = {}
    for feature in fc["features"][4:]:  # not the text's best hits: any indexed window works
        by_scale.setdefault(feature["properties"]["scale"], feature["properties"])
    assert len(by_scale) >= 2, by_scale.keys()
    for target in by_scale.values():
        png = httpx.get(target["image_url"]).content
        resp = httpx.post(
            f"{stack['api']}/v1/search/image", files={"file": ("w.png", png, "image/png")}, params={"k": 5}
        )
        assert resp.status_code == 200, resp.text
        first = resp.json()["features"][0]["properties"]
        assert first["window_id"] == target["window_id"], (target["scale"], first)
        assert first["score"] > 0.99


def test_find_similar_by_window_id(stack: dict, ingested: dict) -> None:
    fc = httpx.get(f"{stack['api']}/v1/search", params={"q": "houses", "k": 3}).json()
    wid = fc["features"][2]["properties"]["window_id"]
    similar = httpx.get(f"{stack['api']}/v1/windows/{wid}/similar", params={"k": 3}).json()
    assert similar["features"][0]["properties"]["window_id"] == wid
    assert similar["features"][0]["properties"]["score"] > 0.99
    missing = httpx.get(f"{stack['api']}/v1/windows/1/similar")
    assert missing.status_code == 404 and "not in the index" in missing.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "fragment"),
    [
        ("get", "/v1/search", {"params": {"q": ""}}, 400, "query is empty"),
        ("get", "/v1/search", {"params": {"q": "   "}}, 400, "query is empty"),
        ("get", "/v1/search", {"params": {"q": "?!#"}}, 400, "no letters or digits"),
        ("get", "/v1/search", {"params": {"q": "x" * 5000}}, 422, "limit"),
        ("get", "/v1/search", {"params": {"q": "pier", "k": 0}}, 400, "k must be within"),
        ("get", "/v1/search", {"params": {"q": "pier", "bbox": "-75,38,-76,37"}}, 400, "min_lon < max_lon"),
        ("get", "/v1/search", {"params": {"q": "pier", "zoom": 23}}, 400, "0..22"),
        (
            "post",
            "/v1/areas",
            {"json": {"name": "a", "bbox": [-75.6, 37.7, -75.7, 37.6], "zooms": [12], "source": "test"}},
            400,
            "min_lon < max_lon",
        ),
        (
            "post",
            "/v1/areas",
            {"json": {"name": "a", "bbox": [10, 80, 11, 86], "zooms": [12], "source": "test"}},
            400,
            "85.05",
        ),
        (
            "post",
            "/v1/areas",
            {"json": {"name": "a", "bbox": [-75.6, 37.6, -75.5, 37.7], "zooms": [23], "source": "test"}},
            400,
            "0..22",
        ),
        (
            "post",
            "/v1/areas",
            {"json": {"name": "a", "bbox": [-75.6, 37.6, -75.5, 37.7], "zooms": [12], "source": "nope"}},
            400,
            "unknown tile source",
        ),
        (
            "post",
            "/v1/areas",
            {"json": {"name": "big", "bbox": [-76, 37, -75, 38], "zooms": [16], "source": "test"}},
            422,
            "tiles",
        ),
        (
            "post",
            "/v1/areas",
            {"json": {"name": "a", "bbox": [1, 2, 3], "zooms": [12], "source": "test"}},
            400,
            "four numbers",
        ),
        ("post", "/v1/areas", {"json": {"bbox": [1, 2, 3, 4], "zooms": [12]}}, 422, "name"),
        (
            "post",
            "/v1/search/image",
            {"files": {"file": ("x.png", b"this is not an image", "image/png")}},
            400,
            "not a readable image",
        ),
        ("post", "/v1/search/image", {"files": {"file": ("x.png", b"", "image/png")}}, 400, "empty"),
    ],
)
def test_bad_input_gets_a_clear_4xx(
    stack: dict, ingested: dict, method: str, path: str, kwargs: dict, status: int, fragment: str
) -> None:
    resp = getattr(httpx, method)(f"{stack['api']}{path}", **kwargs)
    assert resp.status_code == status, resp.text
    message = resp.json()["error"]["message"]
    assert fragment in message
    assert "Traceback" not in message


def test_area_too_large_says_how_many_tiles(stack: dict) -> None:
    resp = httpx.post(
        f"{stack['api']}/v1/areas",
        json={"name": "big", "bbox": [-76, 37, -75, 38], "zooms": [16], "source": "test"},
    )
    message = resp.json()["error"]["message"]
    n = int(message.split("needs ")[1].split(" tiles")[0])
    assert n > MAX_TILES and str(MAX_TILES) in message


def test_tiles_are_served_with_caching_headers_and_404_outside(stack: dict, ingested: dict) -> None:
    t = next(iter(tiles_for_bbox(BBox(*AREA_BBOX), [13])))
    resp = httpx.get(f"{stack['tiler']}/tiles/test/{t.z}/{t.x}/{t.y}.png")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    etag = resp.headers["etag"]
    assert "max-age" in resp.headers["cache-control"]
    assert (
        httpx.get(
            f"{stack['tiler']}/tiles/test/{t.z}/{t.x}/{t.y}", headers={"If-None-Match": etag}
        ).status_code
        == 304
    )
    far = mercantile.tile(2.35, 48.85, 13)  # Paris
    assert httpx.get(f"{stack['tiler']}/tiles/test/13/{far.x}/{far.y}").status_code == 404


def test_polygon_area_fetches_only_the_tiles_it_overlaps(stack: dict, ingested: dict) -> None:
    # A triangle inside the ingested box: its tiles are already fetched and embedded, so the job
    # is quick, and it must plan fewer tiles than its bounding box.
    w, s, e, n = AREA_BBOX
    triangle = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [w, n], [w, s]]]}
    both = httpx.post(
        f"{stack['api']}/v1/areas",
        json={"name": "x", "bbox": AREA_BBOX, "polygon": triangle, "zooms": [14], "source": "test"},
    )
    assert both.status_code == 400 and "either bbox" in both.json()["error"]["message"]
    resp = httpx.post(
        f"{stack['api']}/v1/areas",
        json={"name": "triangle", "polygon": triangle, "zooms": [14], "source": "test"},
    )
    assert resp.status_code == 202, resp.text
    job = resp.json()["job"]
    bbox_tiles = len(list(tiles_for_bbox(BBox(*AREA_BBOX), [14])))
    assert 0 < job["tiles_planned"] < bbox_tiles
    job = follow_job(stack["api"], job, timeout_s=240)
    assert job["state"] == "done" and job["tiles_embedded"] == job["tiles_planned"], job
