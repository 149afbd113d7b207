"""The RGB cloud detector on synthetic tiles: what it flags, what it does not, and the known
confusions it cannot avoid with three visible bands (validated on real imagery by
tests/test_clouds_landsat.py and `make bench-clouds`)."""

from __future__ import annotations

import numpy as np
import pytest

from cliprs.clouds import CLOUDY_SCORE, MIN_CHANNEL, cloud_mask
from cliprs.windows import window_fractions, window_plan


def flat(colour: tuple[int, int, int], size: int = 8) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (size, size, 3)).copy()


def test_a_white_cloud_on_vegetation_is_flagged_exactly() -> None:
    tile = flat((55, 95, 45), 256)  # green vegetation
    tile[64:192, 32:160] = (235, 238, 242)  # a bright, slightly bluish white blob
    mask = cloud_mask(tile)
    expected = np.zeros((256, 256), dtype=bool)
    expected[64:192, 32:160] = True
    np.testing.assert_array_equal(mask, expected)


def test_window_scores_follow_the_cloud_cover() -> None:
    tile = flat((40, 60, 35), 256)
    tile[:, :128] = (210, 212, 215)  # the left half under cloud
    boxes, _ = window_plan(256, (1.0, 0.5), 0.25)
    scores = window_fractions(cloud_mask(tile), boxes)
    assert scores[0] == pytest.approx(0.5)  # the whole tile
    left, right = boxes[:, 2] <= 128, boxes[:, 0] >= 128
    assert (scores[left] == 1).all() and (scores[right] == 0).all()
    assert (scores[left] >= CLOUDY_SCORE).all() and (scores[right] < CLOUDY_SCORE).all()


@pytest.mark.parametrize(
    ("name", "colour"),
    [
        ("bright white", (250, 250, 250)),
        ("light grey cloud", (180, 182, 188)),
        ("bluish cloud top", (200, 215, 235)),
        ("dim cloud edge", (MIN_CHANNEL, MIN_CHANNEL + 5, MIN_CHANNEL + 10)),
        ("near-saturated, blue lower than red", (255, 250, 240)),
    ],
)
def test_clouds_are_flagged(name: str, colour: tuple[int, int, int]) -> None:
    assert cloud_mask(flat(colour)).all(), name


@pytest.mark.parametrize(
    ("name", "colour"),
    [
        ("black no-data", (0, 0, 0)),
        ("forest", (30, 55, 25)),
        ("crops", (90, 150, 60)),
        ("deep water", (15, 35, 60)),
        ("turbid water", (70, 105, 110)),
        ("asphalt", (75, 75, 78)),  # grey but below the brightness floor
        ("red roof", (190, 70, 55)),
        ("yellow sand", (230, 210, 160)),  # too saturated
        ("pale beige field", (225, 205, 195)),  # white enough, but redder than blue
        ("bright blue pool", (120, 200, 240)),
    ],
)
def test_ground_is_not_flagged(name: str, colour: tuple[int, int, int]) -> None:
    assert not cloud_mask(flat(colour)).any(), name


@pytest.mark.parametrize(
    ("name", "colour"),
    [
        ("white sand", (240, 236, 228)),
        ("snow", (245, 248, 252)),
        ("white roof", (230, 232, 235)),
        ("concrete", (200, 200, 196)),
    ],
)
def test_known_confusions_bright_white_ground_is_flagged(name: str, colour: tuple[int, int, int]) -> None:
    # Three visible bands cannot tell these from cloud (Fmask needs SWIR and thermal bands):
    # documented in the README; a window of them is scored cloudy.
    assert cloud_mask(flat(colour)).all(), name


def test_thresholds_hold_at_their_edges_without_uint8_wraparound() -> None:
    just_dark = flat((MIN_CHANNEL - 1, MIN_CHANNEL + 5, MIN_CHANNEL + 5))
    assert not cloud_mask(just_dark).any()
    # Blue near 255: "B + 20" must saturate, not wrap to a small number and reject the pixel.
    assert cloud_mask(flat((255, 255, 250))).all()
    # Red 21 above blue is reddish, 20 above is not.
    assert not cloud_mask(flat((221, 215, 200))).any()
    assert cloud_mask(flat((220, 215, 200))).all()


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)],
)
def test_anything_but_uint8_rgb_is_refused(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        cloud_mask(pixels)
