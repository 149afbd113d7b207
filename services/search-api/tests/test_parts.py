"""The search-api's plain parts: query checks, merging, cursors, confidence, zero-shot ranking,
heat-map grids and reverse geocoding."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from cliprs.errors import InvalidInput, TooLarge
from cliprs_search.filters import parse_polygon
from cliprs_search.geocode import NominatimGeocoder, OfflineGeocoder, bearing, haversine_km
from cliprs_search.ranking import cursor as cursors
from cliprs_search.ranking.confidence import assess
from cliprs_search.ranking.merge import merge_overlapping
from cliprs_search.service.shared import hit_feature, validate_query
from cliprs_search.zeroshot import DEFAULT_LABELS, heat_grid, prompts_for, rank_labels

# ----------------------------------------------------------------------------- queries


@pytest.mark.parametrize(
    ("q", "fragment"),
    [
        ("", "empty"),
        ("  \t ", "empty"),
        ("?!# ... ---", "no letters or digits"),
        ("the of and", "only filler words"),
        ("Show me the", "only filler words"),
    ],
)
def test_meaningless_queries_are_refused(q: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        validate_query(q, 100)


def test_queries_with_meaning_pass_and_long_ones_hit_the_limit() -> None:
    assert validate_query("  boats near a pier ", 100) == "boats near a pier"
    assert validate_query("the airport", 100) == "the airport"
    assert validate_query("école", 100) == "école"
    with pytest.raises(TooLarge, match="limit is 10"):
        validate_query("x" * 11, 10)


# ----------------------------------------------------------------------------- merging


def test_overlapping_windows_merge_into_the_best() -> None:
    boxes = np.array(
        [
            [0.0, 0.0, 1.0, 1.0],  # best
            [0.25, 0.0, 1.25, 1.0],  # shifted by a quarter: same object
            [0.0, 0.0, 0.5, 0.5],  # a half-scale window inside the best: same object
            [3.0, 3.0, 4.0, 4.0],  # elsewhere
            [0.9, 0.9, 1.9, 1.9],  # touches the best only at a corner (1 %)
            [-2.0, -2.0, 2.0, 2.0],  # 16 x the area of the best: not merged into it
        ]
    )
    groups = merge_overlapping(boxes, overlap=0.5, max_area_ratio=4.0)
    assert [(g.index, g.merged) for g in groups] == [(0, [1, 2]), (3, []), (4, []), (5, [])]
    assert len(merge_overlapping(boxes, limit=2)) == 2
    assert merge_overlapping(np.empty((0, 4))) == []


# ----------------------------------------------------------------------------- cursors


def test_cursor_round_trip_and_refusals() -> None:
    fp = cursors.fingerprint({"q": "pier", "filter": {"area": 1}})
    assert fp == cursors.fingerprint({"filter": {"area": 1}, "q": "pier"})  # key order is irrelevant
    token = cursors.encode(cursors.Cursor(40, 7, fp))
    assert cursors.decode(token, fp) == cursors.Cursor(40, 7, fp)
    with pytest.raises(InvalidInput, match="another query"):
        cursors.decode(token, cursors.fingerprint({"q": "beach"}))
    for bad in ("", "not-base64!", cursors.encode(cursors.Cursor(-1, 1, fp))):
        with pytest.raises(InvalidInput, match="malformed"):
            cursors.decode(bad, fp)


# ----------------------------------------------------------------------------- polygons


def test_polygons_and_multipolygons_are_checked() -> None:
    square = [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]
    assert parse_polygon({"type": "Polygon", "coordinates": square}, 100).area == 1
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square}}
    assert parse_polygon(feature, 100).area == 1
    far = [[[5, 5], [6, 5], [6, 6], [5, 5]]]
    multi = parse_polygon({"type": "MultiPolygon", "coordinates": [square, far]}, 100)
    assert multi.geom_type == "MultiPolygon" and multi.area == 1.5
    with pytest.raises(InvalidInput, match="overlap"):
        parse_polygon({"type": "MultiPolygon", "coordinates": [square, square]}, 100)
    with pytest.raises(InvalidInput, match="not valid"):
        parse_polygon({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}, 100)
    with pytest.raises(InvalidInput, match=r"85\.05"):
        parse_polygon({"type": "Polygon", "coordinates": [[[0, 80], [1, 80], [1, 89], [0, 80]]]}, 100)
    with pytest.raises(InvalidInput, match="Polygon"):
        parse_polygon({"type": "Point", "coordinates": [0, 0]}, 100)
    with pytest.raises(TooLarge, match="vertices"):
        parse_polygon({"type": "Polygon", "coordinates": square}, 4)


# ----------------------------------------------------------------------------- confidence


def test_confidence_flags_queries_that_match_nothing_or_everything_alike() -> None:
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    sample = centre + rng.normal(scale=0.8, size=(500, 64))
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    hit = sample[0]  # a query that is an indexed vector: its best hit stands far out
    block, warning = assess(hit, 1.0, sample, None, 3.0, 5.0)
    assert block["level"] == "high" and block["z"] > 5 and warning is None
    # A text whose best cosine is tiny: nothing looks like it.
    block, warning = assess(hit, 0.05, sample, 0.15, 3.0, 5.0)
    assert block["level"] == "low" and "0.05" in warning
    # A direction the data does not vary along: the best hit is no better than an average one.
    flat = rng.normal(size=64)
    flat /= np.linalg.norm(flat)
    scores = sample @ flat
    block, warning = assess(flat, float(scores.mean() + 0.1 * scores.std()), sample, None, 3.0, 5.0)
    assert block["level"] == "low" and "standard deviations" in warning
    block, warning = assess(hit, None, sample, 0.15, 3.0, 5.0)
    assert block["level"] == "none" and "nothing matched" in warning


# ----------------------------------------------------------------------------- zero-shot and heat maps


def test_prompts_follow_the_template_and_the_limits() -> None:
    labels, prompts = prompts_for([" beach ", "port"], "An aerial photograph of {label}", 10, 50)
    assert labels == ["beach", "port"]
    assert prompts == ["An aerial photograph of beach", "An aerial photograph of port"]
    assert prompts_for(["a {x}", "b"], "{label}", 10, 50)[1] == ["a {x}", "b"]  # braces in labels are text
    assert len(DEFAULT_LABELS) == 30
    for labels, template, match in (
        (["beach"], "{label}", "at least two"),
        (["a", "b"], "no placeholder", "{label}"),
        (["a", "a"], "{label}", "repeat"),
        (["a", ""], "{label}", "empty"),
    ):
        with pytest.raises(InvalidInput, match=match):
            prompts_for(labels, template, 10, 50)
    with pytest.raises(TooLarge):
        prompts_for(["a", "b", "c"], "{label}", 2, 50)


def test_rank_labels_orders_by_cosine_with_softmax_probabilities() -> None:
    image = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    texts = np.array([[0.0, 1.0, 0.0], [0.8, 0.6, 0.0], [0.6, 0.8, 0.0]], dtype=np.float32)
    ranked = rank_labels(image, texts, ["x", "y", "z"], ["px", "py", "pz"], 100.0)
    assert [r["label"] for r in ranked] == ["y", "z", "x"]
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    assert sum(r["probability"] for r in ranked) == pytest.approx(1.0, abs=1e-5)
    assert ranked[0]["probability"] > 0.99  # 0.2 apart in cosine is decisive at logit scale 100


def test_heat_grid_averages_the_windows_covering_each_cell() -> None:
    boxes = np.array([[0, 0, 256, 256], [0, 0, 128, 128], [128, 128, 256, 256]])
    grid = heat_grid(boxes, np.array([0.2, 0.8, 0.4]), 256, 2)
    assert grid == [[pytest.approx(0.5), pytest.approx(0.2)], [pytest.approx(0.2), pytest.approx(0.3)]]
    assert heat_grid(np.array([[0, 0, 128, 128]]), np.array([1.0]), 256, 2)[1][1] is None


# ----------------------------------------------------------------------------- reverse geocoding


@pytest.fixture(scope="module")
def offline() -> OfflineGeocoder:
    return OfflineGeocoder(max_km=100)


def test_offline_geocoder_names_the_nearest_place(offline: OfflineGeocoder) -> None:
    arlington, onancock, ocean = offline.nearest([(-77.104, 38.881), (-75.735, 37.725), (-40.0, 30.0)])
    assert (arlington.name, arlington.admin1, arlington.country) == ("Arlington", "Virginia", "US")
    assert arlington.distance_km < 1 and arlington.label.startswith("in Arlington")
    assert onancock.name == "Onancock" and onancock.bearing == "NE"
    assert onancock.label == f"{onancock.distance_km:.1f} km NE of Onancock, Virginia, US"
    assert ocean is None  # mid-Atlantic: no known place within 100 km


def test_distance_and_bearing() -> None:
    assert haversine_km(0, 0, 1, 0) == pytest.approx(111.195, rel=1e-3)
    assert bearing(0, 0, 0, 1) == "N" and bearing(0, 0, 1, 1) == "NE" and bearing(0, 0, -1, 0) == "W"


async def test_nominatim_geocoder_parses_answers_and_falls_back_offline(offline: OfflineGeocoder) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(dict(request.url.params))
        if float(request.url.params["lon"]) > 0:
            return httpx.Response(500)
        return httpx.Response(
            200,
            json={
                "name": "Pentagon",
                "lat": "38.8719",
                "lon": "-77.0563",
                "address": {"state": "Virginia", "county": "Arlington County", "country_code": "us"},
            },
        )

    geocoder = NominatimGeocoder(
        "https://nominatim.test", "cliprs-test", offline, rate_per_s=0, transport=httpx.MockTransport(handler)
    )
    try:
        pentagon, fallback = await geocoder.reverse([(-77.056, 38.871), (2.35, 48.85)])
        assert (pentagon.name, pentagon.admin2, pentagon.country, pentagon.source) == (
            "Pentagon", "Arlington County", "US", "nominatim"
        )  # fmt: skip
        assert fallback.source == "geonames" and fallback.name == "Paris"
        again = await geocoder.reverse([(-77.056, 38.871)])  # cached: no second request
        assert again[0] == pentagon and len(calls) == 2
        assert calls[0]["format"] == "jsonv2"
    finally:
        await geocoder.aclose()


# ----------------------------------------------------------------------------- hit features


def test_hit_features_leave_out_properties_that_do_not_apply() -> None:
    row = {
        "id": 5, "z": 16, "scale": 0.5, "source": "demo", "tz": 16, "tx": 2, "ty": 3, "lon": 1.123456789,
        "lat": 2.0, "px_x0": 0, "px_y0": 0, "px_x1": 128, "px_y1": 128,
        "footprint": '{"type": "Polygon", "coordinates": [[[1, 2], [2, 2], [2, 3], [1, 2]]]}',
    }  # fmt: skip
    plain = hit_feature(row, 0.1234567, 1, "http://tiler.test/").model_dump(mode="json")
    assert plain["id"] == 5 and plain["geometry"]["type"] == "Polygon"
    props = plain["properties"]
    assert props["center"] == [1.1234568, 2.0] and props["score"] == 0.123457
    assert props["image_url"] == "http://tiler.test/windows/5.png"
    assert not {"merged", "merged_ids", "address", "place", "pixels"} & props.keys()
    merged = hit_feature(row, 0.1, 1, "http://tiler.test", merged=[], pixels=True).model_dump(mode="json")
    assert merged["properties"]["merged"] == 0 and merged["properties"]["merged_ids"] == []
    assert merged["properties"]["pixels"] == [0, 0, 128, 128]
