"""The search pipeline over a sharded index: many areas, shards cut by size and space (IVF-PQ
past a small flat limit), built by the indexer's own code from vector chunks, on real PostGIS
rows; every answer is checked against brute force (shapely over every window's footprint, numpy
over every stored vector)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import mercantile
import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon, box
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings
from cliprs.tiles import BBox
from cliprs_indexer.build import collect_area_vectors, publish_area
from cliprs_indexer.settings import IndexerSettings
from cliprs_search.filters import HitFilter
from cliprs_search.index import IndexHolder, LoadedIndex
from cliprs_search.ranking.pipeline import SearchPage, SearchRequest, run_search
from cliprs_search.settings import SearchSettings
from cliprs_testing.synthetic import ClusteredStream, SeededArea, delete_seeded, seed_area, write_area_chunks

DIM = 64
MODEL = "test/scale"
GROUP = 13  # windows per place: half a tile's windows look alike
# Santiago de Chile: far from every other test's rows, so the filters only ever meet ours.
ORIGIN = (-70.65, -33.45)
GRID = 4  # areas per side: 16 areas
BLOCK = 4  # zoom-16 tiles per area side (and half as many zoom-15 tiles, same extent)
STEP = 6  # zoom-16 tiles from one area's corner to the next: gaps between areas
QUERIES = 50


@dataclass
class World:
    areas: list[SeededArea]
    ids: np.ndarray  # every window, area by area
    area_of: np.ndarray
    zooms: np.ndarray
    vectors: np.ndarray  # as the index stores them (float16), in float32
    footprints: np.ndarray  # shapely boxes
    queries: np.ndarray  # new windows of indexed places (held out)
    index: LoadedIndex
    extent: tuple[float, float, float, float]

    def brute_force(self, q: np.ndarray, keep: np.ndarray, k: int) -> list[int]:
        scores = self.vectors @ q
        rows = np.flatnonzero(keep)
        return self.ids[rows[np.argsort(-scores[rows], kind="stable")][:k]].tolist()

    def keep(self, flt: HitFilter) -> np.ndarray:
        """Which windows pass ``flt``: the rule of `repository.filter_where` (footprints that
        intersect; an area's windows touch its box, which is its tiles' extent)."""
        keep = np.ones(len(self.ids), dtype=bool)
        if flt.area_id is not None:
            keep &= self.area_of == flt.area_id
        if flt.zooms:
            keep &= np.isin(self.zooms, flt.zooms)
        if flt.bbox is not None:
            keep &= shapely.intersects(self.footprints, box(*flt.bbox.as_list()))
        if flt.polygon is not None:
            keep &= shapely.intersects(self.footprints, flt.polygon)
        return keep


def area_tiles(i: int, j: int, origin: mercantile.Tile) -> list[mercantile.Tile]:
    x, y = origin.x + STEP * i, origin.y + STEP * j
    tiles = [mercantile.Tile(x + dx, y + dy, 16) for dx in range(BLOCK) for dy in range(BLOCK)]
    if (i + j) % 3:  # most areas have zoom 15 too; a few only zoom 16
        half = BLOCK // 2
        tiles += [mercantile.Tile(x // 2 + dx, y // 2 + dy, 15) for dx in range(half) for dy in range(half)]
    return tiles


@pytest.fixture(scope="module")
def world(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """16 areas (about 7,500 windows) indexed area by area: flat at first, one IVF-PQ codec once
    the index passes 3,000 vectors, shards of at most 600 cut along the curve."""
    core = CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("scale") / "data",
        redis_namespace=f"scale-{uuid.uuid4().hex[:6]}",
    )
    indexer = IndexerSettings(
        flat_max_vectors=3_000,
        shard_max_vectors=600,
        shard_min_vectors=150,
        planned_vectors=8_000,
        device="cpu",
    )
    t = mercantile.tile(*ORIGIN, 16)
    origin = mercantile.Tile(t.x - t.x % 2, t.y - t.y % 2, 16)  # even: zoom-15 tiles align
    areas: list[SeededArea] = []
    try:
        for i in range(GRID):
            for j in range(GRID):
                tiles = area_tiles(i, j, origin)
                areas.append(seed_area(pg_url, tiles, name=f"scale-{i}-{j}", source="scale"))
        with sync_engine(pg_url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE windows"))
        n = sum(len(a.ids) for a in areas)
        stream = ClusteredStream(DIM, seed=21, group=GROUP, planned=n)
        vectors, places = stream.batch(n)
        queries = stream.around(
            places[np.random.default_rng(2).choice(len(places), QUERIES, replace=False)], 1
        )
        start = 0
        for area in areas:
            write_area_chunks(core.vectors_dir, area, vectors[start : start + len(area.ids)], MODEL)
            start += len(area.ids)
        for area in areas:
            publish_area(core, area.area_id, collect_area_vectors(core, area.area_id), indexer)
        index = IndexHolder(core.index_dir).load()
        assert index is not None
        boxes = np.concatenate([a.boxes for a in areas])
        yield World(
            areas=areas,
            ids=np.concatenate([a.ids for a in areas]),
            area_of=np.concatenate([np.full(len(a.ids), a.area_id) for a in areas]),
            zooms=np.concatenate([a.zooms for a in areas]),
            vectors=vectors.astype(np.float16).astype(np.float32),
            footprints=shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]),
            queries=queries,
            index=index,
            extent=(boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()),
        )
    finally:
        delete_seeded(pg_url, [a.area_id for a in areas])


async def search(
    world: World, pg_async_conn, q: np.ndarray, k: int, flt: HitFilter, offset: int = 0, **settings
) -> SearchPage:
    s = SearchSettings(**settings)
    return await run_search(world.index, pg_async_conn, SearchRequest(q, k, offset, flt, merge=False), s)


def ids_of(page: SearchPage) -> list[int]:
    return [h.row["id"] for h in page.hits]


def check_hits(world: World, page: SearchPage, q: np.ndarray, keep: np.ndarray) -> None:
    """Every hit passes the filter, with its exact score, best first."""
    order = np.argsort(world.ids)
    rows = order[np.searchsorted(world.ids, ids_of(page), sorter=order)]
    assert keep[rows].all()
    np.testing.assert_allclose([h.score for h in page.hits], world.vectors[rows] @ q, rtol=0, atol=1e-5)
    scores = [h.score for h in page.hits]
    assert scores == sorted(scores, reverse=True)


def recall(got: list[int], truth: list[int]) -> float:
    return len(set(got) & set(truth)) / len(truth) if truth else 1.0


def small_polygon(world: World, rng: np.random.Generator) -> Polygon:
    """A random quadrilateral up to a few windows across, around a random window."""
    x0, y0, x1, y1 = world.footprints[rng.integers(len(world.ids))].bounds
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = np.exp(rng.uniform(np.log(0.1), np.log(1.5))) * (x1 - x0)
    angles = (np.arange(4) + rng.uniform(0.1, 0.9, 4)) * np.pi / 2
    return Polygon(zip(cx + r * np.cos(angles), cy + r * np.sin(angles), strict=True))


def test_the_index_is_many_shards_over_areas(world: World) -> None:
    index = world.index
    assert index.total() == len(world.ids)
    kinds = {s.meta.kind for s in index.shards}
    assert len(index.shards) >= 10 and "ivfpq" in kinds
    assert any(len(s.meta.area_ids) > 1 for s in index.shards)  # shards are cut by space, not area
    corner = world.footprints[0].bounds
    assert 0 < len(index.pick(bounds=corner)) < len(index.shards)


@pytest.mark.parametrize("strategy", ["selector", "auto"])
async def test_selective_polygons_match_brute_force(world: World, pg_async_conn, strategy: str) -> None:
    rng = np.random.default_rng({"selector": 31, "auto": 32}[strategy])
    used = []
    for i in range(12):
        poly = small_polygon(world, rng)
        zooms = [16] if i % 3 == 2 else None
        flt = HitFilter(polygon=poly, zooms=zooms)
        keep = world.keep(flt)
        q = world.queries[rng.integers(QUERIES)]
        k = int(rng.integers(1, 30))
        page = await search(world, pg_async_conn, q, k, flt, filter_strategy=strategy)
        truth = world.brute_force(q, keep, k)
        check_hits(world, page, q, keep)
        if page.strategy == "selector":  # exact: the very same ranking
            assert ids_of(page) == truth, f"polygon {i} ({keep.sum()} windows pass)"
        else:
            assert recall(ids_of(page), truth) >= 0.8
        assert page.complete
        if page.strategy == "selector":  # every match ranked: exactly knows whether more follow
            assert page.has_more == (keep.sum() > k)
        picked = world.index.pick(None, zooms, poly.bounds)
        assert page.shards == len(picked) < len(world.index.shards)  # only the shards near it
        if strategy == "auto":  # chosen by the share of the picked shards' windows that pass
            share = keep.sum() / world.index.total(picked)
            if share < 0.025 or share > 0.1:  # clearly on one side of the 5 % threshold
                assert page.strategy == ("selector" if share < 0.025 else "overfetch")
            used.append(page.strategy)
    assert strategy != "auto" or used.count("selector") >= 3


def broad_filters(world: World) -> dict[str, HitFilter]:
    w, s, e, n = world.extent
    ax = [a.area_id for a in world.areas]
    return {
        "bbox": HitFilter(
            bbox=BBox(w + 0.2 * (e - w), s + 0.1 * (n - s), w + 0.7 * (e - w), n - 0.3 * (n - s))
        ),
        "polygon": HitFilter(polygon=Polygon([(w, s), (e, s), (w, n)])),
        "zoom": HitFilter(zooms=[15]),
        "area": HitFilter(area_id=ax[5]),
        "area, zoom and box": HitFilter(area_id=ax[10], zooms=[16], bbox=BBox(w, s, e, (s + n) / 2)),
    }


@pytest.mark.parametrize("name", ["bbox", "polygon", "zoom", "area", "area, zoom and box"])
async def test_broad_filters_match_brute_force_within_recall(world: World, pg_async_conn, name: str) -> None:
    flt = broad_filters(world)[name]
    keep = world.keep(flt)
    assert keep.sum() > 100
    found = []
    for q in world.queries:
        page = await search(world, pg_async_conn, q, 10, flt)
        check_hits(world, page, q, keep)
        assert len(page.hits) == 10 and page.complete and page.has_more
        found.append(recall(ids_of(page), world.brute_force(q, keep, 10)))
    # The bar of the unfiltered search: a filter must not make the approximate index worse,
    # though its top 10 sit deeper in the unfiltered ranking.
    assert np.mean(found) >= 0.9, found


@pytest.mark.parametrize("max_candidates", [20_000, 400])
async def test_broad_filter_pages_are_full_until_the_last(
    world: World, pg_async_conn, max_candidates: int
) -> None:
    """Page by page (as cursors do) to the very end; with few candidates allowed, deep pages
    switch to listing the matches and still come full."""
    flt = broad_filters(world)["bbox"]
    keep = world.keep(flt)
    q = world.queries[7]
    k, offset, seen, strategies = 150, 0, [], set()
    while True:
        page = await search(world, pg_async_conn, q, k, flt, offset, max_candidates=max_candidates)
        check_hits(world, page, q, keep)
        assert page.complete
        seen += ids_of(page)
        strategies.add(page.strategy)
        if not page.has_more:
            break
        assert len(page.hits) == k, f"a short page at offset {offset} although more follow"
        offset += k
    assert 0 < len(page.hits) <= k
    assert len(seen) == keep.sum()  # every passing window, ranked to the end
    # Pages of an approximate ranking (exact once the candidates run out) barely overlap.
    assert len(set(seen)) >= 0.95 * len(seen)
    if max_candidates < keep.sum():
        assert "selector" in strategies


async def test_pages_a_filter_cannot_fill_say_so(world: World, pg_async_conn) -> None:
    """Too many matches to list and too few among the allowed candidates: the page says it is
    incomplete instead of ending the results early."""
    flt = broad_filters(world)["bbox"]
    keep = world.keep(flt)
    q = world.queries[3]
    limits = {"max_candidates": 400, "selector_max_ids": 500}
    assert keep.sum() > limits["selector_max_ids"]
    k, offset, seen = 50, 0, []
    while True:
        page = await search(world, pg_async_conn, q, k, flt, offset, **limits)
        check_hits(world, page, q, keep)
        seen += ids_of(page)
        if not page.complete or not page.has_more:
            break
        assert len(page.hits) == k
        offset += k
    assert not page.complete and len(page.hits) < k and not page.has_more
    assert "raise max_candidates" in page.incomplete_reason
    assert len(seen) < keep.sum()


async def test_search_over_all_areas_matches_exact_search_over_their_union(
    world: World, pg_async_conn
) -> None:
    everything = np.ones(len(world.ids), dtype=bool)
    found = []
    for q in world.queries:
        page = await search(world, pg_async_conn, q, 10, HitFilter())
        assert page.strategy == "index" and page.shards == len(world.index.shards)
        check_hits(world, page, q, everything)
        found.append(recall(ids_of(page), world.brute_force(q, everything, 10)))
    assert np.mean(found) >= 0.9, found
