"""Geo filters, minimum score, merging and paging of the search pipeline, checked against brute
force (shapely over every window, numpy over every vector) on real PostGIS rows and an index
built by the indexer's own code."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import mercantile
import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings
from cliprs.tiles import BBox
from cliprs_indexer.build import collect_area_vectors, publish_area
from cliprs_search.filters import HitFilter
from cliprs_search.index import IndexHolder, LoadedIndex
from cliprs_search.ranking.merge import merge_overlapping
from cliprs_search.ranking.pipeline import SearchRequest, run_search
from cliprs_search.settings import SearchSettings
from cliprs_testing.factories import window_quality
from cliprs_testing.synthetic import (
    SeededArea,
    clustered_unit_vectors,
    delete_seeded,
    seed_area,
    write_area_chunks,
)

DIM = 64
MODEL = "test/filters"
# Sydney harbour: far from every other test's rows, so the filters only ever meet ours.
CENTRE = (151.21, -33.86)


@dataclass
class World:
    area: SeededArea
    vectors: np.ndarray  # as the index stores them (float16), in float32
    index: LoadedIndex
    footprints: list[Polygon]


def tiles_around(z: int, radius: int) -> list[mercantile.Tile]:
    t = mercantile.tile(*CENTRE, z)
    return [
        mercantile.Tile(t.x + dx, t.y + dy, z)
        for dx in range(-radius, radius)
        for dy in range(-radius, radius)
    ]


@pytest.fixture(scope="module")
def world(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """40 tiles at two zooms with clustered vectors, indexed exactly (flat shards)."""
    core = CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("filters") / "data",
        redis_namespace=f"filters-{uuid.uuid4().hex[:6]}",
    )
    area = seed_area(pg_url, tiles_around(15, 1) + tiles_around(16, 3), name="filters", source="filters")
    try:
        with sync_engine(pg_url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE windows"))
        vectors = clustered_unit_vectors(len(area.ids), DIM, seed=5, group=13)
        write_area_chunks(core.vectors_dir, area, vectors, MODEL)
        publish_area(core, area.area_id, collect_area_vectors(core, area.area_id))
        index = IndexHolder(core.index_dir).load()
        assert index is not None and index.total() == len(area.ids)
        stored = vectors.astype(np.float16).astype(np.float32)
        yield World(area, stored, index, [box(*b) for b in area.boxes])
    finally:
        delete_seeded(pg_url, [area.area_id])


def random_polygon(rng: np.random.Generator, extent: tuple[float, float, float, float]) -> Polygon:
    """A random star-shaped (hence simple) polygon inside ``extent``."""
    w, s, e, n = extent
    cx, cy = rng.uniform(w, e), rng.uniform(s, n)
    r_max = np.exp(rng.uniform(np.log(0.002), np.log(0.6))) * (e - w)  # sizes over decades
    m = int(rng.integers(4, 12))
    # One vertex per equal sector: sorted angles less than pi apart keep the polygon simple.
    angles = (np.arange(m) + rng.uniform(0.05, 0.95, m)) * 2 * math.pi / m
    radii = rng.uniform(0.3, 1.0, len(angles)) * r_max
    return Polygon(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles), strict=True))


def brute_force(
    world: World, query: np.ndarray, keep: np.ndarray, k: int, min_score: float = -1.0
) -> list[int]:
    scores = world.vectors @ query
    rows = np.flatnonzero(keep & (scores >= min_score))
    order = rows[np.argsort(-scores[rows], kind="stable")][:k]
    return world.area.ids[order].tolist()


def query_vector(world: World, rng: np.random.Generator) -> np.ndarray:
    q = world.vectors[rng.integers(len(world.vectors))] + rng.normal(0, 0.05, DIM).astype(np.float32)
    return (q / np.linalg.norm(q)).astype(np.float32)


def settings(**kw) -> SearchSettings:
    return SearchSettings(**{"overfetch": 3, **kw})


async def ids_of(
    world: World, pg_async_conn, q, flt: HitFilter, k: int, s: SearchSettings, **kw
) -> tuple[list[int], str]:
    page = await run_search(world.index, pg_async_conn, SearchRequest(q, k, flt=flt, merge=False, **kw), s)
    return [h.row["id"] for h in page.hits], page.strategy


def extent(world: World) -> tuple[float, float, float, float]:
    b = world.area.boxes
    return b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()


@pytest.mark.parametrize("strategy", ["selector", "overfetch", "auto"])
async def test_random_polygons_match_brute_force(world: World, pg_async_conn, strategy: str) -> None:
    rng = np.random.default_rng({"selector": 1, "overfetch": 2, "auto": 3}[strategy])
    s = settings(filter_strategy=strategy)
    seen = set()
    for i in range(12):
        poly = random_polygon(rng, extent(world))
        if i % 4 == 3:  # now and then two parts
            other = random_polygon(rng, extent(world))
            poly = MultiPolygon([poly, other]) if not poly.intersects(other) else poly
        zooms = [16] if i % 3 == 1 else None
        keep = np.array([poly.intersects(f) for f in world.footprints])
        if zooms:
            keep &= np.isin(world.area.zooms, zooms)
        q = query_vector(world, rng)
        k = int(rng.integers(1, 40))
        got, used = await ids_of(world, pg_async_conn, q, HitFilter(polygon=poly, zooms=zooms), k, s)
        assert got == brute_force(world, q, keep, k), f"polygon {i} ({keep.sum()} windows pass)"
        if strategy != "auto":
            assert used == strategy
        seen.add(used)
    if strategy == "auto":  # random sizes: both ways get used
        assert seen == {"selector", "overfetch"}


async def test_bbox_zoom_and_area_filters_match_brute_force(world: World, pg_async_conn) -> None:
    rng = np.random.default_rng(11)
    w, s_, e, n = extent(world)
    for strategy in ("selector", "overfetch"):
        s = settings(filter_strategy=strategy)
        for _ in range(5):
            x0, x1 = np.sort(rng.uniform(w, e, 2))
            y0, y1 = np.sort(rng.uniform(s_, n, 2))
            bb = BBox(x0, y0, x1, y1)
            keep = np.array([box(*bb.as_list()).intersects(f) for f in world.footprints])
            keep &= world.area.zooms == 15
            q = query_vector(world, rng)
            flt = HitFilter(area_id=world.area.area_id, zooms=[15], bbox=bb)
            got, _ = await ids_of(world, pg_async_conn, q, flt, 15, s)
            assert got == brute_force(world, q, keep, 15)


async def test_auto_strategy_follows_selectivity(world: World, pg_async_conn) -> None:
    q = query_vector(world, np.random.default_rng(4))
    s = settings()
    cx, cy = world.area.boxes[0, :2] + 1e-6  # a sliver at one window's corner: a handful pass
    tiny = box(cx, cy, cx + 1e-5, cy + 1e-5)
    _, used = await ids_of(world, pg_async_conn, q, HitFilter(polygon=tiny), 5, s)
    assert used == "selector"
    everything = box(*extent(world)).buffer(0.01)
    _, used = await ids_of(world, pg_async_conn, q, HitFilter(polygon=everything), 5, s)
    assert used == "overfetch"
    _, used = await ids_of(world, pg_async_conn, q, HitFilter(), 5, s)
    assert used == "index"


async def test_overfetch_switches_to_the_selector_when_candidates_run_out(
    world: World, pg_async_conn
) -> None:
    rng = np.random.default_rng(8)
    q = query_vector(world, rng)
    # A filter the over-fetch cannot satisfy within 40 candidates: zoom 15 windows in a corner.
    corner = box(*world.area.boxes[world.area.zooms == 15][0])
    keep = np.array([corner.intersects(f) for f in world.footprints]) & (world.area.zooms == 15)
    s = settings(filter_strategy="overfetch", max_candidates=40)
    got, used = await ids_of(world, pg_async_conn, q, HitFilter(polygon=corner, zooms=[15]), 10, s)
    assert got == brute_force(world, q, keep, 10)
    assert used == "selector"


async def test_min_score_keeps_only_better_hits(world: World, pg_async_conn) -> None:
    q = query_vector(world, np.random.default_rng(9))
    scores = np.sort(world.vectors @ q)[::-1]
    # Half way between the 30th and 31st best: float rounding cannot move a window across it.
    threshold = float(scores[29] + scores[30]) / 2
    keep = np.ones(len(world.footprints), dtype=bool)
    got, _ = await ids_of(world, pg_async_conn, q, HitFilter(), 100, settings(), min_score=threshold)
    assert got == brute_force(world, q, keep, 100, threshold)
    assert len(got) == 30


async def test_pages_concatenate_to_the_full_ranking(world: World, pg_async_conn) -> None:
    q = query_vector(world, np.random.default_rng(10))
    s = settings()
    poly = box(*extent(world)).buffer(-0.005)
    for merge in (False, True):
        whole = await run_search(
            world.index, pg_async_conn, SearchRequest(q, 60, flt=HitFilter(polygon=poly), merge=merge), s
        )
        paged, offset = [], 0
        while True:
            page = await run_search(
                world.index,
                pg_async_conn,
                SearchRequest(q, 7, offset, HitFilter(polygon=poly), merge=merge),
                s,
            )
            paged += [h.row["id"] for h in page.hits]
            offset += 7
            if not page.has_more or offset >= 60:
                break
        assert paged[:60] == [h.row["id"] for h in whole.hits][: len(paged)]
        assert len(paged) >= 56


async def test_merged_hits_do_not_overlap_and_account_for_every_window(world: World, pg_async_conn) -> None:
    q = query_vector(world, np.random.default_rng(12))
    s = settings()
    page = await run_search(world.index, pg_async_conn, SearchRequest(q, 20, merge=True), s)
    assert page.merged > 0  # overlapping windows of one place do score alike
    boxes = np.array([[h.row[c] for c in ("x0", "y0", "x1", "y1")] for h in page.hits])
    # No two returned hits would merge with each other...
    assert len(merge_overlapping(boxes, s.merge_overlap, s.merge_max_area_ratio)) == len(page.hits)
    scores = [h.score for h in page.hits]
    assert scores == sorted(scores, reverse=True)
    by_id = dict(zip(world.area.ids.tolist(), world.footprints, strict=True))
    for h in page.hits:
        kept = by_id[h.row["id"]]
        for wid in h.merged:  # ...and every merged window overlaps its hit enough, scoring lower
            other = by_id[wid]
            small = min(kept.area, other.area)
            assert kept.intersection(other).area >= s.merge_overlap * small - 1e-15
            assert float(world.vectors[world.area.ids == wid][0] @ q) <= h.score + 1e-6
    # Without merging the same ranking starts with the same best window.
    flat = await run_search(world.index, pg_async_conn, SearchRequest(q, 20, merge=False), s)
    assert flat.hits[0].row["id"] == page.hits[0].row["id"] and flat.merged == 0


async def test_a_page_the_filter_cannot_fill_says_so(world: World, pg_async_conn) -> None:
    q = query_vector(world, np.random.default_rng(8))
    # The filter of the selector fallback test, but too many matches to list: a page longer
    # than the passing windows among the best 40 stays short, and says why instead of
    # pretending that the results end there.
    corner = box(*world.area.boxes[world.area.zooms == 15][0])
    keep = np.array([corner.intersects(f) for f in world.footprints]) & (world.area.zooms == 15)
    in_top = int(keep[np.argsort(-(world.vectors @ q), kind="stable")[:40]].sum())
    k = in_top + 2
    assert keep.sum() > k
    s = settings(filter_strategy="overfetch", max_candidates=40, selector_max_ids=5)
    flt = HitFilter(polygon=corner, zooms=[15])
    page = await run_search(world.index, pg_async_conn, SearchRequest(q, k, flt=flt, merge=False), s)
    got = [h.row["id"] for h in page.hits]
    assert got == brute_force(world, q, keep, in_top)  # what it does answer is the true ranking's start
    assert not page.complete and not page.has_more
    assert "narrow the filter or raise max_candidates" in page.incomplete_reason
    assert page.describe()["complete"] is False
    if in_top:  # a page the candidates do fill is complete, and the ranking goes on
        full = await run_search(world.index, pg_async_conn, SearchRequest(q, in_top, flt=flt, merge=False), s)
        assert [h.row["id"] for h in full.hits] == got and full.complete and full.has_more


async def test_an_area_filter_over_its_own_shards_checks_no_rows(world: World, pg_async_conn) -> None:
    q = query_vector(world, np.random.default_rng(14))
    flt = HitFilter(area_id=world.area.area_id)
    page = await run_search(
        world.index, pg_async_conn, SearchRequest(q, 12, flt=flt, merge=False), settings()
    )
    keep = np.ones(len(world.footprints), dtype=bool)
    assert [h.row["id"] for h in page.hits] == brute_force(world, q, keep, 12)
    assert page.strategy == "index" and page.complete and page.has_more  # no other area shares them


async def test_disjoint_box_and_polygon_match_nothing(world: World, pg_async_conn) -> None:
    q = query_vector(world, np.random.default_rng(15))
    w, s_, e, n = extent(world)
    mid = (w + e) / 2
    flt = HitFilter(bbox=BBox(w, s_, mid - 0.001, n), polygon=box(mid + 0.001, s_, e, n))
    page = await run_search(world.index, pg_async_conn, SearchRequest(q, 5, flt=flt), settings())
    assert page.hits == [] and not page.has_more and page.complete


def test_random_polygons_are_valid() -> None:
    rng = np.random.default_rng(0)
    assert all(shapely.is_valid(random_polygon(rng, (0, 0, 1, 1))) for _ in range(200))


# ----------------------------------------------------------------------------- window quality


@dataclass
class Quality:
    cloud: np.ndarray  # per window of the world, NaN: NULL (unknown)
    valid: np.ndarray
    fingerprint: np.ndarray  # 0: NULL

    def keep(self, max_cloud: float, min_valid: float) -> np.ndarray:
        """The rule of `repository.filter_where`: unknown passes (the columns are real)."""
        cloud, valid = self.cloud.astype(np.float32), self.valid.astype(np.float32)
        return (np.isnan(cloud) | (cloud <= np.float32(max_cloud))) & (
            np.isnan(valid) | (valid >= np.float32(min_valid))
        )


@pytest.fixture
def quality(world: World, pg_url: str) -> Iterator[Quality]:
    """Random cloud scores and valid fractions (a tenth unknown) and fingerprints shared by
    small groups of windows on the world's rows; NULL again afterwards (the other tests' rows)."""
    rng = np.random.default_rng(21)
    n = len(world.area.ids)
    cloud = rng.uniform(0, 1, n)
    valid = rng.choice([1.0, 1.0, 0.95, 0.9, 0.6, 0.2], n)
    cloud[rng.random(n) < 0.1] = np.nan
    valid[rng.random(n) < 0.1] = np.nan
    # A fifth of the windows fall into 12 groups of "identical pixels" (spread over the ranking).
    fingerprint = np.where(rng.random(n) < 0.2, rng.integers(1, 13, n), 0)
    rows = [
        {
            "id": int(wid),
            "c": None if np.isnan(c) else float(c),
            "v": None if np.isnan(v) else float(v),
            "f": int(f) or None,
        }
        for wid, c, v, f in zip(world.area.ids, cloud, valid, fingerprint, strict=True)
    ]
    with window_quality(sync_engine(pg_url), {r["id"]: (r["c"], r["v"], r["f"]) for r in rows}):
        yield Quality(cloud, valid, fingerprint)


def collapse_brute_force(world: World, q: np.ndarray, keep: np.ndarray, fp: np.ndarray, k: int) -> list[int]:
    """The ranking of the passing windows, each fingerprint's later windows dropped."""
    scores = world.vectors @ q
    rows = np.flatnonzero(keep)
    seen, out = set(), []
    for r in rows[np.argsort(-scores[rows], kind="stable")]:
        if fp[r] and fp[r] in seen:
            continue
        seen.add(fp[r])
        out.append(int(world.area.ids[r]))
    return out[:k]


async def test_quality_filters_match_brute_force_without_sampling(
    world: World, quality: Quality, pg_async_conn
) -> None:
    rng = np.random.default_rng(22)
    for max_cloud, min_valid in ((0.5, 0.9), (0.2, 0.95), (1.0, 0.0), (0.05, 0.0), (1.0, 1.0)):
        flt = HitFilter(max_cloud=max_cloud, min_valid=min_valid)
        keep = quality.keep(max_cloud, min_valid)
        q = query_vector(world, rng)
        got, used = await ids_of(world, pg_async_conn, q, flt, 25, settings(), collapse=False)
        assert got == brute_force(world, q, keep, 25), (max_cloud, min_valid)
        # Most windows pass such filters: checked on the looked-up rows, never by sampling.
        assert used == "index"
    # With a geometry filter as well, both strategies agree with brute force.
    poly = box(*extent(world)).buffer(-0.004)
    keep = quality.keep(0.5, 0.9) & np.array([poly.intersects(f) for f in world.footprints])
    for strategy in ("selector", "overfetch"):
        q = query_vector(world, rng)
        flt = HitFilter(polygon=poly, max_cloud=0.5, min_valid=0.9)
        got, used = await ids_of(
            world, pg_async_conn, q, flt, 20, settings(filter_strategy=strategy), collapse=False
        )
        assert got == brute_force(world, q, keep, 20) and used == strategy


def tie_order(world: World, q: np.ndarray, ids: list[int]) -> list[int]:
    """``ids`` by score, ties (synthetic windows can share a float16 vector's score) by id."""
    scores = dict(zip(world.area.ids.tolist(), (world.vectors @ q).round(5).tolist(), strict=True))
    return sorted(ids, key=lambda w: (-scores[w], w))


async def test_identical_windows_collapse_on_real_rows(world: World, quality: Quality, pg_async_conn) -> None:
    rng = np.random.default_rng(23)
    keep = quality.keep(0.7, 0.5)
    flt = HitFilter(max_cloud=0.7, min_valid=0.5)
    collapsed = 0
    for _ in range(4):
        q = query_vector(world, rng)
        page = await run_search(
            world.index, pg_async_conn, SearchRequest(q, 30, flt=flt, merge=False), settings()
        )
        got = [h.row["id"] for h in page.hits]
        assert tie_order(world, q, got) == tie_order(
            world, q, collapse_brute_force(world, q, keep, quality.fingerprint, 30)
        )
        fp_of = dict(zip(world.area.ids.tolist(), quality.fingerprint.tolist(), strict=True))
        for h in page.hits:  # each collapsed window passes, shares the hit's fingerprint, ranks lower
            assert all(fp_of[w] == fp_of[h.row["id"]] != 0 for w in h.identical)
            assert all(keep[world.area.ids == w][0] for w in h.identical)
        assert page.identical == sum(len(h.identical) for h in page.hits)
        collapsed += page.identical
        # Pages concatenate to the collapsed ranking.
        first = await run_search(
            world.index, pg_async_conn, SearchRequest(q, 12, flt=flt, merge=False), settings()
        )
        second = await run_search(
            world.index, pg_async_conn, SearchRequest(q, 18, 12, flt=flt, merge=False), settings()
        )
        assert [h.row["id"] for h in first.hits + second.hits] == got
    assert collapsed > 0
