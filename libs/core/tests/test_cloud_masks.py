"""Quality-mask decoding (Landsat pre-collection BQA and Collection 2 QA_PIXEL, Sentinel-2 SCL)
on hand-made values, and the mask sidecar beside a cached tile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cliprs.cloud_masks import (
    CLEAR,
    CLOUD,
    NO_DATA,
    decode_mask,
    encode_mask_png,
    mask_codes,
    read_mask_png,
)
from cliprs.tilecache import find_tile, mask_sidecar, store_tile


def conf(cloud: int = 0, cirrus: int = 0, fill: int = 0) -> int:
    """A pre-collection BQA value: two-bit cloud (14-15) and cirrus (12-13) confidences."""
    return cloud << 14 | cirrus << 12 | fill


def test_landsat_bqa_is_cloud_medium_or_high_or_cirrus_high_and_fill_is_no_data() -> None:
    values = np.array(
        [
            conf(),  # 0: nothing determined
            conf(cloud=1),  # low cloud: clear
            conf(cloud=2),  # medium cloud
            conf(cloud=3),  # high cloud
            conf(cirrus=2),  # medium cirrus: clear
            conf(cirrus=3),  # high cirrus
            20480,  # 0b0101_0000_0000_0000: low cloud, low cirrus (the scene's clear value)
            1,  # fill
            conf(cloud=1, cirrus=1) | 0b11 << 4,  # water bits do not matter
        ],
        dtype=np.uint16,
    )
    cloud, no_data = decode_mask("landsat-bqa", values)
    assert cloud.tolist() == [False, False, True, True, False, True, False, False, False]
    assert no_data.tolist() == [False] * 7 + [True, False]


def test_landsat_c2_qa_pixel_is_dilated_cloud_cirrus_or_cloud_bits() -> None:
    # bit 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 shadow, 6 clear, 7 water
    values = np.array([1, 0b10, 0b100, 0b1000, 0b1_0000, 0b100_0000, 0b1000_0000, 21824], np.uint16)
    cloud, no_data = decode_mask("landsat-c2", values)
    assert cloud.tolist() == [False, True, True, True, False, False, False, False]
    assert no_data.tolist() == [True] + [False] * 7


def test_scl_cloud_classes_and_no_data() -> None:
    scl = np.arange(12, dtype=np.uint8).reshape(3, 4)
    cloud, no_data = decode_mask("scl", scl)
    assert np.flatnonzero(cloud).tolist() == [3, 8, 9, 10]
    assert np.flatnonzero(no_data).tolist() == [0]
    assert cloud.shape == no_data.shape == (3, 4)


def test_an_unknown_kind_names_the_kinds() -> None:
    with pytest.raises(ValueError, match="landsat-bqa, landsat-c2, scl"):
        decode_mask("fmask", np.zeros(3))


def test_codes_round_trip_through_the_png_and_no_data_wins(tmp_path: Path) -> None:
    cloud = np.array([[True, False], [True, False]])
    no_data = np.array([[False, False], [True, True]])
    codes = mask_codes(cloud, no_data)
    assert codes.tolist() == [[CLOUD, CLEAR], [NO_DATA, NO_DATA]]
    path = tmp_path / "m.png"
    path.write_bytes(encode_mask_png(codes))
    np.testing.assert_array_equal(read_mask_png(path), codes)


def test_the_sidecar_is_written_beside_the_tile_and_a_stale_one_removed(tmp_path: Path) -> None:
    mask = encode_mask_png(np.ones((4, 4), np.uint8))
    store_tile(tmp_path, "s", 3, 2, 1, "png", b"tile", mask)
    tile = find_tile(tmp_path, "s", 3, 2, 1)
    assert tile == tmp_path / "s/3/2/1.png"
    assert mask_sidecar(tile) == tmp_path / "s/3/2/1.mask.png"
    assert mask_sidecar(tile).read_bytes() == mask
    # Written again without a mask (the source lost its mask= option): no stale sidecar stays.
    store_tile(tmp_path, "s", 3, 2, 1, "png", b"tile")
    assert not mask_sidecar(tile).exists()
    assert sorted(p.name for p in (tmp_path / "s/3/2").iterdir()) == ["1.png"]
