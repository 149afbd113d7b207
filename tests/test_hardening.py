"""Input hardening, tried as a new user would (in-process search-api on real PostGIS and Redis,
the real embedder app on the tiny CLIP): ids beyond 64 bits, URLs too long, control characters
in a query, and a filter naming an area that does not exist."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import mercantile
import pytest
from fastapi.testclient import TestClient

from cliprs.settings import CoreSettings
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_testing.synthetic import clustered_unit_vectors, delete_seeded, seed_area
from tests.support.search_app import core_for_test, index_seeded, search_api

CENTRE = (-77.036, 38.889)
BEYOND_INT64 = 2**63  # one past the largest 64-bit id
WAY_BEYOND = 10**30


@pytest.fixture(scope="module")
def world(
    pg_url: str, redis_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    core = core_for_test(pg_url, redis_url, tmp_path_factory.mktemp("data"), "hard")
    t = mercantile.tile(*CENTRE, 16)
    area = seed_area(pg_url, [t, mercantile.Tile(t.x + 1, t.y, 16)], name="hardening", source="mall")
    encoder = load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu"))
    index_seeded(core, area, clustered_unit_vectors(len(area.ids), 512, seed=5), encoder.info.loaded)
    app, _ = search_api(core, encoder)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield {"client": client, "area": area, "app": app}
    delete_seeded(pg_url, [area.area_id])


def assert_error_shape(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]


def _int_params(operation: dict, where: str) -> list[str]:
    return [
        p["name"]
        for p in operation.get("parameters", [])
        if p["in"] == where and p.get("schema", {}).get("type") == "integer"
    ]


def test_ids_beyond_64_bits_answer_4xx_on_every_route(world: dict) -> None:
    """Every route with an integer in its path or query, called with 2**63 and 10**30 there:
    a 4xx in the one error shape, never a 500."""
    client: TestClient = world["client"]
    spec = world["app"].openapi()
    tried = 0
    for template, methods in spec["paths"].items():
        for method, operation in methods.items():
            path_ints = _int_params(operation, "path")
            query_ints = [n for n in _int_params(operation, "query") if n not in ("k",)]
            if not path_ints and not query_ints:
                continue
            for big in (BEYOND_INT64, WAY_BEYOND):
                # Other path parameters get a plausible value; integers the huge one.
                path = re.sub(
                    r"\{(\w+)\}",
                    lambda m, b=big, ints=tuple(path_ints): str(b) if m.group(1) in ints else "mall",
                    template,
                )
                params = {name: str(big) for name in query_ints}
                if "q" in {p["name"] for p in operation.get("parameters", [])}:
                    params["q"] = "a parking lot"
                resp = client.request(
                    method.upper(), path, params=params, json={} if method != "get" else None
                )
                tried += 1
                assert 400 <= resp.status_code < 500, (
                    f"{method.upper()} {path} {params}: {resp.status_code} {resp.text}"
                )
                assert_error_shape(resp)
    assert tried >= 10  # the areas, jobs, windows, projects, runs ... routes


def test_search_filtered_by_an_id_beyond_64_bits_says_how_to_fix(world: dict) -> None:
    resp = world["client"].get("/v1/search", params={"q": "a parking lot", "area_id": BEYOND_INT64})
    assert resp.status_code == 422
    err = assert_error_shape(resp)
    assert err["code"] == "invalid_request" and "64-bit" in err["message"]


def test_a_url_too_long_answers_414_in_the_error_shape(world: dict) -> None:
    resp = world["client"].get("/v1/search", params={"q": "boats " * 3000})
    assert resp.status_code == 414
    err = assert_error_shape(resp)
    assert err["code"] == "too_large" and "POST /v1/search" in err["message"]
    assert resp.headers["x-request-id"]


@pytest.mark.parametrize("bad", ["\x00", "\x1b[31m", "\x07", "\x7f", "\x85"])
def test_control_characters_in_a_query_are_refused(world: dict, bad: str) -> None:
    resp = world["client"].get("/v1/search", params={"q": f"boats{bad} near a pier"})
    assert resp.status_code == 400
    err = assert_error_shape(resp)
    assert err["code"] == "invalid_input"
    assert f"U+{ord(bad[0]):04X}" in err["message"] and "position 6" in err["message"]
    # The same rule for the POST body.
    post = world["client"].post("/v1/search", json={"q": f"boats{bad} near a pier"})
    assert post.status_code == 400 and "control character" in assert_error_shape(post)["message"]


def test_tabs_and_line_breaks_are_read_as_spaces(world: dict) -> None:
    resp = world["client"].get("/v1/search", params={"q": "boats\tnear\r\na pier", "k": 3})
    assert resp.status_code == 200, resp.text
    assert resp.json()["query"] == "boats near  a pier"


def test_a_filter_naming_an_unknown_area_answers_404(world: dict) -> None:
    client: TestClient = world["client"]
    missing = world["area"].area_id + 1_000_000
    for resp in (
        client.get("/v1/search", params={"q": "a parking lot", "area_id": missing}),
        client.post("/v1/search", json={"q": "a parking lot", "area_id": missing}),
        client.get(f"/v1/windows/{int(world['area'].ids[0])}/similar", params={"area_id": missing}),
    ):
        assert resp.status_code == 404, resp.text
        err = assert_error_shape(resp)
        assert err["code"] == "not_found" and f"area {missing} does not exist" in err["message"]
    # The area that exists still answers.
    ok = client.get("/v1/search", params={"q": "a parking lot", "area_id": world["area"].area_id, "k": 2})
    assert ok.status_code == 200 and ok.json()["count"] == 2


def test_tiler_ids_beyond_64_bits_answer_4xx(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    from cliprs_tiler.app import create_app as create_tiler

    core = CoreSettings(database_url=pg_url, redis_url=redis_url, data_dir=tmp_path / "data")
    with TestClient(create_tiler(core), raise_server_exceptions=False) as client:
        for path in (
            f"/windows/{BEYOND_INT64}.png",
            f"/v1/jobs/{BEYOND_INT64}/progress",
            f"/windows/{WAY_BEYOND}.png",
        ):
            resp = client.get(path)
            assert 400 <= resp.status_code < 500, f"{path}: {resp.status_code} {resp.text}"
            assert_error_shape(resp)
