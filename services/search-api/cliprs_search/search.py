"""The search pipeline: FAISS candidates -> PostGIS filter -> minimum score -> merge -> one page.

Filters run one of two ways, chosen by how many windows pass, estimated on the index's random
sample of windows:

- **selector** (selective filters): PostGIS lists the ids that pass and FAISS searches only
  those (`IDSelectorBatch`, every IVF list probed, since the ids are scattered);
- **overfetch** (broad filters): FAISS searches everything for about ``k / selectivity``
  candidates and PostGIS keeps those that pass, asking FAISS for more until a page is full
  (and switching to the selector if even ``max_candidates`` are not enough).

Without zoom or geometry filters the search is plain (**index**); an area filter alone just
searches that area's shard. Candidates are walked in slices so that PostGIS only looks up the
rows a page needs.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field

import faiss
import numpy as np
from sqlalchemy.ext.asyncio import AsyncConnection

from cliprs_search import repository
from cliprs_search.filters import HitFilter
from cliprs_search.index import LoadedIndex
from cliprs_search.merge import merge_overlapping
from cliprs_search.settings import SearchSettings


@dataclass
class SearchRequest:
    vector: np.ndarray
    k: int
    offset: int = 0
    flt: HitFilter = field(default_factory=HitFilter)
    min_score: float = -1.0
    merge: bool = True


@dataclass
class Hit:
    row: dict
    score: float
    merged: list[int] = field(default_factory=list)  # window ids merged into this hit


@dataclass
class SearchPage:
    hits: list[Hit]
    has_more: bool
    strategy: str  # "index", "overfetch", "selector" or "empty"
    estimated: int | None  # estimate of the searched windows passing the filter
    candidates: int  # FAISS hits examined
    top_score: float | None  # best score passing the filters (the whole ranking's, not the page's)
    timings: dict[str, float] = field(default_factory=dict)  # ms spent in FAISS and in PostGIS

    @property
    def merged(self) -> int:
        return sum(len(h.merged) for h in self.hits)

    def describe(self) -> dict:
        return {"strategy": self.strategy, "estimated_matches": self.estimated, "candidates": self.candidates}


class _Ranking:
    """The filtered candidates seen so far and the groups they form."""

    def __init__(self, req: SearchRequest, settings: SearchSettings, need: int):
        self.req, self.settings, self.need = req, settings, need
        self.rows: dict[int, dict | None] = {}
        self.passing: list[tuple[int, float]] = []
        self.groups: list = []

    def regroup(self) -> None:
        if not self.req.merge:
            self.groups = [[i] for i in range(min(len(self.passing), self.need))]
            return
        boxes = np.array([[self.rows[w][c] for c in ("x0", "y0", "x1", "y1")] for w, _ in self.passing])
        groups = merge_overlapping(
            boxes, self.settings.merge_overlap, self.settings.merge_max_area_ratio, limit=self.need
        )
        self.groups = [[g.index, *g.merged] for g in groups]

    @property
    def full(self) -> bool:
        return len(self.groups) >= self.need


async def run_search(
    index: LoadedIndex,
    conn: AsyncConnection,
    req: SearchRequest,
    settings: SearchSettings,
    executor: Executor | None = None,
) -> SearchPage:
    """One page (``req.offset`` .. ``+ req.k``) of the merged, filtered ranking for a vector;
    FAISS runs on ``executor`` (default: the event loop's)."""
    loop = asyncio.get_running_loop()
    flt = req.flt
    clock = _Clock()
    total = index.total(flt.area_id)
    if total == 0:
        return SearchPage([], False, "empty", None, 0, None)
    need = req.offset + req.k + 1  # one more group than the page: tells whether more exist
    strategy, estimated, fraction = ("overfetch" if flt.narrows else "index"), None, 1.0
    selector_ids: list[int] | None = None
    if flt.narrows:
        choice = settings.filter_strategy
        if choice == "auto":
            sample = (
                index.sample.ids_of(flt.area_id)[: settings.selectivity_sample].tolist()
                if index.sample
                else []
            )
            with clock("db"):
                measured = await _passing_fraction(conn, flt, sample)
            if measured is None:
                choice = "selector"  # nothing to estimate with: the listing is bounded anyway
            else:
                estimated = round(measured * total)
                # At least one sampled window's worth, so an empty sample hit still over-fetches sanely.
                fraction = max(measured, 1.0 / len(sample))
                choice = "selector" if fraction <= settings.selector_max_fraction else "overfetch"
        if choice == "selector":
            with clock("db"):
                selector_ids = await _selector_ids(conn, flt, settings)
            strategy = "selector" if selector_ids is not None else "overfetch"

    ranking = _Ranking(req, settings, need)
    n = math.ceil(need * settings.overfetch / fraction)
    if selector_ids is not None:
        if not selector_ids:
            return SearchPage([], False, strategy, estimated, 0, None)
        n = min(n, len(selector_ids))
    n = min(n, settings.max_candidates, total)
    exhausted = False
    candidates: list[tuple[int, float]] = []
    while True:
        selector = faiss.IDSelectorBatch(np.asarray(selector_ids, dtype=np.int64)) if selector_ids else None
        with clock("faiss"):
            candidates = await loop.run_in_executor(
                executor, index.search, req.vector, n, flt.area_id, selector
            )
        exhausted = len(candidates) < n or n >= total or (selector_ids is not None and n >= len(selector_ids))
        ranking.passing = []
        batch = max(2 * need, 64)
        for start in range(0, len(candidates), batch):
            chunk = candidates[start : start + batch]
            unseen = [wid for wid, _ in chunk if wid not in ranking.rows]
            if unseen:
                with clock("db"):
                    found = await repository.window_rows(conn, unseen, flt)
                ranking.rows.update({wid: found.get(wid) for wid in unseen})
            below = False
            for wid, score in chunk:
                if score < req.min_score:
                    below = True
                    break
                if ranking.rows[wid] is not None:
                    ranking.passing.append((wid, score))
            ranking.regroup()
            if ranking.full or below:
                exhausted = exhausted or below
                break
        if ranking.full or exhausted:
            break
        if n >= settings.max_candidates:
            if strategy == "overfetch" and flt.narrows:
                # Even max_candidates did not fill the page: the filter is more selective than
                # estimated, so let PostGIS list the ids after all.
                with clock("db"):
                    selector_ids = await _selector_ids(conn, flt, settings)
                if selector_ids is not None:
                    strategy = "selector"
                    if not selector_ids:
                        break
                    n = min(len(selector_ids), settings.max_candidates, total)
                    continue
            break
        n = min(n * 4, settings.max_candidates, total)

    groups = ranking.groups[req.offset : req.offset + req.k]
    hits = []
    for group in groups:
        wid, score = ranking.passing[group[0]]
        merged = [ranking.passing[i][0] for i in group[1:]] if req.merge else []
        hits.append(Hit(ranking.rows[wid], score, merged))
    top = ranking.passing[0][1] if ranking.passing else None
    has_more = len(ranking.groups) > req.offset + req.k
    return SearchPage(hits, has_more, strategy, estimated, len(candidates), top, clock.ms)


class _Clock:
    """Milliseconds spent per stage (``with clock("db"): ...``)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - start) * 1000


async def _selector_ids(conn: AsyncConnection, flt: HitFilter, settings: SearchSettings) -> list[int] | None:
    """The ids passing ``flt``, or None when there are too many for an ID selector."""
    ids = await repository.matching_ids(conn, flt, settings.selector_max_ids + 1)
    return ids if len(ids) <= settings.selector_max_ids else None


async def _passing_fraction(conn: AsyncConnection, flt: HitFilter, sample_ids: list[int]) -> float | None:
    """The fraction of ``sample_ids`` (random indexed windows) that pass ``flt``: an unbiased
    estimate of the filter's selectivity, from a few thousand primary-key lookups. PostgreSQL's
    own estimate is no substitute: its geometry histogram spans every area in the world, so a
    filter inside one small area looks far more selective than it is."""
    if not sample_ids:
        return None
    return await repository.passing_count(conn, flt, sample_ids) / len(sample_ids)
