"""Decoding cached tiles: pixels, the no-data mask (alpha, a palette's transparency, a painted
colour, a source's quality mask) and each window's valid fraction and cloud score (from the
tile's mask sidecar when it has one, else the RGB detector)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliprs.cloud_masks import CLEAR, CLOUD, NO_DATA, encode_mask_png
from cliprs.clouds import cloud_mask
from cliprs.settings import NoData
from cliprs.tilecache import find_tile, mask_sidecar, store_tile
from cliprs.windows import window_plan
from cliprs_embedder.decode import decode_tile

SCALES = (1.0, 0.5)
STRIDE = 0.25


def field(side: int = 256) -> np.ndarray:
    """A green-brown textured field: imagery that is neither no-data nor cloud."""
    rng = np.random.default_rng(3)
    base = np.array([70, 100, 50], dtype=np.int16)
    return np.clip(base + rng.integers(-20, 20, (side, side, 3)), 0, 255).astype(np.uint8)


def expected_valid(valid: np.ndarray) -> np.ndarray:
    boxes, _ = window_plan(valid.shape[0], SCALES, STRIDE)
    return np.array([valid[y0:y1, x0:x1].mean() for x0, y0, x1, y1 in boxes])


def test_alpha_marks_no_data_and_is_dropped_from_the_pixels(tmp_path: Path) -> None:
    rgb = field()
    alpha = np.full((256, 256), 255, dtype=np.uint8)
    alpha[:, :127] = 0  # a scene edge: the left half has no imagery
    alpha[:, 127] = 127  # half-transparent edge pixels count as no-data
    rgb[:, :128] = 0
    path = tmp_path / "t.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    decoded = decode_tile(path, SCALES, STRIDE)
    assert decoded.error is None and decoded.pixels is not None
    assert decoded.pixels.shape == (256, 256, 3)
    np.testing.assert_array_equal(decoded.pixels, rgb)
    np.testing.assert_allclose(decoded.valid_fraction, expected_valid(alpha >= 128))
    assert decoded.valid_fraction.min() == 0.0 and decoded.valid_fraction.max() == 1.0
    # Cloud scores are shares of valid pixels: a window with none has 0, not NaN.
    assert decoded.cloud_score is not None and np.isfinite(decoded.cloud_score).all()


def test_palette_transparency_marks_no_data(tmp_path: Path) -> None:
    index = np.ones((256, 256), dtype=np.uint8)
    index[128:] = 0  # the bottom half is the transparent palette entry
    image = Image.fromarray(index, "P")
    image.putpalette([0, 0, 0, 60, 110, 40] + [0] * 762)
    path = tmp_path / "t.png"
    image.save(path, transparency=0)
    decoded = decode_tile(path, SCALES, STRIDE)
    np.testing.assert_allclose(decoded.valid_fraction, expected_valid(index == 1))


def test_a_painted_no_data_colour_within_the_tolerance(tmp_path: Path) -> None:
    rgb = field()
    rgb[:64] = 0
    rgb[64:128, :128] = 5  # JPEG-ish near-black still counts as painted no-data
    path = tmp_path / "t.png"
    Image.fromarray(rgb).save(path)
    painted = np.zeros((256, 256), dtype=bool)
    painted[:64] = True
    painted[64:128, :128] = True
    decoded = decode_tile(path, SCALES, STRIDE, NoData((0, 0, 0), tolerance=8))
    np.testing.assert_allclose(decoded.valid_fraction, expected_valid(~painted))
    strict = decode_tile(path, SCALES, STRIDE, NoData((0, 0, 0), tolerance=0))
    painted[64:128, :128] = False
    np.testing.assert_allclose(strict.valid_fraction, expected_valid(~painted))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_opaque_tiles_are_all_valid(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"t.{fmt.lower()}"
    Image.fromarray(field()).save(path, format=fmt)
    decoded = decode_tile(path, SCALES, STRIDE)
    boxes, _ = window_plan(256, SCALES, STRIDE)
    assert decoded.valid_fraction is not None and len(decoded.valid_fraction) == len(boxes)
    assert (decoded.valid_fraction == 1.0).all()


def test_a_white_cloud_scores_its_windows_and_not_the_others(tmp_path: Path) -> None:
    rgb = field()
    rgb[:128, :128] = 245  # a bright white blob in the top-left quarter
    path = tmp_path / "t.png"
    Image.fromarray(rgb).save(path)
    decoded = decode_tile(path, SCALES, STRIDE)
    boxes, _ = window_plan(256, SCALES, STRIDE)
    scores = dict(zip(map(tuple, boxes.tolist()), decoded.cloud_score, strict=True))
    assert scores[(0, 0, 128, 128)] > 0.9  # the window on the blob
    assert scores[(128, 128, 256, 256)] < 0.05  # the window on the field
    assert 0.15 < scores[(0, 0, 256, 256)] < 0.35  # the whole tile: a quarter


def test_an_unreadable_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "t.png"
    path.write_bytes(b"not an image")
    decoded = decode_tile(path, SCALES, STRIDE)
    assert decoded.pixels is None and "cannot decode" in (decoded.error or "")


# --------------------------------------------------------------------------- a source's quality mask


def write_tile_with_mask(tmp_path: Path, rgba: np.ndarray, codes: np.ndarray | None) -> Path:
    """A cached tile as the tiler stores it (`store_tile`), with its mask sidecar when given."""
    store_tile(tmp_path, "s", 12, 1, 2, "png", _png(rgba), None if codes is None else encode_mask_png(codes))
    path = find_tile(tmp_path, "s", 12, 1, 2)
    assert path is not None
    return path


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def test_a_mask_sidecar_gives_the_cloud_score_and_joins_the_no_data(tmp_path: Path) -> None:
    # Dark fields that the RGB detector never flags, under a mask that says the top half is cloud
    # and the right quarter has no data (the quality band's fill), beside alpha no-data on the left.
    alpha = np.full((256, 256), 255, np.uint8)
    alpha[:, :32] = 0
    codes = np.full((256, 256), CLEAR, np.uint8)
    codes[:128] = CLOUD
    codes[:, 192:] = NO_DATA
    path = write_tile_with_mask(tmp_path, np.dstack([field(), alpha]), codes)
    decoded = decode_tile(path, SCALES, STRIDE)
    valid = (alpha >= 128) & (codes != NO_DATA)
    np.testing.assert_allclose(decoded.valid_fraction, expected_valid(valid))
    boxes, _ = window_plan(256, SCALES, STRIDE)
    cloud = codes == CLOUD
    expected = [cloud[y0:y1, x0:x1][valid[y0:y1, x0:x1]].mean() for x0, y0, x1, y1 in boxes]
    np.testing.assert_allclose(decoded.cloud_score, expected)
    # The whole tile's window: half of its valid pixels are cloud by the mask, none by the RGB.
    assert decoded.cloud_score[0] == pytest.approx(0.5)
    assert not cloud_mask(decoded.pixels).any()


def test_a_clear_looking_tile_is_cloudy_when_its_mask_says_so(tmp_path: Path) -> None:
    rgba = np.dstack([field(), np.full((256, 256), 255, np.uint8)])
    masked = decode_tile(
        write_tile_with_mask(tmp_path, rgba, np.full((256, 256), CLOUD, np.uint8)), SCALES, STRIDE
    )
    assert (masked.cloud_score == 1.0).all() and (masked.valid_fraction == 1.0).all()


def test_without_a_sidecar_the_rgb_detector_scores_as_before(tmp_path: Path) -> None:
    rgb = field()
    rgb[:, :128] = 235  # white cloud on the left half
    rgba = np.dstack([rgb, np.full((256, 256), 255, np.uint8)])
    plain = tmp_path / "plain.png"
    Image.fromarray(rgba, "RGBA").save(plain)
    cached = write_tile_with_mask(tmp_path, rgba, None)
    assert not mask_sidecar(cached).exists()
    for decoded in (decode_tile(plain, SCALES, STRIDE), decode_tile(cached, SCALES, STRIDE)):
        boxes, _ = window_plan(256, SCALES, STRIDE)
        flagged = cloud_mask(rgb)
        np.testing.assert_allclose(
            decoded.cloud_score, [flagged[y0:y1, x0:x1].mean() for x0, y0, x1, y1 in boxes]
        )
        assert decoded.cloud_score[0] == pytest.approx(0.5)


def test_a_sidecar_of_another_size_is_ignored(tmp_path: Path) -> None:
    rgba = np.dstack([field(), np.full((256, 256), 255, np.uint8)])
    decoded = decode_tile(
        write_tile_with_mask(tmp_path, rgba, np.full((128, 128), CLOUD, np.uint8)), SCALES, STRIDE
    )
    assert (decoded.cloud_score == 0).all()
