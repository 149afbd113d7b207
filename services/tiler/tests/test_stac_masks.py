"""A STAC source's quality mask (``mask=qa_pixel&mask_kind=landsat-bqa``): rendered per tile over
the same items as the pixels and written beside the tile as its mask sidecar, which must agree
with the Landsat scene's own BQA band read on the same grid; sources without a mask write none."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import mercantile
import numpy as np
import pytest
from fastapi.testclient import TestClient
from rio_tiler.io import Reader

from cliprs.cloud_masks import CLOUD, NO_DATA, decode_mask, read_mask_png
from cliprs.db.engine import sync_engine
from cliprs.errors import InvalidInput
from cliprs.settings import CoreSettings
from cliprs.tilecache import find_tile, mask_sidecar
from cliprs_raster.samples import sample_files
from cliprs_testing.factories import make_area, make_job
from cliprs_tiler.app import create_app
from cliprs_tiler.fetch import fetch_job
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.sources import open_source
from cliprs_tiler.stac_mask import MaskOption, split_mask_options

# The Landsat item's extent (the scene, lon/lat), and its bands with the BQA as the mask.
LANDSAT_BBOX = (-87.4968, 30.6467, -87.2997, 30.8106)
LANDSAT_MASKED = "?collections=demo-landsat-8&assets=red,green,blue&mask=qa_pixel&mask_kind=landsat-bqa"


def bqa_truth(z: int, x: int, y: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(cloud, in scene) of tile ``z/x/y`` from the scene's original BQA file, read on the
    tile's grid with nearest resampling (how `cliprs_tools.landsat.BqaTruth` reads it)."""
    path = sample_files(("data", "landsat8", "small_full_data_cloudy"), ["l8_BQA.tif"], "the Landsat BQA")[0]
    with Reader(str(path)) as reader:
        data = reader.tile(x, y, z, tilesize=size, indexes=1, reproject_method="nearest").array
    cloud, _ = decode_mask("landsat-bqa", data.data[0])
    return cloud, ~np.ma.getmaskarray(data)[0]


def with_source(core: CoreSettings, name: str, template: str) -> CoreSettings:
    return CoreSettings(**core.model_dump(exclude={"tile_sources"}), tile_sources={name: template})


def ingest(core: CoreSettings, source: str, zooms: list[int], bbox: Any) -> dict:
    with sync_engine(core.database_url).begin() as conn:
        job_id = make_job(conn, make_area(conn, name=source, zooms=zooms, source=source, bbox=tuple(bbox)))
    return asyncio.run(fetch_job(job_id, core, TilerSettings(), lambda _job, _ids: None))


def test_mask_options_say_how_to_write_them(demo_stac: Path) -> None:
    base = f"stac+file://{demo_stac}?collections=demo-landsat-8&assets=visual"
    assert split_mask_options("s", base) == (base, None)
    stripped, mask = split_mask_options("s", f"{base}&mask=qa_pixel&mask_kind=landsat-bqa&tile_size=512")
    assert stripped == f"{base}&tile_size=512" and mask == MaskOption("qa_pixel", "landsat-bqa")
    for bad in ("&mask=qa_pixel", "&mask_kind=scl", "&mask=qa_pixel&mask_kind=fmask"):
        with pytest.raises(
            InvalidInput, match=r"mask=qa_pixel&mask_kind=landsat-bqa.*landsat-bqa, landsat-c2, scl"
        ):
            open_source("s", CoreSettings(tile_sources={"s": base + bad}), TilerSettings())
    # A mask asset the items lack is refused like any missing asset, listing those they have.
    with pytest.raises(InvalidInput, match=r"no asset scl in the items found.*qa_pixel"):
        open_source("s", CoreSettings(tile_sources={"s": f"{base}&mask=scl&mask_kind=scl"}), TilerSettings())


def test_the_landsat_tiles_mask_sidecars_agree_with_the_bqa(
    core_settings: CoreSettings, demo_stac: Path
) -> None:
    core = with_source(core_settings, "l8stac", f"stac+file://{demo_stac}{LANDSAT_MASKED}")
    counts = ingest(core, "l8stac", [12, 13], LANDSAT_BBOX)
    assert counts["tiles_fetched"] == counts["tiles_planned"] > 0
    agree = total = cloudy = 0
    for t in mercantile.tiles(*LANDSAT_BBOX, zooms=[12, 13]):
        tile = find_tile(core.tile_cache_dir, "l8stac", t.z, t.x, t.y)
        assert tile is not None and mask_sidecar(tile).exists()
        codes = read_mask_png(mask_sidecar(tile))
        cloud, in_scene = bqa_truth(t.z, t.x, t.y, codes.shape[0])
        # No data exactly outside the scene; inside, the sidecar's cloud is the BQA's.
        assert ((codes == NO_DATA) == ~in_scene).mean() >= 0.99
        both = in_scene & (codes != NO_DATA)
        agree += int(((codes == CLOUD) == cloud)[both].sum())
        total += int(both.sum())
        cloudy += int(cloud[both].sum())
    assert total > 0 and 0.2 < cloudy / total < 0.7  # a cloudy scene: the check is not vacuous
    assert agree / total >= 0.99
    # A tile the map asks for (rendered on demand, not planned) gets its sidecar too.
    t = mercantile.tile(-87.40, 30.73, 14)
    with TestClient(create_app(core, TilerSettings())) as client:
        assert client.get(f"/tiles/l8stac/14/{t.x}/{t.y}.png").status_code == 200
    cached = find_tile(core.tile_cache_dir, "l8stac", 14, t.x, t.y)
    assert cached is not None and mask_sidecar(cached).exists()


def test_a_source_without_a_mask_writes_no_sidecar(core_settings: CoreSettings, demo_stac: Path) -> None:
    template = f"stac+file://{demo_stac}?collections=demo-landsat-8&assets=red,green,blue"
    core = with_source(core_settings, "plain", template)
    counts = ingest(core, "plain", [12], LANDSAT_BBOX)
    assert counts["tiles_fetched"] == counts["tiles_planned"] > 0
    assert list(Path(core.tile_cache_dir, "plain").rglob("*.mask.png")) == []
    assert len(list(Path(core.tile_cache_dir, "plain").rglob("*.png"))) == counts["tiles_fetched"]
