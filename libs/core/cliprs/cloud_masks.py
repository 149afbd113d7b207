"""Cloud and no-data from a source's own quality mask, and the mask sidecar that carries it.

A STAC item may hold a quality band that says, pixel by pixel, what is cloud and what is no
data. Its decoding is named by a **mask kind** (the bits are not self-describing: a Landsat
pre-collection BQA and a Collection 2 ``QA_PIXEL`` use the same bits for different things):

- ``landsat-bqa``: the pre-collection Landsat 8 BQA band (the demo scene's ``qa_pixel`` asset).
  Two-bit confidences (00 not determined, 01 low, 10 medium, 11 high) in bits 14-15 (cloud) and
  12-13 (cirrus); bit 0 is fill. Cloud = cloud confidence medium or high, or cirrus confidence
  high (the truth of ``make bench-clouds``, see `cliprs_tools.landsat`); no data = fill.
- ``landsat-c2``: Landsat Collection 2 ``QA_PIXEL`` (Earth Search, the Planetary Computer).
  Single bits: 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud. Cloud = any of bits 1-3; no data = fill.
- ``scl``: the Sentinel-2 L2A scene classification. Cloud = classes 3 (cloud shadow), 8 (cloud,
  medium probability), 9 (cloud, high probability), 10 (thin cirrus); no data = class 0.

The tiler decodes the mask of each tile it renders into the **mask sidecar**, an 8-bit
greyscale PNG beside the tile in the cache (`cliprs.tilecache.mask_sidecar`): `CLEAR` (0),
`CLOUD` (1) or `NO_DATA` (255) per pixel, on the tile's own pixel grid. The embedder reads it
in place of the RGB detector (`cliprs.clouds`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLEAR, CLOUD, NO_DATA = 0, 1, 255
SCL_CLOUD_CLASSES = (3, 8, 9, 10)  # cloud shadow, cloud medium / high probability, thin cirrus
SCL_NO_DATA = 0


def _confidence(qa: np.ndarray, bit: int) -> np.ndarray:
    return (qa >> bit) & 0b11


def bqa_parts(qa: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of pre-collection BQA values: ``cloud`` (cloud confidence medium or high,
    or cirrus confidence high), and its parts ``cloud_bits`` and ``cirrus_high``."""
    qa = np.asarray(qa, dtype=np.uint16)
    cloud_bits = _confidence(qa, 14) >= 0b10
    cirrus_high = _confidence(qa, 12) == 0b11
    return {"cloud": cloud_bits | cirrus_high, "cloud_bits": cloud_bits, "cirrus_high": cirrus_high}


def _landsat_bqa(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    qa = np.asarray(values, dtype=np.uint16)
    return bqa_parts(qa)["cloud"], (qa & 1) == 1


def _landsat_c2(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    qa = np.asarray(values, dtype=np.uint16)
    return (qa & 0b1110) != 0, (qa & 1) == 1


def _scl(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scl = np.asarray(values)
    return np.isin(scl, SCL_CLOUD_CLASSES), scl == SCL_NO_DATA


_DECODERS = {"landsat-bqa": _landsat_bqa, "landsat-c2": _landsat_c2, "scl": _scl}
MASK_KINDS = tuple(_DECODERS)


def decode_mask(kind: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A quality band's values -> (cloud, no_data), two boolean arrays of its shape."""
    if kind not in _DECODERS:
        raise ValueError(f"unknown mask kind {kind!r}; the kinds are {', '.join(MASK_KINDS)}")
    return _DECODERS[kind](values)


def mask_codes(cloud: np.ndarray, no_data: np.ndarray) -> np.ndarray:
    """(H, W) uint8 codes of the sidecar: `NO_DATA` wins over `CLOUD`, else `CLEAR`."""
    codes = np.where(cloud, CLOUD, CLEAR).astype(np.uint8)
    codes[no_data] = NO_DATA
    return codes


def encode_mask_png(codes: np.ndarray) -> bytes:
    """The sidecar's bytes: the codes as an 8-bit greyscale PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(codes, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def read_mask_png(path: Path) -> np.ndarray:
    """A sidecar's (H, W) uint8 codes."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)
