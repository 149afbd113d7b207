"""Projects, labels and refine over HTTP (in-process, with the real embedder app on the tiny
CLIP): create/read/update/delete, label rules and their 4xx, and refine's ranking checked
against brute force (numpy over the stored vectors of the project's areas). Index and rows come
from the indexer's own code, on real PostGIS and Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import mercantile
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_search.app import create_app
from cliprs_search.settings import SearchSettings
from cliprs_testing.loopback import serving
from cliprs_testing.synthetic import (
    SeededArea,
    clustered_unit_vectors,
    delete_seeded,
    seed_area,
)
from cliprs_tools import client as cli
from tests.support.search_app import core_for_test, index_seeded, search_api

# Three places of Virginia's Eastern Shore, one area each (A and B in projects, C outside them).
PLACES = {"A": (-75.38, 37.93), "B": (-75.62, 37.70), "C": (-75.86, 37.45)}


@pytest.fixture(scope="module")
def world(
    pg_url: str, redis_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    core = core_for_test(pg_url, redis_url, tmp_path_factory.mktemp("projects"), "projects")
    encoder = load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu"))
    areas: dict[str, SeededArea] = {}
    vectors: dict[str, np.ndarray] = {}
    try:
        for key, centre in PLACES.items():
            t = mercantile.tile(*centre, 16)
            tiles = [mercantile.Tile(t.x + dx, t.y + dy, 16) for dx in range(2) for dy in range(2)]
            areas[key] = seed_area(pg_url, tiles, name=f"projects {key}", source=f"projects-{key.lower()}")
        # One draw for all three areas: their windows share scene types, so one query ranks several.
        sizes = [len(a.ids) for a in areas.values()]
        drawn = np.split(clustered_unit_vectors(sum(sizes), 512, seed=10, group=8), np.cumsum(sizes)[:-1])
        for (key, area), v in zip(areas.items(), drawn, strict=True):
            index_seeded(core, area, v, encoder.info.loaded)
            vectors[key] = v.astype(np.float16).astype(np.float32)  # as the index stores them
        app, embedder = search_api(core, encoder)
        with TestClient(app) as client, TestClient(embedder) as embed:
            yield {
                "client": client,
                "embed": embed,
                "embedder": embedder,
                "core": core,
                "areas": areas,
                "vectors": vectors,
            }
    finally:
        delete_seeded(pg_url, [a.area_id for a in areas.values()])


def create(world: dict, name: str, keys: str, query: str | None = "boats near a pier") -> dict:
    resp = world["client"].post(
        "/v1/projects",
        json={"name": name, "query": query, "area_ids": [world["areas"][k].area_id for k in keys]},
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


def label(world: dict, project_id: int, window_id: int, positive: bool, **extra) -> httpx.Response:
    return world["client"].post(
        f"/v1/projects/{project_id}/labels", json={"window_id": window_id, "positive": positive, **extra}
    )


def error(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    return resp.json()["error"]["message"]


def text_vector(world: dict, q: str) -> np.ndarray:
    resp = world["embed"].post("/v1/embed/text", json={"texts": [q]})
    assert resp.status_code == 200, resp.text
    return np.asarray(resp.json()["vectors"][0], dtype=np.float64)


def brute_force(world: dict, keys: str, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(window ids, scores) of the areas' windows, best first."""
    ids = np.concatenate([world["areas"][k].ids for k in keys])
    scores = np.concatenate([world["vectors"][k] for k in keys]).astype(np.float64) @ query
    order = np.argsort(-scores, kind="stable")
    return ids[order], scores[order]


def assert_top(got: list[dict], ids: np.ndarray, scores: np.ndarray) -> None:
    """The hits are the brute-force best, in order, up to float rounding between near ties."""
    k = len(got)
    assert k > 0
    want = dict(zip(ids.tolist(), scores.tolist(), strict=True))
    got_scores = [f["properties"]["score"] for f in got]
    for f in got:
        assert f["properties"]["window_id"] in want, "a hit outside the project's areas"
        assert abs(f["properties"]["score"] - want[f["properties"]["window_id"]]) < 2e-3
    assert got_scores == sorted(got_scores, reverse=True)
    # Nothing left out scores clearly better than the last hit.
    left_out = set(ids.tolist()) - {f["properties"]["window_id"] for f in got}
    assert max(want[w] for w in left_out) <= got_scores[-1] + 2e-3
    # And the ranking is the brute force's wherever scores are apart.
    assert [f["properties"]["window_id"] for f in got][:3] == ids[:3].tolist()


# ----------------------------------------------------------------------------- projects


def test_create_read_update_delete(world: dict) -> None:
    client, areas = world["client"], world["areas"]
    project = create(world, "  Piers  ", "AB")
    assert project["name"] == "Piers" and project["query"] == "boats near a pier"
    assert project["area_ids"] == sorted([areas["A"].area_id, areas["B"].area_id])
    assert project["labels"] == {"positive": 0, "negative": 0} and project["runs"] == []
    pid = project["id"]
    listed = client.get("/v1/projects").json()
    assert pid in [p["id"] for p in listed]
    assert "runs" not in next(p for p in listed if p["id"] == pid)

    patched = client.patch(f"/v1/projects/{pid}", json={"name": "Jetties", "area_ids": [areas["C"].area_id]})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["name"] == "Jetties" and body["area_ids"] == [areas["C"].area_id]
    assert body["query"] == "boats near a pier"  # not given: unchanged
    assert body["updated_at"] > project["updated_at"]
    cleared = client.patch(f"/v1/projects/{pid}", json={"query": None}).json()
    assert cleared["query"] is None and cleared["name"] == "Jetties"
    assert client.get(f"/v1/projects/{pid}").json()["query"] is None

    deleted = client.delete(f"/v1/projects/{pid}")
    assert deleted.status_code == 200 and deleted.json()["id"] == pid
    assert "no project" in error(client.get(f"/v1/projects/{pid}"), 404)
    error(client.delete(f"/v1/projects/{pid}"), 404)
    error(client.patch(f"/v1/projects/{pid}", json={"name": "x"}), 404)


def test_bad_projects_get_a_clear_4xx(world: dict) -> None:
    client, a = world["client"], world["areas"]["A"].area_id
    assert "needs a name" in error(client.post("/v1/projects", json={"name": "   ", "area_ids": [a]}), 400)
    missing = error(client.post("/v1/projects", json={"name": "x", "area_ids": [a, 99999998, 99999999]}), 404)
    assert "99999998, 99999999" in missing and "GET /v1/areas" in missing
    assert "filler" in error(
        client.post("/v1/projects", json={"name": "x", "query": "the", "area_ids": [a]}), 400
    )
    error(client.post("/v1/projects", json={"area_ids": [a]}), 422)  # no name at all
    pid = create(world, "bad updates", "A")["id"]
    assert "area_ids cannot be null" in error(
        client.patch(f"/v1/projects/{pid}", json={"area_ids": None}), 400
    )
    assert "99999999" in error(client.patch(f"/v1/projects/{pid}", json={"area_ids": [99999999]}), 404)
    assert client.get(f"/v1/projects/{pid}").json()["area_ids"] == [a]  # a refused update changes nothing
    client.delete(f"/v1/projects/{pid}")


# ----------------------------------------------------------------------------- labels


def test_labels_add_flip_list_and_remove(world: dict) -> None:
    client, areas = world["client"], world["areas"]
    pid = create(world, "labels", "AB")["id"]
    w_a, w_b = int(areas["A"].ids[3]), int(areas["B"].ids[7])
    added = label(world, pid, w_a, True, by="analyst 1")
    assert added.status_code == 201, added.text
    got = added.json()
    assert got["window_id"] == w_a and got["positive"] is True and got["created_by"] == "analyst 1"
    box = areas["A"].boxes[3]
    assert box[0] <= got["center"][0] <= box[2] and box[1] <= got["center"][1] <= box[3]
    assert got["footprint"]["type"] == "Polygon" and got["z"] == 16
    assert label(world, pid, w_b, False).status_code == 201
    assert client.get(f"/v1/projects/{pid}").json()["labels"] == {"positive": 1, "negative": 1}

    flipped = label(world, pid, w_a, False)  # relabelling replaces the label
    assert flipped.status_code == 201 and flipped.json()["positive"] is False
    listed = client.get(f"/v1/projects/{pid}/labels").json()
    assert [(x["window_id"], x["positive"]) for x in listed] == [(w_b, False), (w_a, False)]
    assert client.get(f"/v1/projects/{pid}").json()["labels"] == {"positive": 0, "negative": 2}
    bare = client.get(f"/v1/projects/{pid}/labels", params={"footprint": "false"}).json()
    assert all("footprint" not in x for x in bare)

    removed = client.delete(f"/v1/projects/{pid}/labels/{w_a}")
    assert removed.status_code == 200 and removed.json()["window_id"] == w_a
    assert "has no label" in error(client.delete(f"/v1/projects/{pid}/labels/{w_a}"), 404)
    assert [x["window_id"] for x in client.get(f"/v1/projects/{pid}/labels").json()] == [w_b]
    client.delete(f"/v1/projects/{pid}")


def test_bad_labels_get_a_clear_4xx(world: dict) -> None:
    client, areas = world["client"], world["areas"]
    pid = create(world, "label rules", "A")["id"]
    other = create(world, "another project", "C")["id"]  # C is another project's area
    w_c = int(areas["C"].ids[0])
    assert label(world, other, w_c, True).status_code == 201
    outside = error(label(world, pid, w_c, True), 400)
    assert f"lies in areas {areas['C'].area_id}" in outside and str(areas["A"].area_id) in outside
    assert "PATCH" in outside
    assert "no window" in error(label(world, pid, 4096 * 10**9 + 5, True), 404)
    assert "no project" in error(label(world, 99999999, w_c, True), 404)
    error(client.get("/v1/projects/99999999/labels"), 404)
    error(client.post(f"/v1/projects/{pid}/labels", json={"window_id": w_c}), 422)  # positive missing
    bare = create(world, "no areas", "")["id"]
    assert "has no areas" in error(label(world, bare, w_c, True), 400)
    assert client.get(f"/v1/projects/{pid}").json()["labels"] == {"positive": 0, "negative": 0}
    for p in (pid, other, bare):
        client.delete(f"/v1/projects/{p}")


# ----------------------------------------------------------------------------- refine


def test_refine_without_labels_is_the_text_search_of_the_project_areas(world: dict) -> None:
    client, a = world["client"], world["areas"]["A"]
    pid = create(world, "text only", "A", query="a marina with boats")["id"]
    refined = client.post(f"/v1/projects/{pid}/refine", json={"k": 15, "merge": False})
    assert refined.status_code == 200, refined.text
    body = refined.json()
    searched = client.get(
        "/v1/search", params={"q": "a marina with boats", "k": 15, "merge": False, "area_id": a.area_id}
    )
    ids = [f["properties"]["window_id"] for f in body["features"]]
    assert ids == [f["properties"]["window_id"] for f in searched.json()["features"]]
    assert body["query"]["q"] == "a marina with boats" and body["query"]["positives"] == 0
    assert_top(body["features"], *brute_force(world, "A", text_vector(world, "a marina with boats")))
    # q overrides the project's text for one request.
    other = client.post(f"/v1/projects/{pid}/refine", json={"k": 5, "merge": False, "q": "farmland"}).json()
    assert other["query"]["q"] == "farmland"
    assert_top(other["features"], *brute_force(world, "A", text_vector(world, "farmland")))
    client.delete(f"/v1/projects/{pid}")


def test_refine_with_labels_ranks_by_the_rocchio_query_over_every_project_area(world: dict) -> None:
    client, areas, vectors = world["client"], world["areas"], world["vectors"]
    pid = create(world, "rocchio", "AB", query="boats near a pier")["id"]
    pos, neg = [("A", 5), ("B", 11), ("B", 30)], [("B", 60), ("A", 90)]
    for key, i in pos:
        assert label(world, pid, int(areas[key].ids[i]), True).status_code == 201
    for key, i in neg:
        assert label(world, pid, int(areas[key].ids[i]), False).status_code == 201
    mean_pos = np.mean([vectors[k][i] for k, i in pos], axis=0).astype(np.float64)
    mean_neg = np.mean([vectors[k][i] for k, i in neg], axis=0).astype(np.float64)

    for weights in ({}, {"a": 0.0, "b": 1.0, "c": 0.5}):
        a, b, c = weights.get("a", 1.0), weights.get("b", 0.75), weights.get("c", 0.25)
        q = a * text_vector(world, "boats near a pier") + b * mean_pos - c * mean_neg
        q /= np.linalg.norm(q)
        resp = client.post(f"/v1/projects/{pid}/refine", json={"k": 25, "merge": False, **weights})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["query"]["positives"] == 3 and body["query"]["negatives"] == 2
        assert body["query"]["weights"] == {"a": a, "b": b, "c": c}
        ids, scores = brute_force(world, "AB", q)
        assert set(ids[:25].tolist()) & set(areas["B"].ids.tolist())  # the test's premise: B ranks too
        assert_top(body["features"], ids, scores)
        hit_areas = {
            k for f in body["features"] for k in "AB" if f["properties"]["window_id"] in areas[k].ids
        }
        assert hit_areas == {"A", "B"}  # both areas searched, C never

    # area_id narrows to one of the project's areas.
    only_b = client.post(
        f"/v1/projects/{pid}/refine", json={"k": 10, "merge": False, "area_id": areas["B"].area_id}
    )
    assert all(f["properties"]["window_id"] in areas["B"].ids for f in only_b.json()["features"])

    # A cursor belongs to the labels it was made with: a new label makes it stale.
    first = client.post(f"/v1/projects/{pid}/refine", json={"k": 5, "merge": False}).json()
    second = client.post(
        f"/v1/projects/{pid}/refine", json={"k": 5, "merge": False, "cursor": first["next_cursor"]}
    )
    assert second.status_code == 200 and second.json()["features"][0]["properties"]["rank"] == 6
    assert label(world, pid, int(areas["A"].ids[70]), True).status_code == 201
    stale = client.post(
        f"/v1/projects/{pid}/refine", json={"k": 5, "merge": False, "cursor": first["next_cursor"]}
    )
    assert stale.status_code == 400
    client.delete(f"/v1/projects/{pid}")


def test_bad_refines_get_a_clear_4xx(world: dict) -> None:
    client, areas = world["client"], world["areas"]
    pid = create(world, "refine rules", "A", query=None)["id"]
    assert "something to look for" in error(client.post(f"/v1/projects/{pid}/refine", json={}), 400)
    assert (
        label(world, pid, int(areas["A"].ids[2]), False).status_code == 201
    )  # negatives alone: still nothing
    assert "something to look for" in error(client.post(f"/v1/projects/{pid}/refine", json={}), 400)
    not_ours = error(
        client.post(f"/v1/projects/{pid}/refine", json={"q": "roofs", "area_id": areas["C"].area_id}), 400
    )
    assert "not one of the project's areas" in not_ours
    error(client.post(f"/v1/projects/{pid}/refine", json={"q": "roofs", "b": -1}), 422)
    bare = create(world, "refine without areas", "")["id"]
    assert "no areas" in error(client.post(f"/v1/projects/{bare}/refine", json={}), 400)
    error(client.post("/v1/projects/99999999/refine", json={"q": "roofs"}), 404)
    for p in (pid, bare):
        client.delete(f"/v1/projects/{p}")


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def live_api(world: dict) -> Iterator[str]:
    """The search-api served over real HTTP (uvicorn on a free loopback port, a second app of
    its own: an app's engine belongs to one event loop)."""
    app = create_app(
        world["core"],
        SearchSettings(embedder_url="http://embedder", tiler_public_url="http://tiler.test"),
        embedder_transport=httpx.ASGITransport(app=world["embedder"]),
    )
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


def test_the_cli_drives_search_projects_labels_and_refine(
    world: dict, live_api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    areas = world["areas"]
    a, b = areas["A"].area_id, areas["B"].area_id

    def run(*args: object) -> tuple[int, str, str]:
        rc = cli.main(["--api", live_api, *map(str, args)])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    rc, out, _ = run("search", "boats near a pier", "-k", 3, "--area-id", a)
    assert rc == 0 and out.startswith("3 hits")
    hit_ids = [int(line.split("window ")[1].split()[0]) for line in out.splitlines()[1:4]]
    assert all(w in areas["A"].ids for w in hit_ids)

    rc, out, _ = run(
        "--json",
        "projects",
        "create",
        "--name",
        "from the shell",
        "--query",
        "a marina",
        "--area-ids",
        f"{a},{b}",
    )
    assert rc == 0
    project = json.loads(out)
    pid = project["id"]
    assert project["area_ids"] == sorted([a, b]) and project["query"] == "a marina"

    w_pos, w_neg = int(areas["A"].ids[4]), int(areas["B"].ids[9])
    assert run("labels", "add", "--project", pid, "--window", w_pos, "--by", "cli")[:2] == (
        0,
        f"positive: window {w_pos}\n",
    )
    assert run("labels", "add", "--project", pid, "--window", w_neg, "--negative")[:2] == (
        0,
        f"negative: window {w_neg}\n",
    )
    rc, out, _ = run("--json", "labels", "list", "--project", pid)
    assert rc == 0 and [(x["window_id"], x["positive"]) for x in json.loads(out)] == [
        (w_pos, True),
        (w_neg, False),
    ]
    rc, out, _ = run("projects", "show", pid)
    assert rc == 0 and "labels +1 -1" in out and "from the shell" in out

    rc, out, _ = run("refine", "--project", pid, "-k", 4)
    assert rc == 0 and out.startswith("4 hits")
    refined = world["client"].post(f"/v1/projects/{pid}/refine", json={"k": 4}).json()
    assert [f"window {f['properties']['window_id']} " in out for f in refined["features"]] == [True] * 4

    # A refused request: the API's message on one line, exit status 2; nothing changed.
    rc, _, err = run("labels", "add", "--project", pid, "--window", int(areas["C"].ids[0]))
    assert rc == 2 and "not in the project's areas" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run("projects", "update", pid, "--area-ids", "99999999")
    assert rc == 2 and "no area with id 99999999" in err

    rc, out, _ = run("--json", "projects", "update", pid, "--name", "renamed", "--clear-query")
    assert rc == 0 and json.loads(out)["name"] == "renamed" and json.loads(out)["query"] is None
    assert run("labels", "remove", "--project", pid, "--window", w_neg)[0] == 0
    rc, out, _ = run("projects", "list")
    assert rc == 0 and f"project {pid}: renamed" in out and "labels +1 -0" in out
    assert run("projects", "delete", pid)[:2] == (0, f"deleted project {pid} (renamed)\n")
    rc, _, err = run("projects", "show", pid)
    assert rc == 2 and f"no project {pid}" in err
