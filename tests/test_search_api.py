"""The search-api over HTTP (in-process, with the real embedder app on the tiny CLIP): the answer
format, cursors, polygons, zero-shot labels, heat maps, deleting an area and the OpenAPI document.
Index and rows come from the indexer's own code, on real PostGIS and Redis."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import mercantile
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image
from shapely.geometry import box, shape
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_search.settings import SearchSettings
from cliprs_testing.factories import make_job, window_quality
from cliprs_testing.synthetic import clustered_unit_vectors, delete_seeded, seed_area
from tests.support.search_app import core_for_test, index_seeded, search_api

CENTRE = (-77.036, 38.889)  # the National Mall


@pytest.fixture(scope="module")
def world(
    pg_url: str, redis_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    core = core_for_test(pg_url, redis_url, tmp_path_factory.mktemp("data"), "api")
    t = mercantile.tile(*CENTRE, 16)
    tiles = [mercantile.Tile(t.x + dx, t.y + dy, 16) for dx in range(3) for dy in range(3)]
    area = seed_area(pg_url, [*tiles, mercantile.parent(t)], name="mall", source="mall")
    encoder = load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu"))
    index_seeded(core, area, clustered_unit_vectors(len(area.ids), 512, seed=3), encoder.info.loaded)
    app, _ = search_api(core, encoder)
    world = {"client": None, "area": area, "core": core, "tile": tiles[4], "cleanup": [area.area_id]}
    with TestClient(app) as client:
        world["client"] = client
        yield world
    delete_seeded(pg_url, world["cleanup"])


def get(world: dict, path: str, **params) -> httpx.Response:
    return world["client"].get(path, params=params)


def test_text_search_answers_geojson_with_the_new_fields(world: dict) -> None:
    resp = get(world, "/v1/search", q="a parking lot", k=5)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    for key in ("type", "features", "count", "took_ms", "index_version", "query", "model"):
        assert key in body  # the fields the web page reads
    assert body["count"] == len(body["features"]) == 5
    s = SearchSettings()
    assert body["filter"] == {
        "strategy": "index",
        "estimated_matches": None,
        "candidates": body["filter"]["candidates"],
        "complete": True,
        "incomplete_reason": None,
        "max_cloud": s.default_max_cloud,  # the defaults, applied
        "min_valid": s.default_min_valid,
    }
    assert body["confidence"]["level"] in ("low", "medium", "high")
    assert body["merged"] == sum(f["properties"]["merged"] for f in body["features"])
    assert body["next_cursor"]
    ids = set(world["area"].ids.tolist())
    for rank, f in enumerate(body["features"], start=1):
        p = f["properties"]
        assert p["window_id"] in ids and p["rank"] == rank
        assert p["image_url"] == f"http://tiler.test/windows/{p['window_id']}.png"
        assert set(p["tile"]) == {"source", "z", "x", "y"} and len(p["center"]) == 2
        assert len(p["merged_ids"]) == p["merged"]
        # Rows embedded before quality was measured: unknown (null), and they pass the filters.
        assert p["cloud_score"] is None and p["valid_fraction"] is None
        assert p["identical"] == 0 and p["identical_ids"] == []
        # The National Mall: the nearest GeoNames place is in Washington or across the river.
        assert p["place"]["country"] == "US" and p["address"] == p["place"]["label"]
        assert p["place"]["distance_km"] < 10
    no_address = get(world, "/v1/search", q="a parking lot", k=5, address=False).json()
    assert "address" not in no_address["features"][0]["properties"]


def test_cursor_pages_continue_the_ranking(world: dict) -> None:
    first = get(world, "/v1/search", q="trees", k=4, merge=False).json()
    second = get(world, "/v1/search", q="trees", k=6, merge=False, cursor=first["next_cursor"]).json()
    whole = get(world, "/v1/search", q="trees", k=10, merge=False).json()
    ids = [f["properties"]["window_id"] for f in first["features"] + second["features"]]
    assert ids == [f["properties"]["window_id"] for f in whole["features"]]
    assert [f["properties"]["rank"] for f in second["features"]] == list(range(5, 11))
    other = get(world, "/v1/search", q="water", k=4, cursor=first["next_cursor"])
    assert other.status_code == 400 and "another query" in other.json()["error"]["message"]
    merged = get(
        world, "/v1/search", q="trees", k=4, cursor=first["next_cursor"]
    )  # merge changes the ranking
    assert merged.status_code == 400


def test_post_search_filters_by_polygon_and_finds_similar(world: dict) -> None:
    client = world["client"]
    tile = mercantile.bounds(world["tile"])
    poly = {
        "type": "Polygon",
        "coordinates": [
            [
                [tile.west, tile.south],
                [tile.east, tile.south],
                [tile.west, tile.north],
                [tile.west, tile.south],
            ]
        ],
    }
    body = client.post(
        "/v1/search", json={"q": "roofs", "k": 30, "polygon": poly, "zoom": [16], "merge": False}
    ).json()
    assert body["count"] > 0
    for f in body["features"]:
        assert shape(f["geometry"]).intersects(shape(poly)) and f["properties"]["z"] == 16
    wid = body["features"][3]["properties"]["window_id"]
    similar = client.post("/v1/search", json={"window_id": wid, "k": 3}).json()
    assert similar["features"][0]["properties"]["window_id"] == wid
    assert similar["query"] == {"window_id": wid}
    for payload, status, fragment in (
        ({"k": 3}, 400, "either q"),
        ({"q": "x", "window_id": wid}, 400, "either q"),
        ({"q": "roofs", "polygon": {"type": "Point", "coordinates": [0, 0]}}, 400, "Polygon"),
        ({"q": "roofs", "bbox": [1, 2, 3]}, 400, "four numbers"),
        ({"window_id": 12345}, 404, "not in the index"),
    ):
        resp = client.post("/v1/search", json=payload)
        assert resp.status_code == status and fragment in resp.json()["error"]["message"], resp.text


def test_bbox_and_min_score_on_get(world: dict) -> None:
    b = mercantile.bounds(world["tile"])
    bbox = f"{b.west},{b.south},{b.east},{b.north}"
    body = get(world, "/v1/search", q="a road", k=10, bbox=bbox, min_score=-0.5).json()
    for f in body["features"]:
        assert shape(f["geometry"]).intersects(box(b.west, b.south, b.east, b.north))
        assert f["properties"]["score"] >= -0.5
    none = get(world, "/v1/search", q="a road", min_score=0.999).json()
    assert none["count"] == 0 and none["confidence"]["level"] == "none" and none["warning"]


def test_classify_ranks_labels_for_a_window_and_an_upload(world: dict) -> None:
    client = world["client"]
    wid = int(world["area"].ids[5])
    body = client.post("/v1/classify", data={"window_id": wid}).json()
    assert len(body["labels"]) == 30 and body["template"] == "An aerial photograph of {label}"
    scores = [r["score"] for r in body["labels"]]
    assert scores == sorted(scores, reverse=True) and body["best"] == body["labels"][0]["label"]
    assert sum(r["probability"] for r in body["labels"]) == pytest.approx(1.0, abs=1e-4)
    assert body["labels"][0]["prompt"] == f"An aerial photograph of {body['best']}"

    png = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 90, 200)).save(png, format="PNG")
    resp = client.post(
        "/v1/classify",
        files={"file": ("sea.png", png.getvalue(), "image/png")},
        data={"labels": ["a harbour with boats", "a wheat field"], "template": "{label}"},
    )
    assert resp.status_code == 200, resp.text
    assert {r["prompt"] for r in resp.json()["labels"]} == {"a harbour with boats", "a wheat field"}
    for data, fragment in (({}, "either file"), ({"window_id": wid, "labels": ["one"]}, "at least two")):
        resp = client.post("/v1/classify", data=data)
        assert resp.status_code == 400 and fragment in resp.json()["error"]["message"]


def test_heatmap_scores_every_window_of_a_tile(world: dict) -> None:
    t = world["tile"]
    body = get(world, f"/v1/tiles/mall/{t.z}/{t.x}/{t.y}/heatmap", q="a pond", grid=8).json()
    assert body["count"] == 26  # one whole-tile window and 5 x 5 half-tile windows
    scores = [f["properties"]["score"] for f in body["features"]]
    assert (
        scores == sorted(scores, reverse=True)
        and body["best"] == body["features"][0]["properties"]["window_id"]
    )
    values = body["grid"]["values"]
    assert len(values) == 8 and all(len(row) == 8 for row in values)
    assert all(v is not None and min(scores) <= v <= max(scores) for row in values for v in row)
    missing = get(world, "/v1/tiles/mall/3/1/1/heatmap", q="a pond")
    assert missing.status_code == 404 and "not been ingested" in missing.json()["error"]["message"]
    assert get(world, f"/v1/tiles/mall/{t.z}/{t.x}/{t.y}/heatmap", q="!!").status_code == 400


def test_index_readiness_and_openapi(world: dict) -> None:
    info = get(world, "/v1/index").json()
    assert info["vectors"] == len(world["area"].ids)
    assert [s["area_ids"] for s in info["shards"]] == [[world["area"].area_id]]
    paths = world["client"].get("/openapi.json").json()["paths"]
    for path in (
        "/v1/search",
        "/v1/search/image",
        "/v1/windows/{window_id}/similar",
        "/v1/classify",
        "/v1/tiles/{source}/{z}/{x}/{y}/heatmap",
        "/v1/areas/{area_id}",
        "/v1/index",
    ):
        assert path in paths
    assert "delete" in paths["/v1/areas/{area_id}"] and "post" in paths["/v1/search"]


def test_delete_area_is_refused_while_ingesting_then_queued(world: dict, pg_url: str) -> None:
    client, core = world["client"], world["core"]
    other = seed_area(pg_url, [mercantile.Tile(1, 1, 5)], name="to delete", source="doomed")
    world["cleanup"].append(other.area_id)
    with sync_engine(pg_url).begin() as conn:
        make_job(conn, other.area_id, state="embedding")
    assert client.delete("/v1/areas/99999999").status_code == 404
    refused = client.delete(f"/v1/areas/{other.area_id}")
    assert refused.status_code == 400 and "force=true" in refused.json()["error"]["message"]
    queue = redis.Redis.from_url(core.redis_url)
    before = queue.llen("index")
    resp = client.delete(f"/v1/areas/{other.area_id}", params={"force": "true"})
    assert resp.status_code == 202 and resp.json()["area"]["status"] == "deleting"
    assert queue.llen("index") == before + 1  # the indexer's task (run for real in test_hot_swap)
    queue.close()


def test_searchers_register_the_version_they_hold(world: dict) -> None:
    core = world["core"]
    client = redis.Redis.from_url(core.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{core.redis_namespace}:searchers:*"))
        assert len(keys) == 1
        version = world["client"].get("/v1/index").json()["version"]
        assert client.get(keys[0]).decode() == str(version) and 0 < client.pttl(keys[0]) <= 20_000
    finally:
        client.close()


@pytest.fixture
def quality(world: dict, pg_url: str) -> Iterator[dict]:
    """Quality on some of the Mall's windows, NULL again afterwards: by window id, a cloudy one,
    a mostly no-data one, a clear one, and three with identical pixels (one fingerprint)."""
    ids = [int(i) for i in world["area"].ids[:6]]
    values = {
        ids[0]: (0.8, 1.0, None),  # cloudy
        ids[1]: (0.0, 0.5, None),  # half no-data
        ids[2]: (0.1, 0.95, None),  # clear
        ids[3]: (0.0, 1.0, 42),
        ids[4]: (0.0, 1.0, 42),
        ids[5]: (0.0, 1.0, 42),
    }
    with window_quality(sync_engine(pg_url), values):
        yield {"ids": ids}


def _similar(world: dict, wid: int, **params) -> dict:
    resp = get(world, f"/v1/windows/{wid}/similar", k=200, merge=False, address=False, **params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_quality_filters_hide_cloudy_and_no_data_windows(world: dict, quality: dict) -> None:
    cloudy, nodata, clear, *_ = quality["ids"]
    n = len(world["area"].ids)

    def shown(body: dict) -> dict[int, dict]:
        return {f["properties"]["window_id"]: f["properties"] for f in body["features"]}

    # Find similar to the clear window with the defaults: the cloudy and the half-empty windows
    # are gone, every unknown (NULL) window passes, the clear one reports its quality.
    default = _similar(world, clear)
    hits = shown(default)
    assert cloudy not in hits and nodata not in hits
    assert hits[clear]["cloud_score"] == 0.1 and hits[clear]["valid_fraction"] == 0.95
    assert default["filter"]["max_cloud"] < 0.8 and default["filter"]["min_valid"] == 0.9
    # max_cloud=1 and min_valid=0 show everything (collapse off: every single window).
    everything = shown(_similar(world, clear, max_cloud=1, min_valid=0, collapse=False))
    assert {cloudy, nodata, clear} <= everything.keys() and len(everything) == min(n, 200)
    assert everything[cloudy]["cloud_score"] == 0.8 and everything[nodata]["valid_fraction"] == 0.5
    # Each filter on its own, inclusive at the boundary; POST and image search take them too.
    assert cloudy in shown(_similar(world, clear, max_cloud=0.8))
    assert cloudy not in shown(_similar(world, clear, max_cloud=0.79))
    assert nodata in shown(_similar(world, clear, min_valid=0.5, max_cloud=1))
    body = (
        world["client"]
        .post("/v1/search", json={"window_id": nodata, "k": 200, "merge": False, "min_valid": 0.6})
        .json()
    )
    assert nodata not in shown(body)
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 120, 120)).save(png, format="PNG")
    resp = world["client"].post(
        "/v1/search/image",
        params={"k": 200, "merge": "false", "max_cloud": 0.5, "address": "false"},
        files={"file": ("grey.png", png.getvalue(), "image/png")},
    )
    assert resp.status_code == 200, resp.text
    assert cloudy not in shown(resp.json()) and resp.json()["filter"]["max_cloud"] == 0.5


def test_identical_windows_collapse_into_one_result(world: dict, quality: dict) -> None:
    *_, a, b, c = quality["ids"]
    body = _similar(world, b)
    first = body["features"][0]["properties"]
    # The window itself comes first and stands for the windows with identical pixels.
    assert first["window_id"] == b and first["identical"] == 2 and sorted(first["identical_ids"]) == [a, c]
    ids = [f["properties"]["window_id"] for f in body["features"]]
    assert a not in ids and c not in ids and body["identical"] == 2
    text_hits = get(world, "/v1/search", q="a parking lot", k=200, merge=False, address=False).json()
    found = [f["properties"] for f in text_hits["features"] if f["properties"]["window_id"] in (a, b, c)]
    assert len(found) == 1 and found[0]["identical"] == 2  # whichever ranks first, once
    flat = _similar(world, b, collapse=False)
    assert {a, b, c} <= {f["properties"]["window_id"] for f in flat["features"]}
    assert "identical" not in flat["features"][0]["properties"] and flat["identical"] == 0
    # collapse is part of the ranking: a cursor does not cross to the other setting.
    first_page = get(world, "/v1/search", q="roofs", k=3).json()
    other = get(world, "/v1/search", q="roofs", k=3, collapse=False, cursor=first_page["next_cursor"])
    assert other.status_code == 400 and "another query" in other.json()["error"]["message"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"max_cloud": 1.5}, "max_cloud"),
        ({"max_cloud": -0.1}, "max_cloud"),
        ({"min_valid": 2}, "min_valid"),
        ({"min_valid": "lots"}, "min_valid"),
    ],
)
def test_quality_filters_outside_0_1_are_refused(world: dict, params: dict, fragment: str) -> None:
    resp = get(world, "/v1/search", q="roofs", **params)
    assert resp.status_code == 422, resp.text
    message = resp.json()["error"]["message"]
    assert message.startswith(fragment) and ("within 0..1" in message or "valid number" in message)
    body = world["client"].post("/v1/search", json={"q": "roofs", **params})
    assert body.status_code == 422 and fragment in body.json()["error"]["message"]


def test_jobs_report_windows_skipped_for_no_data(world: dict, pg_url: str) -> None:
    with sync_engine(pg_url).begin() as conn:
        job_id = make_job(conn, world["area"].area_id, state="done")
        conn.execute(text("UPDATE ingest_jobs SET windows_skipped_nodata = 37 WHERE id = :j"), {"j": job_id})
    try:
        assert get(world, f"/v1/jobs/{job_id}").json()["windows_skipped_nodata"] == 37
        listed = next(a for a in get(world, "/v1/areas").json() if a["id"] == world["area"].area_id)
        assert listed["job"]["id"] == job_id and listed["job"]["windows_skipped_nodata"] == 37
    finally:
        with sync_engine(pg_url).begin() as conn:
            conn.execute(text("DELETE FROM ingest_jobs WHERE id = :j"), {"j": job_id})


def test_openapi_describes_the_quality_fields(world: dict) -> None:
    doc = world["client"].get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for model, fields in (
        ("SearchBody", ("max_cloud", "min_valid", "collapse")),
        ("HitProperties", ("cloud_score", "valid_fraction", "identical", "identical_ids")),
        ("FilterReport", ("max_cloud", "min_valid")),
        ("SearchResults", ("identical",)),
        ("Job", ("windows_skipped_nodata",)),
    ):
        for name in fields:
            assert schemas[model]["properties"][name].get("description"), f"{model}.{name}"
    params = {p["name"] for p in doc["paths"]["/v1/search"]["get"]["parameters"]}
    assert {"max_cloud", "min_valid", "collapse"} <= params
