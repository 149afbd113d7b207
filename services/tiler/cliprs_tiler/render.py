"""Render georeferenced rasters (GeoTIFF, JP2, ...) into a Web-Mercator XYZ tile pyramid."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import mercantile
import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

WEB_MERCATOR = "EPSG:3857"
MAX_LATITUDE = 85.0511287798066  # Web-Mercator stops here; mercantile.tiles misbehaves beyond it
# --format value -> (Pillow format name, file extension)
TILE_FORMATS: dict[str, tuple[str, str]] = {
    "png": ("PNG", "png"),
    "jpg": ("JPEG", "jpg"),
    "jpeg": ("JPEG", "jpg"),
    "webp": ("WEBP", "webp"),
}
# The stretch only needs the value distribution, so a decimated read is as good as a full one.
_STRETCH_SAMPLE_SIZE = 1024

Source = DatasetReader | str | os.PathLike[str]
Limits = tuple[float, float]


def stretch_limits(band: np.ndarray, lo: float = 2, hi: float = 98, nodata: float | None = 0) -> Limits:
    """The ``lo`` and ``hi`` percentiles of ``band``, ignoring ``nodata`` and NaN pixels."""
    values = np.asarray(band).ravel()
    keep = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(values.shape, bool)
    if nodata is not None:
        keep &= values != nodata
    values = values[keep]
    if values.size == 0:
        return (0.0, 1.0)
    vmin, vmax = np.percentile(values, [lo, hi])
    return float(vmin), float(vmax)


def apply_stretch(band: np.ndarray, limits: Limits, nodata: float | None = 0) -> np.ndarray:
    """Map ``limits`` linearly onto 0..255 (clipped); nodata and NaN pixels become 0."""
    vmin, vmax = limits
    # A flat band would divide by zero; treat it as a step at vmin instead.
    span = vmax - vmin if vmax > vmin else 1.0
    data = np.asarray(band, dtype=np.float32)
    out = np.clip((data - vmin) * (255.0 / span), 0.0, 255.0)
    out = np.nan_to_num(out, nan=0.0)
    if nodata is not None:
        out[data == nodata] = 0.0
    return np.round(out).astype(np.uint8)


def percentile_stretch(
    band: np.ndarray, lo: float = 2, hi: float = 98, nodata: float | None = 0
) -> np.ndarray:
    """Stretch one band to uint8 between its own ``lo``–``hi`` percentiles, ignoring nodata."""
    return apply_stretch(band, stretch_limits(band, lo, hi, nodata), nodata)


@contextmanager
def _opened(sources: Sequence[Source]) -> Iterator[list[DatasetReader]]:
    """Yield datasets for ``sources``, opening (and later closing) only those given as paths."""
    with ExitStack() as stack:
        yield [s if isinstance(s, DatasetReader) else stack.enter_context(rasterio.open(s)) for s in sources]


def band_plan(datasets: Sequence[DatasetReader]) -> list[tuple[DatasetReader, list[int]]]:
    """Which bands of which dataset make R, G and B, grouped by dataset (one warp each)."""
    if len(datasets) == 3:
        return [(ds, [1]) for ds in datasets]
    if len(datasets) == 1 and datasets[0].count >= 3:
        return [(datasets[0], [1, 2, 3])]
    raise ValueError("give three single-band sources (red, green, blue) or one source with >= 3 bands")


def scene_stretch(
    sources: Sequence[Source], lo: float = 2, hi: float = 98, nodata: float | None = 0
) -> list[Limits]:
    """Per-band (R, G, B) stretch limits over the whole scene, shared by every tile."""
    limits: list[Limits] = []
    with _opened(sources) as datasets:
        for ds, indexes in band_plan(datasets):
            scale = max(ds.width, ds.height) / _STRETCH_SAMPLE_SIZE
            shape = (
                (max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
                if scale > 1
                else (ds.height, ds.width)
            )
            # Nearest keeps the value distribution honest (no smoothing of the extremes).
            sample = ds.read(indexes, out_shape=(len(indexes), *shape), resampling=Resampling.nearest)
            limits.extend(stretch_limits(plane, lo, hi, nodata) for plane in sample)
    return limits


def _lonlat_bounds(datasets: Sequence[DatasetReader]) -> tuple[float, float, float, float]:
    """The lon/lat box where all datasets have pixels (their intersection)."""
    boxes = [transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21) for ds in datasets]
    w = max(b[0] for b in boxes)
    s = max(max(b[1] for b in boxes), -MAX_LATITUDE)
    e = min(b[2] for b in boxes)
    n = min(min(b[3] for b in boxes), MAX_LATITUDE)
    if w >= e or s >= n:
        raise ValueError("the band rasters do not overlap (or lie outside Web-Mercator's latitudes)")
    return w, s, e, n


def _touches_data(datasets: Sequence[DatasetReader], tile_bounds: mercantile.Bbox) -> bool:
    """Cheap box test so far-away tiles skip the warp entirely."""
    for ds in datasets:
        left, bottom, right, top = transform_bounds(ds.crs, WEB_MERCATOR, *ds.bounds, densify_pts=21)
        if (
            right <= tile_bounds.left
            or left >= tile_bounds.right
            or top <= tile_bounds.bottom
            or bottom >= tile_bounds.top
        ):
            return False
    return True


def render_tile(
    sources: Sequence[Source],
    z: int,
    x: int,
    y: int,
    tile_size: int = 256,
    *,
    stretch: Sequence[Limits] | None = None,
    nodata: float = 0,
    resampling: Resampling = Resampling.bilinear,
) -> Image.Image | None:
    """Render XYZ tile ``z/x/y`` as an RGB image, or None when it holds no data at all.

    ``sources`` are three single-band rasters (red, green, blue) or one raster whose first
    three bands are R, G, B, as paths or open datasets. Pass ``stretch`` (from
    :func:`scene_stretch`) when rendering many tiles: computing it per call makes every
    tile's brightness depend on that call, which shows as seams between tiles.
    """
    with _opened(sources) as datasets:
        plan = band_plan(datasets)
        bounds = mercantile.xy_bounds(x, y, z)
        if not _touches_data(datasets, bounds):
            return None
        if stretch is None:
            stretch = scene_stretch(datasets, nodata=nodata)
        if len(stretch) != 3:
            raise ValueError(f"stretch needs limits for 3 bands, got {len(stretch)}")
        # Built directly: rasterio's from_bounds() warns (affine's `*` deprecation) on every tile.
        res_x = (bounds.right - bounds.left) / tile_size
        res_y = (bounds.top - bounds.bottom) / tile_size
        transform = Affine(res_x, 0.0, bounds.left, 0.0, -res_y, bounds.top)
        planes: list[np.ndarray] = []
        for ds, indexes in plan:
            # The VRT grid *is* the tile grid, so GDAL warps straight into the tile's pixels.
            with WarpedVRT(
                ds,
                crs=WEB_MERCATOR,
                transform=transform,
                width=tile_size,
                height=tile_size,
                resampling=resampling,
                src_nodata=nodata,
                nodata=nodata,
            ) as vrt:
                planes.extend(vrt.read(indexes))
    if all(not np.any(plane != nodata) for plane in planes):
        return None
    rgb = np.dstack(
        [apply_stretch(plane, limits, nodata) for plane, limits in zip(planes, stretch, strict=True)]
    )
    return Image.fromarray(rgb)  # (H, W, 3) uint8 is RGB


def tile_format(fmt: str) -> tuple[str, str]:
    try:
        return TILE_FORMATS[fmt.lower()]
    except KeyError:
        raise ValueError(f"unsupported tile format {fmt!r}; use one of {sorted(TILE_FORMATS)}") from None
