"""The search pipeline: index shards -> PostGIS filter -> minimum score -> collapse identical
windows -> merge -> one page.

The filter first picks the shards that can hold a passing window (their manifest entries know
their areas, zooms and envelopes); only those are searched. Rows are checked in PostGIS when the
picked shards may hold windows that do not pass: a zoom or geometry filter, or an area filter
over shards shared with other areas. Such filters run one of two ways, chosen by how many windows
pass, estimated on a fresh random sample of the picked shards' windows:

- **selector** (selective filters): PostGIS lists the ids that pass and the index ranks exactly
  those (`ShardSet.search_ids`, exact scores from the stored vectors);
- **overfetch** (broad filters): the picked shards are searched for about ``k / selectivity``
  candidates and PostGIS keeps those that pass, asking for four times more (up to
  ``max_candidates``) until a page is full, then switching to the selector if even that is not
  enough. When the matching ids are too many for the selector as well, the page says so
  (``complete`` false and a reason) instead of silently ending the results.

Without rows to check the search is plain (**index**). Candidates are walked in slices so that
PostGIS only looks up the rows a page needs. The window quality filters (``max_cloud``,
``min_valid``) do not count as narrowing: they pass most windows, so they are checked on those
looked-up rows like the minimum score, and a page they thin out asks the index for more.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.ext.asyncio import AsyncConnection

from cliprs_index.shardset import SearchEffort
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
    effort: SearchEffort | None = None  # scales the index's tuned search (text queries)
    collapse: bool = True  # windows with one fingerprint (identical pixels) become one hit
    prefer: int | None = None  # find similar: the query window represents its identical windows


@dataclass
class Hit:
    row: dict
    score: float
    merged: list[int] = field(default_factory=list)  # window ids merged into this hit
    identical: list[int] = field(default_factory=list)  # window ids with identical pixels


@dataclass
class SearchPage:
    hits: list[Hit]
    has_more: bool  # the ranking continues on the next page
    strategy: str  # "index", "overfetch", "selector" or "empty"
    estimated: int | None  # estimate of the searched windows passing the filter
    candidates: int  # index hits examined
    top_score: float | None  # best score passing the filters (the whole ranking's, not the page's)
    timings: dict[str, float] = field(default_factory=dict)  # ms spent in the index and in PostGIS
    # False when the page is short although more hits may exist (the filter is too broad to list
    # and too selective for max_candidates); incomplete_reason then says why and what to do.
    complete: bool = True
    incomplete_reason: str | None = None
    shards: int = 0  # index shards searched

    @property
    def merged(self) -> int:
        return sum(len(h.merged) for h in self.hits)

    @property
    def identical(self) -> int:
        return sum(len(h.identical) for h in self.hits)

    def describe(self) -> dict:
        return {
            "strategy": self.strategy,
            "estimated_matches": self.estimated,
            "candidates": self.candidates,
            "complete": self.complete,
            "incomplete_reason": self.incomplete_reason,
        }


class _Ranking:
    """The filtered candidates seen so far and the groups they form.

    Windows with one non-NULL fingerprint hold identical pixels, hence identical vectors and
    scores: the first of them to pass (the best ranked, or ``req.prefer``) stands for all, and
    the others are listed in ``identical`` instead of ``passing``, before overlaps are merged."""

    def __init__(self, req: SearchRequest, settings: SearchSettings, need: int):
        self.req, self.settings, self.need = req, settings, need
        self.rows: dict[int, dict | None] = {}  # None: the window does not pass (or is gone)
        self.passing: list[tuple[int, float]] = []
        self.identical: dict[int, list[int]] = {}  # kept window id -> the windows collapsed into it
        self._firsts: dict[int, int] = {}  # fingerprint -> its kept window's position in passing
        self.groups: list = []

    def _add(self, wid: int, score: float) -> None:
        """One passing candidate (in ranking order): kept, or collapsed into an identical one."""
        fp = self.rows[wid].get("fingerprint") if self.req.collapse else None
        if fp is None:  # NULL: not fingerprinted (embedded before 0005), never collapses
            self.passing.append((wid, score))
            return
        at = self._firsts.get(fp)
        if at is None:
            self._firsts[fp] = len(self.passing)
            self.passing.append((wid, score))
            return
        kept = self.passing[at][0]
        if wid == self.req.prefer:  # the query window itself stands for its identical windows
            self.passing[at] = (wid, self.passing[at][1])
            self.identical[wid] = [kept, *self.identical.pop(kept, [])]
        else:
            self.identical.setdefault(kept, []).append(wid)

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

    async def walk(self, conn: AsyncConnection, candidates: list[tuple[int, float]], clock: _Clock) -> bool:
        """Rank ``candidates`` (best first) until the groups fill ``need``; True when the
        minimum score cut them off (nothing further down can pass)."""
        self.passing, self.identical, self._firsts = [], {}, {}
        if not candidates:
            self.regroup()
            return False
        batch = max(2 * self.need, 64)
        for start in range(0, len(candidates), batch):
            chunk = candidates[start : start + batch]
            unseen = [wid for wid, _ in chunk if wid not in self.rows]
            if unseen:
                with clock("db"):
                    found = await repository.window_rows(conn, unseen, self.req.flt)
                self.rows.update({wid: found.get(wid) for wid in unseen})
            below = False
            for wid, score in chunk:
                if score < self.req.min_score:
                    below = True
                    break
                if self.rows[wid] is not None:
                    self._add(wid, score)
            self.regroup()
            if self.full or below:
                return below
        return False


async def run_search(
    index: LoadedIndex,
    conn: AsyncConnection,
    req: SearchRequest,
    settings: SearchSettings,
    executor: Executor | None = None,
) -> SearchPage:
    """One page (``req.offset`` .. ``+ req.k``) of the merged, filtered ranking for a vector;
    the index is searched on ``executor`` (default: the event loop's)."""
    loop = asyncio.get_running_loop()
    flt = req.flt
    clock = _Clock()
    bounds = flt.bounds()
    if bounds is not None and (bounds[0] > bounds[2] or bounds[1] > bounds[3]):
        return SearchPage([], False, "empty", 0, 0, None)  # the box and the polygon are disjoint
    areas = flt.areas()
    picked = index.pick(zooms=flt.zooms or None, bounds=bounds, area_ids=areas)
    total = index.total(picked)
    if total == 0:
        return SearchPage([], False, "empty", None, 0, None)
    # Rows need checking unless the picked shards hold only windows that pass: shards are cut by
    # space and size, so an area's windows may share shards with other areas'.
    narrows = bool(flt.zooms) or flt.geometry or (areas is not None and not index.exclusive(picked, areas))
    need = req.offset + req.k + 1  # one more group than the page: tells whether more exist
    strategy, estimated, fraction = ("overfetch" if narrows else "index"), None, 1.0
    selector: np.ndarray | None = None
    if narrows:
        choice = settings.filter_strategy
        if choice == "auto":
            # Drawn per request over the picked shards only (a fixed sample would hold few of a
            # small region's windows); seeded by the filter, so every page of one search
            # estimates alike and starts the same way.
            sample = await loop.run_in_executor(
                executor, index.sample_ids, settings.selectivity_sample, picked, _seed(flt)
            )
            if len(sample) == 0:
                choice = "selector"  # nothing to estimate with: the listing is bounded anyway
            else:
                with clock("db"):
                    passing = await repository.passing_count(conn, flt, sample.tolist())
                exact = len(sample) >= total  # the sample is every picked window
                estimated = passing if exact else round(passing / len(sample) * total)
                if exact and passing == 0:
                    return SearchPage([], False, "selector", 0, 0, None, clock.ms, shards=len(picked))
                # At least one sampled window's worth, so an empty sample hit still over-fetches sanely.
                fraction = max(passing / len(sample), 1.0 / len(sample))
                choice = "selector" if fraction <= settings.selector_max_fraction else "overfetch"
        if choice == "selector":
            with clock("db"):
                selector = await _selector_ids(conn, flt, settings)
            strategy = "selector" if selector is not None else "overfetch"

    ranking = _Ranking(req, settings, need)
    limit = min(settings.max_candidates, total)
    n = math.ceil(need * settings.overfetch / (1.0 if selector is not None else fraction))
    exhausted = False
    reason: str | None = None
    candidates: list[tuple[int, float]] = []
    while True:
        if selector is not None:
            # Exact over a bounded list: it may grow to the whole list, which ends the ranking.
            n = min(n, len(selector))
            candidates = []
            if n:
                with clock("faiss"):
                    candidates = await loop.run_in_executor(
                        executor, index.search_ids, req.vector, selector, n
                    )
            exhausted = len(candidates) < n or n >= len(selector)
        else:
            n = min(n, limit)
            with clock("faiss"):
                candidates = await loop.run_in_executor(
                    executor, index.search, req.vector, n, picked, req.effort
                )
            exhausted = len(candidates) < n or n >= total
        exhausted = await ranking.walk(conn, candidates, clock) or exhausted
        if ranking.full or exhausted:
            break
        if selector is not None or n < limit:
            n *= 4
            continue
        # Even max_candidates did not fill the page: the filter is more selective than
        # estimated (or rows are gone), so let PostGIS list the ids after all.
        with clock("db"):
            selector = await _selector_ids(conn, flt, settings)
        if selector is None:
            reason = (
                f"the filter matches more than {settings.selector_max_ids} windows but only "
                f"{len(ranking.groups)} of the best {n} candidates, so the results may continue "
                "beyond these; narrow the filter or raise max_candidates"
            )
            break
        strategy = "selector"
        n = math.ceil(need * settings.overfetch)

    groups = ranking.groups[req.offset : req.offset + req.k]
    hits = []
    for group in groups:
        wid, score = ranking.passing[group[0]]
        merged = [ranking.passing[i][0] for i in group[1:]] if req.merge else []
        hits.append(Hit(ranking.rows[wid], score, merged, ranking.identical.get(wid, [])))
    top = ranking.passing[0][1] if ranking.passing else None
    page_full = len(ranking.groups) >= req.offset + req.k
    # More pages while a group beyond this page is known, or while a full page did not use up
    # the candidates; a short page ends the results only when they really ended.
    has_more = len(ranking.groups) > req.offset + req.k or (page_full and not exhausted)
    complete = page_full or exhausted
    return SearchPage(
        hits,
        has_more,
        strategy,
        estimated,
        len(candidates),
        top,
        clock.ms,
        complete=complete,
        incomplete_reason=None if complete else reason,
        shards=len(picked),
    )


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


def _seed(flt: HitFilter) -> int:
    """A sampling seed that is the same for every request with this filter."""
    digest = hashlib.sha256(json.dumps(flt.fingerprint(), sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "little")


async def _selector_ids(conn: AsyncConnection, flt: HitFilter, settings: SearchSettings) -> np.ndarray | None:
    """The ids passing ``flt`` (int64), or None when there are more than ``selector_max_ids``."""
    ids = await repository.matching_ids(conn, flt, settings.selector_max_ids + 1)
    return np.asarray(ids, dtype=np.int64) if len(ids) <= settings.selector_max_ids else None
