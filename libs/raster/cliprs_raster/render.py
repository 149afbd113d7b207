"""Render georeferenced rasters (GeoTIFF, COG, JP2; any CRS) as Web-Mercator XYZ tiles.

Reading, warping and the scene statistics are rio-tiler's; this module only decides which
bands make R, G and B, and applies one scene-wide percentile stretch so tiles match at their seams.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import MaskFlags, Resampling
from rasterio.io import DatasetReader
from rio_tiler.constants import WGS84_CRS
from rio_tiler.errors import NoOverviewWarning
from rio_tiler.io import Reader
from rio_tiler.models import ImageData

from cliprs.tiles import MAX_LATITUDE

# --format value -> (Pillow format name, file extension)
TILE_FORMATS: dict[str, tuple[str, str]] = {
    "png": ("PNG", "png"),
    "jpg": ("JPEG", "jpg"),
    "jpeg": ("JPEG", "jpg"),
    "webp": ("WEBP", "webp"),
}
# The stretch only needs the value distribution, so a decimated read is as good as a full one.
_STRETCH_SAMPLE_SIZE = 1024
_UINT8_LIMITS = (0.0, 255.0)
_BANDS_HINT = "give three single-band sources (red, green, blue) or one source with >= 3 bands"

# rio-tiler warns on every open of a big raster without overviews (Sentinel-2 JP2s, plain
# GeoTIFFs); they are read fine, and a warning per tile source would only bury real ones.
warnings.filterwarnings("ignore", category=NoOverviewWarning)

Source = DatasetReader | str | os.PathLike[str]
Limits = tuple[float, float]


class RasterScene:
    """The red, green and blue of one scene, read through rio-tiler.

    ``sources`` are three single-band rasters (red, green, blue) or one raster whose first three
    bands are R, G, B, as paths or open rasterio datasets (those stay open when the scene closes).
    ``nodata`` marks missing pixels; None means the first raster's own nodata value, else its
    internal mask or alpha band when it has one, else 0 (scenes delivered with black outside the
    imaged swath, such as Sentinel-2's JP2s, declare no nodata).
    Not thread-safe (GDAL handles are not): open one scene per thread.
    """

    def __init__(self, sources: Sequence[Source], nodata: float | None = None):
        if len(sources) not in (1, 3):
            raise ValueError(_BANDS_HINT)
        self._readers: list[Reader] = []
        self._owned: list[DatasetReader] = []  # opened here, so closed here
        try:
            for source in sources:
                if not isinstance(source, DatasetReader):
                    # Opened without `with`: a dataset used as a context manager holds a GDAL
                    # environment of the opening thread, and RasterSource may close it in another.
                    source = rasterio.open(os.fspath(source))
                    self._owned.append(source)
                self._readers.append(Reader(None, dataset=source))
        except BaseException:
            self.close()
            raise
        if len(self._readers) == 3:
            self._bands = [(reader, (1,)) for reader in self._readers]
        elif self._readers[0].dataset.count >= 3:
            self._bands = [(self._readers[0], (1, 2, 3))]
        else:
            self.close()
            raise ValueError(_BANDS_HINT)
        dataset = self._readers[0].dataset
        own = dataset.nodata
        masked = any(
            MaskFlags.per_dataset in flags or MaskFlags.alpha in flags for flags in dataset.mask_flag_enums
        )
        # None lets rio-tiler read the raster's own mask or alpha band.
        self.nodata: float | None = (
            nodata if nodata is not None else own if own is not None else None if masked else 0
        )

    def __enter__(self) -> RasterScene:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the datasets opened here (a reader's own extras, such as the warp of a
        GCP-referenced raster, go with the reader)."""
        owned, self._owned = self._owned, []
        for dataset in owned:
            dataset.close()

    @property
    def is_8bit(self) -> bool:
        """Whether every band is already display-ready bytes (then no stretch is needed)."""
        return all(reader.dataset.dtypes[0] == "uint8" for reader in self._readers)

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """The lon/lat box where every band raster has pixels (their intersection)."""
        boxes = [reader.get_geographic_bounds(WGS84_CRS) for reader in self._readers]
        w = max(b[0] for b in boxes)
        s = max(max(b[1] for b in boxes), -MAX_LATITUDE)
        e = min(b[2] for b in boxes)
        n = min(min(b[3] for b in boxes), MAX_LATITUDE)
        if w >= e or s >= n:
            raise ValueError("the band rasters do not overlap (or lie outside Web-Mercator's latitudes)")
        return w, s, e, n

    def stretch(self, lo: float = 2, hi: float = 98) -> list[Limits]:
        """Per-band (R, G, B) ``lo``–``hi`` percentiles over the whole scene, ignoring nodata."""
        limits: list[Limits] = []
        for reader, indexes in self._bands:
            stats = reader.statistics(
                percentiles=[lo, hi],
                max_size=_STRETCH_SAMPLE_SIZE,
                indexes=indexes,
                nodata=self.nodata,
                # Nearest keeps the value distribution honest (no smoothing of the extremes).
                resampling_method="nearest",
            )
            limits.extend(_percentile_limits(band.model_dump(), lo, hi) for band in stats.values())
        return limits

    def default_stretch(self) -> list[Limits]:
        """8-bit imagery as it is; anything else stretched to its scene-wide 2–98 percentiles."""
        return [_UINT8_LIMITS] * 3 if self.is_8bit else self.stretch()

    def read_tile(
        self, z: int, x: int, y: int, tile_size: int = 256, resampling: Resampling = Resampling.bilinear
    ) -> ImageData | None:
        """The raw R, G, B values of XYZ tile ``z/x/y`` (nodata masked), or None without data."""
        if not all(reader.tile_exists(x, y, z) for reader, _ in self._bands):
            return None  # far away: skip the warp entirely
        planes = [
            reader.tile(
                x,
                y,
                z,
                tilesize=tile_size,
                indexes=indexes,
                nodata=self.nodata,
                reproject_method=resampling.name,
            ).array
            for reader, indexes in self._bands
        ]
        data = np.ma.masked_invalid(np.ma.concatenate(planes))
        if data.mask.all():
            return None
        return ImageData(data)

    def render(
        self,
        z: int,
        x: int,
        y: int,
        tile_size: int = 256,
        *,
        stretch: Sequence[Limits] | None = None,
        resampling: Resampling = Resampling.bilinear,
        alpha: bool = False,
    ) -> Image.Image | None:
        """XYZ tile ``z/x/y`` as an RGB image (nodata black), or with ``alpha`` an RGBA image
        whose no-data is transparent (what the embedder reads as no-data); None when the tile
        holds no data at all."""
        if stretch is not None and len(stretch) != 3:
            raise ValueError(f"stretch needs limits for 3 bands, got {len(stretch)}")
        image = self.read_tile(z, x, y, tile_size, resampling)
        if image is None:
            return None
        apply_stretch(image, stretch or self.stretch())
        rgb = image.data_as_image()  # (H, W, 3) uint8, no-data black
        if not alpha:
            return Image.fromarray(rgb)
        return Image.fromarray(np.dstack([rgb, image.mask.astype(np.uint8)]), mode="RGBA")


@contextmanager
def _scene(sources: Sequence[Source] | RasterScene, nodata: float | None) -> Iterator[RasterScene]:
    """``sources`` as a scene: an open one is used as it is, paths are opened and closed here."""
    if isinstance(sources, RasterScene):
        yield sources
        return
    with RasterScene(sources, nodata) as scene:
        yield scene


def scene_stretch(
    sources: Sequence[Source] | RasterScene, lo: float = 2, hi: float = 98, nodata: float | None = 0
) -> list[Limits]:
    """Per-band (R, G, B) stretch limits over the whole scene, shared by every tile."""
    with _scene(sources, nodata) as scene:
        return scene.stretch(lo, hi)


def render_tile(
    sources: Sequence[Source] | RasterScene,
    z: int,
    x: int,
    y: int,
    tile_size: int = 256,
    *,
    stretch: Sequence[Limits] | None = None,
    nodata: float = 0,
    resampling: Resampling = Resampling.bilinear,
    alpha: bool = False,
) -> Image.Image | None:
    """Render XYZ tile ``z/x/y`` as an RGB image (RGBA with transparent no-data with
    ``alpha``), or None when it holds no data at all.

    ``sources``: see :class:`RasterScene` (or an open scene). Pass ``stretch`` (from
    :func:`scene_stretch`) when rendering many tiles: computing it per call makes every tile's
    brightness depend on that call, which shows as seams between tiles.
    """
    with _scene(sources, nodata) as scene:
        return scene.render(z, x, y, tile_size, stretch=stretch, resampling=resampling, alpha=alpha)


def percentile_stretch(
    band: np.ndarray, lo: float = 2, hi: float = 98, nodata: float | None = 0
) -> np.ndarray:
    """Stretch one band to uint8 between its own ``lo``–``hi`` percentiles; nodata and NaN stay 0."""
    values = np.array(band)  # a copy: the rescale below works in place
    masked = np.ma.masked_invalid(values) if values.dtype.kind == "f" else np.ma.masked_array(values)
    if nodata is not None:
        masked = np.ma.masked_where(values == nodata, masked)
    image = ImageData(masked[np.newaxis])
    limits = _percentile_limits(image.statistics(percentiles=[lo, hi])["b1"].model_dump(), lo, hi)
    return image.rescale(in_range=[_nonflat(limits)]).data[0]


def apply_stretch(image: ImageData, stretch: Sequence[Limits]) -> ImageData:
    """Rescale ``image`` in place to 8 bits, band ``i`` from ``stretch[i]`` (a flat band's limits
    become a step at its value); the one stretch of the tiles, the demo pyramid and the demo STAC
    catalog's COGs."""
    image.rescale(in_range=[_nonflat(limits) for limits in stretch])
    return image


def tile_format(fmt: str) -> tuple[str, str]:
    try:
        return TILE_FORMATS[fmt.lower()]
    except KeyError:
        raise ValueError(f"unsupported tile format {fmt!r}; use one of {sorted(TILE_FORMATS)}") from None


def _percentile_limits(stats: dict, lo: float, hi: float) -> Limits:
    """The percentiles from rio-tiler's band statistics; (0, 1) for a band without valid pixels."""
    vmin, vmax = stats[f"percentile_{int(lo)}"], stats[f"percentile_{int(hi)}"]
    if math.isnan(vmin) or math.isnan(vmax):
        return (0.0, 1.0)
    return float(vmin), float(vmax)


def _nonflat(limits: Limits) -> Limits:
    """A flat band would divide by zero; treat it as a step at its value instead."""
    vmin, vmax = limits
    return (vmin, vmax) if vmax > vmin else (vmin, vmin + 1.0)
