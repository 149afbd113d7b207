"""Stable pages over a compressed index: the pages of one query are slices of one ranking.

Four areas (about 40k windows) are indexed past a lowered flat limit into IVF-PQ shards with a
deliberately shallow codec (few lists probed, few candidates re-ranked), where recomputing each
page from scratch at a growing depth repeats and skips hits. Ten pages of 20 through the API must
show no window twice and the same hits as one page of 200 of the same query, with and without a
filter; and refine searches with the text effort whenever its text counts.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import mercantile
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text

from cliprs import query_sample
from cliprs.db.engine import sync_engine
from cliprs.errors import InvalidInput
from cliprs_index.shardset import Probe
from cliprs_indexer.build import collect_area_vectors, publish_area, sampled_text_queries
from cliprs_indexer.settings import IndexerSettings
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_search.index import IndexHolder
from cliprs_search.ranking import cursor as cursors
from cliprs_search.service.search import text_effort
from cliprs_search.settings import SearchSettings
from cliprs_testing.synthetic import ClusteredStream, SeededArea, delete_seeded, seed_area, write_area_chunks
from tests.support.search_app import core_for_test, search_api

# Reykjavik: far from every other test's rows.
ORIGIN = (-21.94, 64.14)
BLOCK = 20  # zoom-16 tiles per area side: 400 tiles, about 10k windows per area
PAGES, K = 10, 20
IDENTICAL = 1_500  # groups of windows with identical pixels
# Text queries re-rank twice their tuned depth here, so that their effort differs from an image
# query's even where the shallow tuning gives both the same probe.
SETTINGS = {"text_rerank_scale": 2.0}


@pytest.fixture(scope="module")
def world(
    pg_url: str, redis_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    core = core_for_test(pg_url, redis_url, tmp_path_factory.mktemp("pages"), "pages")
    encoder = load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu"))
    # A shallow codec (the nprobe 4, k_factor 2 regime): approximate candidates, exact
    # re-rank of few of them, so the depth a page searches at changes what it finds.
    indexer = IndexerSettings(
        flat_max_vectors=5_000,
        shard_max_vectors=12_000,
        shard_min_vectors=2_000,
        planned_vectors=50_000,
        k_factor=2,
        recall_target=0.5,
        recall_margin=0.0,
        device="cpu",
    )
    t = mercantile.tile(*ORIGIN, 16)
    areas: list[SeededArea] = []
    try:
        for i in range(2):
            for j in range(2):
                x, y = t.x + (BLOCK + 2) * i, t.y + (BLOCK + 2) * j
                tiles = [mercantile.Tile(x + dx, y + dy, 16) for dx in range(BLOCK) for dy in range(BLOCK)]
                areas.append(seed_area(pg_url, tiles, name=f"pages-{i}-{j}", source="pages"))
        with sync_engine(pg_url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE windows"))
        n = sum(len(a.ids) for a in areas)
        stream = ClusteredStream(encoder.info.dim, seed=5, group=13, planned=n)
        vectors, _ = stream.batch(n)
        # Groups of 4 windows with identical pixels (one fingerprint, one vector): collapsed.
        ids = np.concatenate([a.ids for a in areas])
        rows = np.random.default_rng(4).choice(n, (IDENTICAL, 4), replace=False)
        vectors[rows] = vectors[rows[:, :1]]
        with sync_engine(pg_url).begin() as conn:
            conn.execute(
                text("UPDATE windows SET fingerprint = :f WHERE id = :w"),
                [{"f": 990_000 + g, "w": int(ids[r])} for g, group in enumerate(rows) for r in group],
            )
        start = 0
        for area in areas:
            write_area_chunks(
                core.vectors_dir, area, vectors[start : start + len(area.ids)], encoder.info.loaded
            )
            start += len(area.ids)
        for area in areas:
            publish_area(core, area.area_id, collect_area_vectors(core, area.area_id), indexer)
        app, _ = search_api(core, encoder, **SETTINGS)
        boxes = np.concatenate([a.boxes for a in areas])
        with TestClient(app) as client:
            twins = ids[rows].tolist()
            yield {
                "client": client,
                "areas": areas,
                "n": n,
                "boxes": boxes,
                "core": core,
                "twins": twins,
                "encoder": encoder,
            }
    finally:
        delete_seeded(pg_url, [a.area_id for a in areas])


def walk(client: TestClient, body: dict, pages: int, k: int) -> list[dict]:
    """The hits of up to ``pages`` pages of ``k``, following next_cursor."""
    hits, cursor = [], None
    for _ in range(pages):
        resp = client.post("/v1/search", json={**body, "k": k, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        page = resp.json()
        hits += page["features"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return hits


def windows(hits: list[dict]) -> list[int]:
    """Every window a list of hits shows: each hit's own, merged and identical windows."""
    out = []
    for h in hits:
        p = h["properties"]
        out += [p["window_id"], *(p.get("merged_ids") or []), *(p.get("identical_ids") or [])]
    return out


def compare(world: dict, bodies: list[dict]) -> tuple[int, int, int]:
    """(windows shown twice, hits of the deep page the pages never showed, identical windows
    collapsed into the pages' hits) over ``bodies``."""
    repeats = skipped = identical = 0
    for body in bodies:
        paged = walk(world["client"], body, PAGES, K)
        deep = walk(world["client"], body, 1, PAGES * K)
        shown = windows(paged)
        repeats += len(shown) - len(set(shown))
        got = [h["properties"]["window_id"] for h in paged]
        want = [h["properties"]["window_id"] for h in deep]
        skipped += len(set(want) - set(got))
        identical += sum(h["properties"].get("identical") or 0 for h in paged)
        assert len(got) == len(want) == PAGES * K
    return repeats, skipped, identical


def queries(world: dict, count: int) -> list[int]:
    ids = np.concatenate([a.ids for a in world["areas"]])
    return np.random.default_rng(3).choice(ids, count, replace=False).tolist()


def test_the_index_is_compressed(world: dict) -> None:
    index = IndexHolder(world["core"].index_dir).load()
    assert index is not None and index.manifest.codec is not None
    assert index.total() == world["n"] > 35_000


def test_ten_pages_of_20_are_one_page_of_200(world: dict) -> None:
    bodies = [{"window_id": w} for w in queries(world, 8)]
    # Find similar of a window with identical twins: it stands for them, on every page alike.
    bodies += [{"window_id": world["twins"][0][2]}, {"window_id": world["twins"][1][3], "merge": False}]
    bodies += [{"q": q} for q in ("boats near a pier", "a parking lot", "green fields", "a river")]
    repeats, skipped, identical = compare(world, bodies)
    assert (repeats, skipped) == (0, 0)
    assert identical > 0  # the collapse took part


def test_ten_filtered_pages_of_20_are_one_filtered_page_of_200(world: dict) -> None:
    b = world["boxes"]
    west, south, east, north = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    # Half the extent, across all four areas: a broad filter (over-fetched, not listed).
    bbox = f"{west},{south},{(west + east) / 2},{north}"
    bodies = [{"window_id": w, "bbox": bbox} for w in queries(world, 6)]
    bodies += [{"q": "boats near a pier", "bbox": bbox}, {"window_id": queries(world, 1)[0], "merge": False}]
    bodies += [{"window_id": queries(world, 2)[1], "zoom": [16], "bbox": bbox, "collapse": False}]
    repeats, skipped, identical = compare(world, bodies)
    assert (repeats, skipped) == (0, 0)
    assert identical > 0  # the collapse took part


def test_a_tampered_cursor_is_refused(world: dict) -> None:
    body = {"window_id": queries(world, 1)[0], "k": K}
    first = world["client"].post("/v1/search", json=body).json()
    token = first["next_cursor"]
    assert token
    for bad in (token[:-3], "x" + token, "bm90IGpzb24"):
        resp = world["client"].post("/v1/search", json={**body, "cursor": bad})
        assert resp.status_code == 400, resp.text
    other = world["client"].post(
        "/v1/search", json={**body, "window_id": queries(world, 2)[1], "cursor": token}
    )
    assert other.status_code == 400


def peek(token: str) -> dict:
    """What an (opaque) cursor carries."""
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def test_pages_carry_their_effort_and_depth(world: dict) -> None:
    """The first page fixes the effort (the text's for text) and the depth; later pages keep them."""
    index = IndexHolder(world["core"].index_dir).load()
    settings = SearchSettings(**SETTINGS)
    client = world["client"]
    first = client.post("/v1/search", json={"q": "boats near a pier", "k": K}).json()
    carried = peek(first["next_cursor"])
    probe = index.probe(text_effort(settings))
    assert carried["e"] == [probe.nprobe, probe.k_factor] != [index.probe().nprobe, index.probe().k_factor]
    second = client.post(
        "/v1/search", json={"q": "boats near a pier", "k": K, "cursor": first["next_cursor"]}
    )
    assert peek(second.json()["next_cursor"])["e"] == carried["e"]
    assert peek(second.json()["next_cursor"])["d"] == carried["d"]
    similar = client.post("/v1/search", json={"window_id": queries(world, 1)[0], "k": K}).json()
    assert peek(similar["next_cursor"])["e"] == [index.probe().nprobe, index.probe().k_factor]


def test_text_queries_are_kept_for_the_tuning_and_image_queries_are_not(world: dict) -> None:
    """The search-api keeps the vectors of recent text queries (cliprs.query_sample), which the
    indexer tunes the text probe on; a find-similar query is an image: not kept."""
    core, encoder, client = world["core"], world["encoder"], world["client"]
    model = encoder.info.loaded
    with redis.Redis.from_url(core.redis_url) as r:
        before = query_sample.size(r, core.redis_namespace, model)
        for q in ("a marina with boats", "a parking lot"):
            assert client.post("/v1/search", json={"q": q, "k": 5}).status_code == 200
        assert client.post("/v1/search", json={"window_id": queries(world, 1)[0], "k": 5}).status_code == 200
        assert query_sample.size(r, core.redis_namespace, model) == before + 2
        kept = query_sample.recent(r, core.redis_namespace, model, encoder.info.dim)
    want = encoder.embed_texts(["a parking lot", "a marina with boats"])
    assert np.allclose(kept[:2], want, atol=2e-3)  # newest first, float16 as stored
    assert sampled_text_queries(core, IndexHolder(core.index_dir).load().manifest) == len(kept)


def test_refine_searches_with_the_text_effort_whenever_the_text_counts(world: dict) -> None:
    """Labels do not turn the text's effort off: only a text weight of 0 does."""
    index = IndexHolder(world["core"].index_dir).load()
    text, image = index.probe(text_effort(SearchSettings(**SETTINGS))), index.probe()
    client = world["client"]
    resp = client.post(
        "/v1/projects",
        json={
            "name": "pages refine",
            "query": "boats near a pier",
            "area_ids": [a.area_id for a in world["areas"]],
        },
    )
    assert resp.status_code == 201, resp.text
    project = resp.json()["id"]
    try:
        for positive in (True, False):
            resp = client.post(
                f"/v1/projects/{project}/labels",
                json={"window_id": queries(world, 4)[2 + positive], "positive": positive},
            )
            assert resp.status_code == 201, resp.text
        for weights, want in (({}, text), ({"a": 0.5}, text), ({"a": 0.0}, image)):
            page = client.post(f"/v1/projects/{project}/refine", json={"k": K, **weights})
            assert page.status_code == 200, page.text
            assert peek(page.json()["next_cursor"])["e"] == [want.nprobe, want.k_factor], weights
    finally:
        client.delete(f"/v1/projects/{project}")


def test_cursors_carry_the_ranking_and_refuse_what_is_out_of_bounds() -> None:
    fp = cursors.fingerprint({"q": "pier"})
    cur = cursors.Cursor(40, 7, fp, depth=63, after=(0.7123456789012345, 991), probe=Probe(16, 4))
    assert cursors.decode(cursors.encode(cursor=cur), fp, 20_000) == cur  # the score exactly
    old = base64.urlsafe_b64encode(json.dumps({"o": 20, "v": 1, "f": fp}).encode()).decode()
    assert cursors.decode(old, fp) == cursors.Cursor(20, 1, fp)  # cursors of before still page

    def token(**change) -> str:
        data = {"o": 40, "v": 7, "f": fp, "d": 63, "a": [0.5, 991], "e": [16, 4], **change}
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    assert cursors.decode(token(), fp, 20_000).after == (0.5, 991)
    for bad in (
        {"d": 0},
        {"d": 20_001},
        {"d": "63"},
        {"a": [0.5]},
        {"a": ["0.5", 991]},
        {"a": [0.5, 9.5]},
        {"a": [True, 991]},
        {"e": [0, 4]},
        {"e": [16, 100_000]},
        {"e": [16]},
        {"o": -20},
    ):
        with pytest.raises(InvalidInput, match="malformed"):
            cursors.decode(token(**bad), fp, 20_000)
    with pytest.raises(InvalidInput, match="another query"):
        cursors.decode(token(), cursors.fingerprint({"q": "beach"}), 20_000)
