"""Embedder settings: work-unit limits and the window configuration checked at start-up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from cliprs.windows import WINDOWS_PER_TILE_LIMIT, plan_windows
from cliprs_embedder.settings import EmbedderSettings, checked_tile_sides


def test_defaults_are_accepted() -> None:
    s = EmbedderSettings()
    assert (s.lease_tiles, s.lease_s, s.write_windows, s.decode_workers, s.max_tile_side) == (
        256,
        60,
        16384,
        0,
        1024,
    )
    assert len(plan_windows(s.max_tile_side, s.window_scales + s.fine_scales, s.stride_ratio)) == 195


def test_a_configuration_beyond_the_id_space_is_refused_with_a_clear_message() -> None:
    scales = [1, 0.5, 0.25, 0.125, 0.0625]
    with pytest.raises(ValueError, match="exceeds"):  # what every tile would hit later
        plan_windows(1024, scales, 0.25)
    with pytest.raises(ValidationError) as info:
        EmbedderSettings(window_scales=scales, fine_scales=[], stride_ratio=0.25)
    message = str(info.value)
    for part in (
        "4757 windows",
        str(WINDOWS_PER_TILE_LIMIT),
        "EMBEDDER_WINDOW_SCALES",
        "EMBEDDER_FINE_SCALES",
        "EMBEDDER_STRIDE_RATIO",
        "start-up",
    ):
        assert part in message
    # Fine scales count too (high-zoom tiles get both lists).
    with pytest.raises(ValidationError, match="windows per tile"):
        EmbedderSettings(window_scales=[1, 0.5], fine_scales=[0.125, 0.0625], stride_ratio=0.25)
    # The same scales at a larger stride fit: 1 + 9 + 49 + 225 + 961.
    assert EmbedderSettings(window_scales=scales, fine_scales=[], stride_ratio=0.5).window_scales == scales


def test_the_configuration_is_checked_at_the_usual_tile_sides_too(monkeypatch) -> None:
    assert checked_tile_sides(1024) == [256, 512, 1024]
    assert checked_tile_sides(300) == [256, 300]
    assert checked_tile_sides(100) == [100]
    # Rounding: at stride 0.2 these scales cut 1814 windows from 256 px tiles, 1635 from 1024 px.
    scales = [1, 0.5, 0.25, 0.125]
    assert len(plan_windows(256, scales, 0.2)) == 1814 > len(plan_windows(1024, scales, 0.2)) == 1635
    monkeypatch.setattr("cliprs_embedder.settings.WINDOWS_PER_TILE_LIMIT", 1700)
    with pytest.raises(ValidationError, match="1814 windows from a 256 px tile"):
        EmbedderSettings(window_scales=scales, fine_scales=[], stride_ratio=0.2)


def test_environment_configuration_is_checked(monkeypatch) -> None:
    monkeypatch.setenv("EMBEDDER_WINDOW_SCALES", "[1, 0.5, 0.25, 0.125, 0.0625]")
    with pytest.raises(ValidationError, match="EMBEDDER_STRIDE_RATIO"):
        EmbedderSettings()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lease_tiles", 0),
        ("lease_s", 0),
        ("lease_s", -1),
        ("write_windows", 0),
        ("decode_workers", -1),
        ("max_tile_side", 0),
        ("stride_ratio", 0),
        ("window_scales", [1.5]),
    ],
)
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        EmbedderSettings(**{field: value})


def test_the_worker_refuses_to_start_with_such_a_configuration(tmp_path) -> None:
    # What `celery -A cliprs_embedder.tasks worker` imports first: it stops there, saying why,
    # instead of failing every tile later as "cannot decode cached tile".
    env = {**os.environ, "EMBEDDER_WINDOW_SCALES": "[1, 0.5, 0.25, 0.125, 0.0625]"}
    done = subprocess.run(
        [sys.executable, "-c", "import cliprs_embedder.tasks"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "windows per tile" in done.stderr and "EMBEDDER_WINDOW_SCALES" in done.stderr
