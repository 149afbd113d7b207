"""STAC tile sources: a static catalog (``stac+file://``) or a STAC API (``stac+https://``),
searched when the source opens, rendered on demand with rio-tiler's STAC reader and mosaic.

Items are laid least cloudy first (``eo:cloud_cover`` ascending, unknown last, newest first on a
tie); each later item fills only where the earlier ones have no data (``combine=least-cloudy``),
or only the items of the date of the least cloudy item over the tile are used
(``combine=one-date``). One RGB asset (``assets=visual``) is taken as it is when 8-bit; band
assets (``assets=red,green,blue``) are rescaled by ``rescale=min,max``, or else by the 2–98
percentiles of the first item rendered, computed once so tiles do not seam. With
``mask=ASSET&mask_kind=KIND`` each tile also gets its quality mask, rendered over the same items
(`cliprs_tiler.stac_mask`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from typing import Any

import mercantile
import numpy as np
import pystac
import rasterio
from PIL import Image
from pystac_client.exceptions import APIError
from pystac_client.warnings import DoesNotConformTo
from rasterio.errors import RasterioError, RasterioIOError
from rio_tiler.errors import EmptyMosaicError, RioTilerError, TileOutsideBounds
from rio_tiler.io import STACReader
from rio_tiler.models import ImageData
from rio_tiler.mosaic import mosaic_reader
from shapely.geometry import MultiPolygon, Polygon, box

from cliprs.errors import InvalidInput, Unavailable
from cliprs_raster.render import Limits, RasterScene, apply_stretch, tile_format
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.source_base import (
    _REDACT,
    ALPHA_FORMATS,
    FetchedTile,
    ItemRecord,
    TileFetchError,
    TileNotFound,
    tile_options,
)
from cliprs_tiler.stac_mask import render_mask, split_mask_options
from cliprs_tiler.stac_search import ApiCatalog, Box, Found, StacQuery, StaticCatalog, parse_template

log = logging.getLogger("cliprs.tiler")

# An API is searched once per tile of this zoom (about 150 km) and the answer kept: an area's
# tiles then cost a handful of searches, not one each.
SEARCH_ZOOM = 8
# GDAL settings for COGs over HTTP: no directory listing per file, merged range requests.
_GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES"}


class StacSource:
    """A ``stac+file://`` or ``stac+http(s)://`` template as a tile source (see the module doc).

    Opening searches: a static catalog's items (all of them, or those over ``bbox=``) are read
    and filtered once; an API is searched over ``bbox=`` when given, else once for any item (to
    check that the search finds something) and then per region as tiles are asked for.
    """

    def __init__(self, name: str, template: str, settings: TilerSettings):
        self.name = name
        template, self.mask = split_mask_options(name, template)
        self.query: StacQuery = parse_template(name, template)
        self.tile_size, fmt = tile_options(name, self.query.options)
        self.pil_format, self.ext = tile_format(fmt)
        _REDACT.secrets.update(self.query.secrets())  # pystac-client logs request headers
        self._lock = threading.Lock()
        self._regions: dict[tuple[int, int, int], list[Found]] = {}
        self._stretch: tuple[Limits, ...] | None = self.query.rescale
        self._items: list[Found] | None = None  # every item, when one search covers the source
        self.catalog: StaticCatalog | ApiCatalog = (
            ApiCatalog(name, self.query, settings.timeout_s)
            if self.query.is_api
            else StaticCatalog(name, self.query)
        )
        self._check_assets(self._open_search())

    def _open_search(self) -> list[Found]:
        """The search made on opening; InvalidInput naming it when it finds nothing."""
        q = self.query
        if isinstance(self.catalog, StaticCatalog):
            items = self._items = self.catalog.search(q.bbox) if q.bbox else self.catalog.items
        else:
            try:
                # Without a bbox, one item anywhere shows the search finds something.
                items = self.catalog.search(q.bbox) if q.bbox else self.catalog.search(None, max_items=1)
            except (APIError, OSError) as exc:
                raise Unavailable(
                    f"tile source {self.name!r}: the search failed: {q.describe()}: {q.redact(str(exc))[:300]}"
                ) from None
            except (NotImplementedError, DoesNotConformTo):  # pystac-client raises the latter
                raise InvalidInput(
                    f"tile source {self.name!r}: {q.location} is not a STAC API with item search "
                    "(for a catalog on disk write stac+file:///path/catalog.json)"
                ) from None
            if q.bbox:
                self._items = items
        if not items:
            raise InvalidInput(
                f"tile source {self.name!r}: no STAC item matches the search: {q.describe()}; widen "
                "the datetime range, raise max_cloud or check the collection names"
            )
        return items

    def _check_assets(self, items: list[Found]) -> None:
        """InvalidInput listing the assets the items have when one asked for is missing."""
        wanted = (*self.query.assets, *([self.mask.asset] if self.mask else []))
        missing = sorted({a for f in items for a in wanted if a not in f.item.assets})
        if missing:
            common = set.intersection(*(set(f.item.assets) for f in items))
            raise InvalidInput(
                f"tile source {self.name!r}: no asset {', '.join(missing)} in the items found "
                f"({len(items)}, e.g. {items[0].id}); the assets they have: {', '.join(sorted(common))}"
            )

    # ----------------------------------------------------------------------- which items

    def _region(self, z: int, x: int, y: int) -> list[Found]:
        """The searched items around tile ``z/x/y`` (an API's answers are kept per region)."""
        if self._items is not None:
            return self._items
        assert isinstance(self.catalog, ApiCatalog)
        region = (
            mercantile.parent(mercantile.Tile(x, y, z), zoom=SEARCH_ZOOM) if z > SEARCH_ZOOM else (x, y, z)
        )
        key = (region[2], region[0], region[1])
        with self._lock:  # one search per region, even with many tiles of it in flight
            if key not in self._regions:
                bounds: Box = tuple(mercantile.bounds(*region))  # type: ignore[assignment]
                try:
                    found = self.catalog.search(bounds)
                except (APIError, OSError) as exc:
                    raise TileFetchError(
                        f"STAC search failed: {self.query.describe(bounds)}: {self.query.redact(str(exc))[:300]}",
                        retryable=True,
                    ) from None
                usable = [f for f in found if all(a in f.item.assets for a in self.query.assets)]
                if len(usable) < len(found):
                    log.warning(
                        "tile source %r: %d items lack the assets", self.name, len(found) - len(usable)
                    )
                self._regions[key] = usable
            return self._regions[key]

    def candidates(self, z: int, x: int, y: int) -> list[Found]:
        """The items over tile ``z/x/y`` in the order they are laid (see `combine`)."""
        area = box(*mercantile.bounds(x, y, z))
        items = [f for f in self._region(z, x, y) if f.footprint.intersects(area)]
        if self.query.combine == "one-date" and items:
            day = _day(items[0])
            items = [f for f in items if _day(f) == day]
        return items

    def items_at(self, z: int, x: int, y: int) -> list[str]:
        """Ids of the items tile ``z/x/y`` may be drawn from, in mosaic order (a fetched tile's
        ``items`` says which of them it was drawn from)."""
        return [f.id for f in self.candidates(z, x, y)]

    # ----------------------------------------------------------------------- pixels

    def render(self, z: int, x: int, y: int) -> tuple[bytes, tuple[ItemRecord, ...], bytes | None]:
        """The encoded tile, the items it was drawn from (in mosaic order) and its mask sidecar
        (None without ``mask=``); TileNotFound where no item (or no item's data) covers it."""
        items = self.candidates(z, x, y)
        if not items:
            raise TileNotFound(f"source {self.name!r} has no STAC item over tile {z}/{x}/{y}")
        try:
            with rasterio.Env(**_GDAL_ENV):
                image, used = mosaic_reader(
                    [f.item for f in items],
                    _read_item,
                    x,
                    y,
                    z,
                    threads=0,  # one item after the other: the mosaic stops once the tile is full
                    assets=list(self.query.assets),
                    tilesize=self.tile_size,
                )
        except EmptyMosaicError:
            raise TileNotFound(f"source {self.name!r} has no data in tile {z}/{x}/{y}") from None
        except (RioTilerError, RasterioError, ValueError) as exc:
            raise TileFetchError(
                f"reading the STAC assets failed ({type(exc).__name__}: {self.query.redact(str(exc))[:300]})",
                retryable=isinstance(exc, RasterioIOError),
            ) from None
        if not image.mask.any():
            raise TileNotFound(f"source {self.name!r} has no data in tile {z}/{x}/{y}")
        # The mosaic hands back the very items it was given, in their order, less the unused.
        drawn = [f for f in items if any(u is f.item for u in used)]
        mask = self._mask([f.item for f in drawn], z, x, y)
        return self._encode(image, used[0]), tuple(map(item_record, drawn)), mask

    def _mask(self, items: list[pystac.Item], z: int, x: int, y: int) -> bytes | None:
        """The tile's mask sidecar, read from the items its pixels were drawn from."""
        if self.mask is None:
            return None
        try:
            with rasterio.Env(**_GDAL_ENV):
                return render_mask(items, self.mask, x, y, z, self.tile_size)
        except (RioTilerError, RasterioError, ValueError) as exc:
            raise TileFetchError(
                f"reading the mask asset {self.mask.asset!r} failed ({type(exc).__name__}: "
                f"{self.query.redact(str(exc))[:300]})",
                retryable=isinstance(exc, RasterioIOError),
            ) from None

    def _encode(self, image: ImageData, first: pystac.Item) -> bytes:
        if image.count != 3:
            raise TileFetchError(
                f"assets {','.join(self.query.assets)} give {image.count} bands; give one RGB asset "
                "(assets=visual) or three band assets (assets=red,green,blue)"
            )
        if self.query.rescale is not None or image.data.dtype != np.uint8:
            apply_stretch(image, self._limits(first))
        rgb = image.data_as_image()
        if self.pil_format in ALPHA_FORMATS:
            picture = Image.fromarray(np.dstack([rgb, image.mask.astype(np.uint8)]), mode="RGBA")
        else:
            picture = Image.fromarray(rgb)
        buf = io.BytesIO()
        picture.save(buf, format=self.pil_format)
        return buf.getvalue()

    def _limits(self, first: pystac.Item) -> tuple[Limits, ...]:
        """``rescale=``, else the 2–98 percentiles of the first item rendered (computed once)."""
        with self._lock:
            if self._stretch is None:
                hrefs = [
                    first.assets[a].get_absolute_href() or first.assets[a].href for a in self.query.assets
                ]
                with rasterio.Env(**_GDAL_ENV), RasterScene(hrefs, nodata=None) as scene:
                    self._stretch = tuple(scene.stretch())
            return self._stretch

    async def fetch(self, z: int, x: int, y: int) -> FetchedTile:
        data, drawn_from, mask = await asyncio.to_thread(self.render, z, x, y)
        return FetchedTile(data, self.ext, self.tile_size, drawn_from, mask)

    async def aclose(self) -> None:
        return None


def _read_item(item: pystac.Item, x: int, y: int, z: int, **options: Any) -> ImageData:
    """One item's assets over tile ``z/x/y`` (rio-tiler's STAC reader; bilinear, as the
    ``geotiff://`` sources warp)."""
    with STACReader(None, item=item) as reader:
        if not reader.tile_exists(x, y, z):
            raise TileOutsideBounds(f"item {item.id} is outside tile {z}/{x}/{y}")
        return reader.tile(x, y, z, reproject_method="bilinear", **options)


def item_record(found: Found) -> ItemRecord:
    """What PostGIS records of an item a tile was drawn from (its footprint as a MultiPolygon;
    None when the item has neither geometry nor bbox, or a footprint that is no polygon)."""
    footprint = found.footprint if found.item.geometry or found.item.bbox else None
    if isinstance(footprint, Polygon):
        footprint = MultiPolygon([footprint])
    return ItemRecord(
        id=found.id,
        collection=found.item.collection_id,
        acquired_at=found.when,
        cloud_cover=found.cloud,
        footprint_wkt=footprint.wkt if isinstance(footprint, MultiPolygon) else None,
    )


def _day(item: Found) -> str:
    return item.when.date().isoformat() if item.when else ""
