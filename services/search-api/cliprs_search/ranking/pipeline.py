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

**One ranking for all pages.** The pages of a query are slices of one ranking, ordered by score
descending and window id ascending. Candidates come in rounds: the first asks for ``depth``
candidates (sized for ``ranking_depth`` results, fixed by the first page and carried in the
cursor with the effort), each further round for four times more. A round continues the ranking
only after the last candidate of the round before it, in that order: what an earlier round ranked
is never ranked again (a deeper approximate search may find a window scoring above the end of
the previous round; it is left out, on every page alike). So the ranking, its merged groups and
its collapsed windows do not depend on the page asked for, and any number of pages of any size
show each window once and, together, the hits of one deep page. A page shows the groups strictly
after the previous page's last hit (the cursor's boundary).
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

from cliprs_index.shardset import Probe, SearchEffort
from cliprs_search.filters import HitFilter
from cliprs_search.index import LoadedIndex
from cliprs_search.ranking.merge import merge_overlapping
from cliprs_search.repository import search as repository
from cliprs_search.settings import SearchSettings


@dataclass
class SearchRequest:
    vector: np.ndarray
    k: int
    offset: int = 0
    flt: HitFilter = field(default_factory=HitFilter)
    min_score: float = -1.0
    merge: bool = True
    # Scales the index's tuned search (text queries); a `Probe` (from a cursor) fixes it.
    effort: SearchEffort | Probe | None = None
    collapse: bool = True  # windows with one fingerprint (identical pixels) become one hit
    prefer: int | None = None  # find similar: the query window represents its identical windows
    depth: int | None = None  # candidates of the first round (from the cursor; None: choose)
    after: tuple[float, int] | None = None  # the previous page's last hit (score, window id)


@dataclass
class Hit:
    row: dict
    score: float
    merged: list[int] = field(default_factory=list)  # window ids merged into this hit
    identical: list[int] = field(default_factory=list)  # window ids with identical pixels
    key: tuple[float, int] = (0.0, 0)  # its place in the ranking: (score, the ranked window's id)


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
    depth: int | None = None  # candidates of the ranking's first round (for the next cursor)
    probe: Probe | None = None  # the effort searched at (for the next cursor)

    @property
    def after(self) -> tuple[float, int] | None:
        """The boundary the next page starts after: this page's last hit."""
        return self.hits[-1].key if self.hits else None

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
        self.end: tuple[float, int] | None = None  # the last candidate ranked (score, id)
        self.start = 0  # the first group strictly after the request's boundary
        self._heads: dict[int, int] = {}  # find similar's window -> the window it stands in for

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
            self._heads[wid] = self._heads.pop(kept, kept)
            self.passing[at] = (wid, self.passing[at][1])
            self.identical[wid] = [kept, *self.identical.pop(kept, [])]
        else:
            self.identical.setdefault(kept, []).append(wid)

    def regroup(self) -> None:
        """Group the passing windows (up to ``need`` groups) and find where the page starts: the
        need grows while the boundary lies further down than the offset said (a new index)."""
        while True:
            self._group()
            after = self.req.after
            self.start = self.req.offset  # without a boundary (a bare offset) the page is a slice
            if after is not None:
                keys = [self.key(g) for g in self.groups]
                self.start = next((i for i, key in enumerate(keys) if _before(after, key)), len(keys))
            if self.start + self.req.k + 1 <= self.need or len(self.groups) < self.need:
                return
            self.need = self.start + self.req.k + 1

    def _group(self) -> None:
        if not self.req.merge:
            self.groups = [[i] for i in range(min(len(self.passing), self.need))]
            return
        boxes = np.array([[self.rows[w][c] for c in ("x0", "y0", "x1", "y1")] for w, _ in self.passing])
        groups = merge_overlapping(
            boxes, self.settings.merge_overlap, self.settings.merge_max_area_ratio, limit=self.need
        )
        self.groups = [[g.index, *g.merged] for g in groups]

    def key(self, group: list[int]) -> tuple[float, int]:
        """A group's place in the ranking: the score and id of the window that ranked it (the
        query window of find similar may stand in for it, with the same score)."""
        wid, score = self.passing[group[0]]
        return score, self._heads.get(wid, wid)

    @property
    def full(self) -> bool:
        return len(self.groups) >= self.need

    def hits(self, offset: int, k: int) -> list[Hit]:
        """The groups ``offset`` .. ``offset + k`` as hits: the kept window, the windows merged
        into it and those identical to it."""
        hits = []
        for group in self.groups[offset : offset + k]:
            wid, score = self.passing[group[0]]
            merged = [self.passing[i][0] for i in group[1:]] if self.req.merge else []
            hits.append(Hit(self.rows[wid], score, merged, self.identical.get(wid, []), self.key(group)))
        return hits

    async def walk(self, conn: AsyncConnection, candidates: list[tuple[int, float]], clock: _Clock) -> bool:
        """Continue the ranking with a round of ``candidates`` (any order): those after the
        previous round's last one, best first, until the groups fill ``need``; True when the
        minimum score cut them off (nothing further down can pass)."""
        ordered = sorted(candidates, key=lambda c: (-c[1], c[0]))
        if self.end is not None:
            ordered = [c for c in ordered if _before(self.end, (c[1], c[0]))]
        if ordered:
            self.end = ordered[-1][1], ordered[-1][0]
        candidates = ordered
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
            if self.full or below:  # the page is served: no further round is asked for
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
    flt = req.flt
    bounds = flt.bounds()
    if bounds is not None and (bounds[0] > bounds[2] or bounds[1] > bounds[3]):
        return SearchPage([], False, "empty", 0, 0, None)  # the box and the polygon are disjoint
    picked = index.pick(zooms=flt.zooms or None, bounds=bounds, area_ids=flt.areas())
    total = index.total(picked)
    if total == 0:
        return SearchPage([], False, "empty", None, 0, None)
    run = _Run(index, conn, req, settings, executor, picked, total, index.probe(req.effort))
    plan = await choose_strategy(run)
    if plan.nothing_passes:
        return SearchPage([], False, "selector", 0, 0, None, run.clock.ms, shards=len(picked))
    ranking = _Ranking(req, settings, need=req.offset + req.k + 1)  # one more group: more pages?
    filled = await fill(run, plan, ranking)
    return page_of(run, plan, ranking, filled)


@dataclass
class _Run:
    """One search's fixed inputs: the snapshot, the picked shards, where FAISS runs, the clock."""

    index: LoadedIndex
    conn: AsyncConnection
    req: SearchRequest
    settings: SearchSettings
    executor: Executor | None
    picked: list
    total: int  # windows in the picked shards
    probe: Probe | None  # the effort every round searches at (None: flat shards only)
    clock: _Clock = field(default_factory=lambda: _Clock())

    async def in_pool(self, fn, *args):
        """``fn(*args)`` on the FAISS executor."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


@dataclass
class _Plan:
    """How candidates are found: the strategy, the estimate behind it, and the selector's ids."""

    strategy: str  # "index", "overfetch" or "selector"
    estimated: int | None = None
    fraction: float = 1.0  # estimated share of the picked windows that pass
    selector: np.ndarray | None = None
    nothing_passes: bool = False  # the sample was every picked window and none passed


@dataclass
class _Filled:
    """How filling the page ended."""

    candidates: int  # index hits examined in the last round
    exhausted: bool  # the ranking has nothing further down
    depth: int  # candidates of the first round
    reason: str | None = None  # why a short page may not be the end


def _narrows(run: _Run) -> bool:
    """Whether rows need checking: unless the picked shards hold only windows that pass (shards
    are cut by space and size, so an area's windows may share shards with other areas')."""
    flt, areas = run.req.flt, run.req.flt.areas()
    return (
        bool(flt.zooms) or flt.geometry or (areas is not None and not run.index.exclusive(run.picked, areas))
    )


async def choose_strategy(run: _Run) -> _Plan:
    """**index** when every picked window passes; else the configured strategy, or (``auto``)
    the selector for selective filters and over-fetching for broad ones."""
    if not _narrows(run):
        return _Plan("index")
    plan = _Plan("overfetch")
    choice = run.settings.filter_strategy
    if choice == "auto":
        choice = await _estimate_selectivity(run, plan)
        if plan.nothing_passes:
            return plan
    if choice == "selector":
        with run.clock("db"):
            plan.selector = await _selector_ids(run.conn, run.req.flt, run.settings)
        plan.strategy = "selector" if plan.selector is not None else "overfetch"
    return plan


async def _estimate_selectivity(run: _Run, plan: _Plan) -> str:
    """Estimate the share of picked windows that pass (into ``plan``) and answer the strategy it
    calls for. The sample is drawn per request over the picked shards only (a fixed sample would
    hold few of a small region's windows), seeded by the filter, so every page of one search
    estimates alike and starts the same way."""
    flt = run.req.flt
    sample = await run.in_pool(run.index.sample_ids, run.settings.selectivity_sample, run.picked, _seed(flt))
    if len(sample) == 0:
        return "selector"  # nothing to estimate with: the listing is bounded anyway
    with run.clock("db"):
        passing = await repository.passing_count(run.conn, flt, sample.tolist())
    exact = len(sample) >= run.total  # the sample is every picked window
    plan.estimated = passing if exact else round(passing / len(sample) * run.total)
    if exact and passing == 0:
        plan.strategy, plan.nothing_passes = "selector", True
        return "selector"
    # At least one sampled window's worth, so an empty sample hit still over-fetches sanely.
    plan.fraction = max(passing / len(sample), 1.0 / len(sample))
    return "selector" if plan.fraction <= run.settings.selector_max_fraction else "overfetch"


def first_depth(run: _Run, plan: _Plan) -> int:
    """Candidates of the ranking's first round: ``ranking_depth`` results over-fetched (for a
    filter, by its estimated share). It depends on neither the page nor its size (a cursor keeps
    it), so every page of a query ranks the same rounds."""
    share = 1.0 if plan.selector is not None else plan.fraction
    depth = math.ceil(run.settings.ranking_depth * run.settings.overfetch / share)
    return max(1, min(depth, run.settings.max_candidates))


async def fill(run: _Run, plan: _Plan, ranking: _Ranking) -> _Filled:
    """Ask for candidates and rank them until the groups fill the page or the ranking ends,
    asking four times more each round (each round continues the ranking after the last one's
    end); an over-fetch that reaches ``max_candidates`` without filling the page switches to
    the selector."""
    limit = min(run.settings.max_candidates, run.total)
    depth = run.req.depth or first_depth(run, plan)
    n = depth
    while True:
        candidates, n, exhausted = await _candidates(run, plan, n, limit)
        exhausted = await ranking.walk(run.conn, candidates, run.clock) or exhausted
        if ranking.full or exhausted:
            return _Filled(len(candidates), exhausted, depth)
        if plan.selector is not None or n < limit:
            n *= 4
            continue
        reason = await _switch_to_selector(run, plan, len(ranking.groups), n)
        if reason is not None:
            return _Filled(len(candidates), False, depth, reason)
        # The listed ids continue the ranking after what the over-fetch ranked: ask for as many.


async def _candidates(
    run: _Run, plan: _Plan, n: int, limit: int
) -> tuple[list[tuple[int, float]], int, bool]:
    """The best ``n`` candidates (capped), the ``n`` asked for, and whether none lie beyond."""
    if plan.selector is not None:
        # Exact over a bounded list: it may grow to the whole list, which ends the ranking.
        n = min(n, len(plan.selector))
        candidates = []
        if n:
            with run.clock("faiss"):
                candidates = await run.in_pool(run.index.search_ids, run.req.vector, plan.selector, n)
        return candidates, n, len(candidates) < n or n >= len(plan.selector)
    n = min(n, limit)
    with run.clock("faiss"):
        candidates = await run.in_pool(run.index.search, run.req.vector, n, run.picked, run.probe)
    return candidates, n, len(candidates) < n or n >= run.total


async def _switch_to_selector(run: _Run, plan: _Plan, groups: int, n: int) -> str | None:
    """Even ``max_candidates`` did not fill the page: the filter is more selective than
    estimated (or rows are gone), so let PostGIS list the ids after all. None when it did;
    otherwise why the page may be short."""
    with run.clock("db"):
        plan.selector = await _selector_ids(run.conn, run.req.flt, run.settings)
    if plan.selector is None:
        return (
            f"the filter matches more than {run.settings.selector_max_ids} windows but only "
            f"{groups} of the best {n} candidates, so the results may continue "
            "beyond these; narrow the filter or raise max_candidates"
        )
    plan.strategy = "selector"
    return None


def page_of(run: _Run, plan: _Plan, ranking: _Ranking, filled: _Filled) -> SearchPage:
    """The requested page of groups as hits, and whether the ranking continues."""
    req = run.req
    start = ranking.start  # the first group after the previous page's last hit
    page_full = len(ranking.groups) >= start + req.k
    # More pages while a group beyond this page is known, or while a full page did not use up
    # the candidates; a short page ends the results only when they really ended.
    has_more = len(ranking.groups) > start + req.k or (page_full and not filled.exhausted)
    complete = page_full or filled.exhausted
    return SearchPage(
        ranking.hits(start, req.k),
        has_more,
        plan.strategy,
        plan.estimated,
        filled.candidates,
        ranking.passing[0][1] if ranking.passing else None,
        run.clock.ms,
        complete=complete,
        incomplete_reason=None if complete else filled.reason,
        shards=len(run.picked),
        depth=filled.depth,
        probe=run.probe,
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


def _before(a: tuple[float, int], b: tuple[float, int]) -> bool:
    """Whether (score, id) ``a`` ranks before ``b``: higher score, or equal and lower id."""
    return a[0] > b[0] or (a[0] == b[0] and a[1] < b[1])


def _seed(flt: HitFilter) -> int:
    """A sampling seed that is the same for every request with this filter."""
    digest = hashlib.sha256(json.dumps(flt.fingerprint(), sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "little")


async def _selector_ids(conn: AsyncConnection, flt: HitFilter, settings: SearchSettings) -> np.ndarray | None:
    """The ids passing ``flt`` (int64), or None when there are more than ``selector_max_ids``."""
    ids = await repository.matching_ids(conn, flt, settings.selector_max_ids + 1)
    return np.asarray(ids, dtype=np.int64) if len(ids) <= settings.selector_max_ids else None
