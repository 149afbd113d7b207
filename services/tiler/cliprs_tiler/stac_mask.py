"""A STAC source's quality mask: the ``mask=ASSET&mask_kind=KIND`` options, and the mask of a
tile rendered over the same items as its pixels and decoded into the cache's mask sidecar.

The mask is read with rio-tiler's STAC reader and mosaic, over the items the tile was drawn
from, in the same order, on the same tile grid and size, with **nearest** resampling (a quality
band holds classes or bit fields, never to be averaged), then decoded by `cliprs.cloud_masks`:
0 clear, 1 cloud, 255 no data (the band's own no-data, or outside every item). The asset is
named, never guessed: a ``cloud`` role says which asset holds a mask but not how its values are
encoded (a pre-collection BQA and a Collection 2 QA_PIXEL share bits with other meanings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import pystac
from rio_tiler.errors import EmptyMosaicError, TileOutsideBounds
from rio_tiler.io import STACReader
from rio_tiler.models import ImageData
from rio_tiler.mosaic import mosaic_reader

from cliprs.cloud_masks import MASK_KINDS, decode_mask, encode_mask_png, mask_codes
from cliprs.errors import InvalidInput

MASK_OPTIONS = ("mask", "mask_kind")


@dataclass(frozen=True)
class MaskOption:
    """Which asset of every item is the quality mask, and how its values are decoded."""

    asset: str
    kind: str


def split_mask_options(name: str, template: str) -> tuple[str, MaskOption | None]:
    """``stac+…?…&mask=qa_pixel&mask_kind=landsat-bqa`` -> the template without the mask
    options, and the mask (None without ``mask=``); InvalidInput saying how to write them."""
    base, _, query = template.partition("?")
    given = dict(p for p in parse_qsl(query, keep_blank_values=True) if p[0] in MASK_OPTIONS)
    if not given:
        return template, None
    # The other options are kept as written (not decoded and encoded again).
    rest = [part for part in query.split("&") if part.split("=", 1)[0] not in MASK_OPTIONS]
    stripped = f"{base}?{'&'.join(rest)}" if rest else base
    asset, kind = given.get("mask", ""), given.get("mask_kind", "")
    if not asset or kind not in MASK_KINDS:
        raise InvalidInput(
            f"tile source {name!r}: a quality mask takes the asset and its decoding, e.g. "
            f"mask=qa_pixel&mask_kind=landsat-bqa; mask_kind is one of {', '.join(MASK_KINDS)}"
            f" (got mask={asset!r}, mask_kind={kind!r})"
        )
    return stripped, MaskOption(asset, kind)


def render_mask(
    items: list[pystac.Item], mask: MaskOption, x: int, y: int, z: int, size: int
) -> bytes | None:
    """The mask sidecar (PNG bytes) of tile ``z/x/y`` drawn from ``items`` (mosaic order); None
    when one of them lacks the mask asset or none has mask data there (the embedder then falls
    back to the RGB detector)."""
    if not items or any(mask.asset not in item.assets for item in items):
        return None
    try:
        image, _ = mosaic_reader(items, _read_mask, x, y, z, threads=0, assets=[mask.asset], tilesize=size)
    except EmptyMosaicError:
        return None
    cloud, no_data = decode_mask(mask.kind, image.data[0])
    return encode_mask_png(mask_codes(cloud, no_data | ~image.mask.astype(bool)))


def _read_mask(item: pystac.Item, x: int, y: int, z: int, **options: Any) -> ImageData:
    with STACReader(None, item=item) as reader:
        if not reader.tile_exists(x, y, z):
            raise TileOutsideBounds(f"item {item.id} is outside tile {z}/{x}/{y}")
        return reader.tile(x, y, z, reproject_method="nearest", **options)
