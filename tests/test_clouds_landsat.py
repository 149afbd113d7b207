"""The cloud detector through the whole pipeline, on the cloudy Landsat 8 scene: the area is
ingested from a ``geotiff://`` source (the tiler renders the bands), every window's
``cloud_score`` is read from PostGIS and checked against the truth of the scene's BQA band."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cliprs.clouds import CLOUDY_SCORE
from cliprs_tools.landsat import (
    LANDSAT_AREA,
    LANDSAT_SOURCE,
    TRUTH_CLOUDY,
    area_windows,
    landsat_source_template,
    precision_recall,
)
from tests.support.platform import ingest_area

# The area's two coarser zooms keep the test fast (39 tiles, 465 windows, ~185 of them cloudy;
# zoom 14 would add 1,868 windows and half a minute). `make bench-clouds` measures, at
# CLOUDY_SCORE, 0.930 precision and 0.930 recall on these zooms (its ``by_zoom``) and
# 0.917 / 0.895 on the whole area; the floors sit a few points under, so a small change in
# rendering or validity masking passes while a real regression of the detector does not.
TEST_ZOOMS = [12, 13]
PRECISION_FLOOR = 0.88
RECALL_FLOOR = 0.86


@pytest.fixture(scope="module")
def scored(start_platform, tiny_model_dir: Path, pg_url: str) -> dict[str, np.ndarray]:
    """The Landsat area ingested through the API; its windows with scores and truth."""
    env = {
        "CLIPRS_TILE_SOURCES": json.dumps({LANDSAT_SOURCE: landsat_source_template()}),
        "CLIP_MODEL": str(tiny_model_dir),
    }
    with start_platform("clouds", env, health_only=True) as platform:
        ingested = ingest_area(platform, {**LANDSAT_AREA, "zooms": TEST_ZOOMS}, timeout_s=240)
    return area_windows(pg_url, ingested["area"]["id"])


def test_every_window_has_a_cloud_score_in_range(scored: dict[str, np.ndarray]) -> None:
    scores = scored["cloud_score"]
    assert scores.size > 400
    assert not np.isnan(scores).any(), "windows without a cloud_score"
    assert ((scores >= 0) & (scores <= 1)).all()


def test_cloudy_windows_precision_and_recall_against_the_bqa_band(scored: dict[str, np.ndarray]) -> None:
    figures = precision_recall(scored["cloud_score"], scored["truth"], CLOUDY_SCORE)
    print(
        f"\nLandsat 8, {scored['cloud_score'].size} windows, {figures['cloudy_windows']} cloudy "
        f"(truth >= {TRUTH_CLOUDY}); cloud_score >= {CLOUDY_SCORE}: "
        f"precision {figures['precision']:.3f}, recall {figures['recall']:.3f}"
    )
    # The scene is half cloud: both classes are well represented.
    assert 0.2 < figures["cloudy_windows"] / scored["cloud_score"].size < 0.6
    assert figures["precision"] >= PRECISION_FLOOR
    assert figures["recall"] >= RECALL_FLOOR


def test_clear_windows_score_low_and_cloudy_ones_high(scored: dict[str, np.ndarray]) -> None:
    scores, truth = scored["cloud_score"], scored["truth"]
    # Windows the BQA band calls (almost) clear are nearly never scored cloudy, and the score
    # follows the truth overall.
    assert np.mean(scores[truth < 0.1] >= CLOUDY_SCORE) < 0.02
    assert np.corrcoef(scores, truth)[0, 1] > 0.8
