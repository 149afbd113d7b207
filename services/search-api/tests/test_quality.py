"""Window quality in the search pipeline without a database: identical windows collapsing in the
ranking (with and without merging), the quality filters' SQL, cursor fingerprints, defaults and
what each hit reports."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from cliprs.clouds import CLOUDY_SCORE
from cliprs_search.filters import HitFilter
from cliprs_search.ranking.pipeline import SearchRequest, _Clock, _Ranking
from cliprs_search.repository.search import filter_where
from cliprs_search.schemas.search import SearchOptions
from cliprs_search.service.shared import hit_feature
from cliprs_search.settings import SearchSettings


def _row(wid: int, x: float, fingerprint: int | None = None, size: float = 1.0) -> dict:
    return {"id": wid, "x0": x, "y0": 0.0, "x1": x + size, "y1": size, "fingerprint": fingerprint}


async def _rank(rows: list[dict], scores: list[float], k: int, **request) -> _Ranking:
    """Walk ``rows`` (ranked by ``scores``) as `run_search` does; the rows are known already, so
    no database is asked."""
    ranking = _Ranking(SearchRequest(np.zeros(4, np.float32), k, **request), SearchSettings(), k + 1)
    ranking.rows = {r["id"]: r for r in rows}
    await ranking.walk(None, [(r["id"], s) for r, s in zip(rows, scores, strict=True)], _Clock())  # type: ignore[arg-type]
    return ranking


def _kept(ranking: _Ranking) -> list[int]:
    return [ranking.passing[g[0]][0] for g in ranking.groups]


async def test_identical_windows_collapse_into_the_best_ranked() -> None:
    # Three black windows (fingerprint 7) tie at the top, two others follow; one more black
    # window lower down (IVF ordering is not guaranteed to keep ties adjacent).
    rows = [_row(1, 0, 7), _row(2, 10, 7), _row(3, 20, 7), _row(4, 30, None), _row(5, 40, 9), _row(6, 50, 7)]
    scores = [1.0, 1.0, 1.0, 0.8, 0.7, 0.6]
    for merge in (False, True):  # nothing overlaps here: merging changes nothing
        ranking = await _rank(rows, scores, 10, merge=merge)
        assert _kept(ranking) == [1, 4, 5]
        assert ranking.identical == {1: [2, 3, 6]}
    flat = await _rank(rows, scores, 10, collapse=False)
    assert _kept(flat) == [1, 2, 3, 4, 5, 6] and flat.identical == {}


async def test_null_fingerprints_never_collapse() -> None:
    rows = [_row(i, 10 * i) for i in range(4)]
    ranking = await _rank(rows, [0.9] * 4, 10)
    assert _kept(ranking) == [0, 1, 2, 3] and ranking.identical == {}


async def test_find_similar_keeps_the_query_window_first() -> None:
    rows = [_row(1, 0, 7), _row(2, 10, 7), _row(3, 20, 7), _row(4, 30)]
    ranking = await _rank(rows, [1.0, 1.0, 1.0, 0.5], 10, prefer=3)
    assert _kept(ranking) == [3, 4]
    assert ranking.identical == {3: [1, 2]}
    assert ranking.passing[0] == (3, 1.0)


async def test_collapse_comes_before_the_overlap_merge() -> None:
    # 1 and 2 are identical; 3 overlaps 2 (not 1). Collapsing first, 2 is gone, so 3 is not
    # merged into anything and stays a result of its own.
    rows = [_row(1, 0, 7), _row(2, 10, 7), _row(3, 10.2, None), _row(4, 0.1, None)]
    ranking = await _rank(rows, [1.0, 1.0, 0.9, 0.8], 10, merge=True)
    assert [[ranking.passing[i][0] for i in g] for g in ranking.groups] == [[1, 4], [3]]
    assert ranking.identical == {1: [2]}


async def test_collapsed_windows_do_not_fill_the_page() -> None:
    # 30 identical windows then 5 distinct ones: a page of 4 still holds 4 distinct hits.
    rows = [_row(i, 10 * i, 7) for i in range(30)] + [_row(100 + i, 1000 + 10 * i) for i in range(5)]
    ranking = await _rank(rows, [1.0] * 30 + [0.5] * 5, 4, merge=False)
    assert _kept(ranking)[:4] == [0, 100, 101, 102] and ranking.full
    assert len(ranking.identical[0]) == 29


def test_quality_filters_in_sql_and_in_the_cursor_fingerprint() -> None:
    where, params = filter_where(HitFilter(max_cloud=0.4, min_valid=0.9))
    assert "(w.cloud_score IS NULL OR w.cloud_score <= :max_cloud)" in where
    assert "(w.valid_fraction IS NULL OR w.valid_fraction >= :min_valid)" in where
    assert params == {"max_cloud": 0.4, "min_valid": 0.9}
    assert filter_where(HitFilter()) == ("TRUE", {})  # None: not checked at all
    fingerprints = {
        str(HitFilter(max_cloud=c, min_valid=v).fingerprint()) for c in (None, 0.4, 1.0) for v in (None, 0.9)
    }
    assert len(fingerprints) == 6  # a cursor never crosses to other quality filters


def test_default_max_cloud_hides_exactly_the_cloudy_windows() -> None:
    s = SearchSettings()
    cloudy = np.float32(CLOUDY_SCORE)  # the column is a real: scores arrive as float32
    assert s.default_max_cloud < cloudy
    assert np.float32(s.default_max_cloud) == np.nextafter(cloudy, np.float32(0))
    assert s.default_min_valid == 0.9


@pytest.mark.parametrize(("field", "value"), [("max_cloud", 1.5), ("max_cloud", -0.1), ("min_valid", 2)])
def test_quality_options_outside_0_1_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=r"must be within 0\.\.1"):
        SearchOptions(**{field: value})
    assert getattr(SearchOptions(**{field: 1.0}), field) == 1.0


def test_hits_report_their_quality_and_identical_windows() -> None:
    row = {
        "id": 5, "z": 16, "scale": 0.5, "source": "demo", "tz": 16, "tx": 2, "ty": 3, "lon": 1.0,
        "lat": 2.0, "px_x0": 0, "px_y0": 0, "px_x1": 128, "px_y1": 128,
        "footprint": '{"type": "Polygon", "coordinates": [[[1, 2], [2, 2], [2, 3], [1, 2]]]}',
        "cloud_score": float(np.float32(0.3)), "valid_fraction": float(np.float32(0.9)),
    }  # fmt: skip
    props = hit_feature(row, 0.5, 1, "http://tiler.test").model_dump(mode="json")["properties"]
    assert props["cloud_score"] == 0.3 and props["valid_fraction"] == 0.9
    assert "identical" not in props  # collapse=false: the property does not apply
    unknown = {**row, "cloud_score": None, "valid_fraction": None}
    props = hit_feature(unknown, 0.5, 1, "http://t", identical=list(range(150)), max_identical_ids=100)
    dumped = props.model_dump(mode="json")["properties"]
    assert dumped["cloud_score"] is None and dumped["valid_fraction"] is None  # null: unknown
    assert dumped["identical"] == 150 and dumped["identical_ids"] == list(range(100))
