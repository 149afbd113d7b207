"""Tile-pyramid rendering: real Sentinel-2 demo scene plus a synthetic raster for geolocation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine
from rasterio.warp import transform, transform_bounds

from cliprs.tiles import parse_zoom_spec as parse_zooms
from cliprs_raster.render import percentile_stretch, render_tile
from cliprs_raster.samples import demo_band_paths
from cliprs_tools.demo import DEMO_ATTRIBUTION, render_pyramid
from cliprs_tools.demo import main as demo_main

ZOOM = 12
UTM18N = "EPSG:32618"


def lonlat_to_global_px(lon: float, lat: float, z: int, tile_size: int = 256) -> tuple[float, float]:
    """Web-Mercator pixel position in the whole zoom-``z`` world image (spherical formulas)."""
    n = 2**z * tile_size
    px = (lon + 180.0) / 360.0 * n
    py = (1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n
    return px, py


def lonlat_to_tile(lon: float, lat: float, z: int) -> tuple[int, int]:
    px, py = lonlat_to_global_px(lon, lat, z, 1)
    return math.floor(px), math.floor(py)


@pytest.fixture(scope="module")
def demo_pyramid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("demo-tiles")
    count = render_pyramid(demo_band_paths(), out, [ZOOM], progress=False)
    return out, count


def written_tiles(out: Path, z: int) -> set[tuple[int, int]]:
    return {(int(p.parent.name), int(p.stem)) for p in (out / str(z)).glob("*/*.png")}


def test_demo_band_paths_are_red_green_blue() -> None:
    paths = demo_band_paths()
    assert [p.name for p in paths] == ["s2_B04.jp2", "s2_B03.jp2", "s2_B02.jp2"]
    assert all(p.is_file() for p in paths)


def test_pyramid_covers_scene_with_expected_tiles(demo_pyramid: tuple[Path, int]) -> None:
    out, count = demo_pyramid
    with rasterio.open(demo_band_paths()[0]) as src:
        w, s, e, n = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
    # The scene as documented: Virginia's Eastern Shore.
    assert (w, s, e, n) == pytest.approx((-75.73, 37.58, -75.51, 37.76), abs=0.01)

    x0, y0 = lonlat_to_tile(w, n, ZOOM)
    x1, y1 = lonlat_to_tile(e, s, ZOOM)
    expected = {(x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)}
    assert len(expected) == 9  # 3 x 3 tiles at z12 for a ~20 km scene
    tiles = written_tiles(out, ZOOM)
    assert tiles == expected
    assert count == len(expected)
    assert not list(out.rglob("*.tmp"))

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["bounds"] == pytest.approx([w, s, e, n], abs=1e-6)
    assert meta["zooms"] == [ZOOM]
    assert meta["tile_size"] == 256
    assert meta["format"] == "png"
    assert meta["attribution"] == DEMO_ATTRIBUTION


def test_tiles_are_textured_with_transparent_no_data(demo_pyramid: tuple[Path, int]) -> None:
    out, _ = demo_pyramid
    means = []
    edges = 0
    for x, y in written_tiles(out, ZOOM):
        with Image.open(out / str(ZOOM) / str(x) / f"{y}.png") as im:
            assert im.size == (256, 256)
            assert im.mode == "RGBA"
            rgba = np.asarray(im)
        pixels, alpha = rgba[..., :3], rgba[..., 3]
        assert set(np.unique(alpha)) <= {0, 255}
        # Outside the scene footprint: transparent (the embedder's no-data), painted black.
        assert not pixels[alpha == 0].any()
        edges += bool((alpha == 0).any())
        data = pixels[alpha == 255]
        assert len(data) > 0.3 * 256 * 256, (x, y)
        # Measured over data pixels only, so the black margin cannot fake texture. Even the
        # mostly-sea tile has waves and surf; a broken warp or stretch gives a flat tile.
        assert data.std() > 20, (x, y, data.std())
        means.append(pixels.mean())
    assert len(set(np.round(means))) > 1
    assert edges > 0  # the scene does not fill the edge tiles of its 3 x 3 block


def test_a_pyramid_from_before_transparent_no_data_is_rendered_again(tmp_path: Path) -> None:
    render_pyramid(demo_band_paths(), tmp_path, [10], progress=False)
    meta_path = tmp_path / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["nodata"]  # as written before no-data was transparent
    meta_path.write_text(json.dumps(meta))
    tile = sorted(tmp_path.glob("10/*/*.png"))[0]
    Image.new("RGB", (256, 256)).save(tile)  # an old opaque tile
    render_pyramid(demo_band_paths(), tmp_path, [10], progress=False)
    with Image.open(tile) as im:
        assert im.mode == "RGBA"
    assert json.loads(meta_path.read_text())["nodata"] == "transparent"


def test_rerun_writes_nothing(demo_pyramid: tuple[Path, int]) -> None:
    out, count = demo_pyramid
    files = sorted(out.glob(f"{ZOOM}/*/*.png"))
    before = {p: p.stat().st_mtime_ns for p in files}
    again = render_pyramid(demo_band_paths(), out, [ZOOM], progress=False)
    assert again == count
    assert {p: p.stat().st_mtime_ns for p in sorted(out.glob(f"{ZOOM}/*/*.png"))} == before


def test_extending_pyramid_keeps_earlier_zooms_in_metadata(tmp_path: Path) -> None:
    render_pyramid(demo_band_paths(), tmp_path, [10], progress=False)
    render_pyramid(demo_band_paths(), tmp_path, [11], progress=False)
    assert json.loads((tmp_path / "metadata.json").read_text())["zooms"] == [10, 11]


def test_tile_far_away_is_none() -> None:
    paris = mercantile.tile(2.35, 48.85, ZOOM)
    assert render_tile(demo_band_paths(), ZOOM, paris.x, paris.y) is None


def write_rgb_geotiff(path: Path, data: np.ndarray, west: float, north: float, res: float = 10.0) -> None:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=3,
        dtype=data.dtype,
        crs=UTM18N,
        transform=Affine(res, 0.0, west, 0.0, -res, north),
    ) as dst:
        dst.write(data)


def test_bright_square_lands_where_web_mercator_math_says(tmp_path: Path) -> None:
    z = 15
    tile = mercantile.tile(-75.6, 37.67, z)
    tb = mercantile.bounds(tile)
    [e], [n] = transform("EPSG:4326", UTM18N, [(tb.west + tb.east) / 2], [(tb.south + tb.north) / 2])
    # A 101 x 101 px raster at 10 m whose 20 x 20 px bright square sits near the tile centre.
    size, c0, side = 101, 40, 20
    west, north = round(e / 10) * 10 - 500.0, round(n / 10) * 10 + 500.0
    rng = np.random.default_rng(0)
    data = (1000 + rng.integers(-50, 50, size=(3, size, size))).astype(np.uint16)
    data[:, c0 : c0 + side, c0 : c0 + side] = 8000
    path = tmp_path / "square.tif"
    write_rgb_geotiff(path, data, west, north)

    centre_e = west + (c0 + side / 2) * 10
    centre_n = north - (c0 + side / 2) * 10
    [lon], [lat] = transform(UTM18N, "EPSG:4326", [centre_e], [centre_n])
    gx, gy = lonlat_to_global_px(lon, lat, z)
    want_x, want_y = gx - tile.x * 256, gy - tile.y * 256
    assert 40 < want_x < 216 and 40 < want_y < 216  # whole square inside the tile

    image = render_tile([path], z, tile.x, tile.y)
    assert image is not None
    bright = np.asarray(image).mean(axis=2) > 128
    rows, cols = np.nonzero(bright)
    # +0.5: pixel i spans [i, i+1) in the continuous coordinates the formulas give.
    got_x, got_y = cols.mean() + 0.5, rows.mean() + 0.5
    assert abs(got_x - want_x) < 2 and abs(got_y - want_y) < 2, (got_x, got_y, want_x, want_y)

    # Its size must match too (200 m, stretched by 1/cos(lat) in Web-Mercator metres).
    metres_per_px = 2 * math.pi * 6378137 / (256 * 2**z)
    side_px = side * 10 / math.cos(math.radians(lat)) / metres_per_px
    assert bright.sum() == pytest.approx(side_px**2, rel=0.1)


def test_tile_over_nodata_only_is_none(tmp_path: Path) -> None:
    tile = mercantile.tile(-75.6, 37.67, 15)
    tb = mercantile.bounds(tile)
    [e], [n] = transform("EPSG:4326", UTM18N, [(tb.west + tb.east) / 2], [(tb.south + tb.north) / 2])
    path = tmp_path / "empty.tif"
    write_rgb_geotiff(path, np.zeros((3, 50, 50), np.uint16), e - 250, n + 250)
    # The footprint overlaps the tile, so this exercises the warp, not the quick box test.
    assert render_tile([path], 15, tile.x, tile.y, stretch=[(0.0, 1.0)] * 3) is None


def test_percentile_stretch_ignores_nodata() -> None:
    band = np.zeros((10, 10), np.uint16)
    band[:, 5:] = np.arange(100, 150, dtype=np.uint16).reshape(10, 5)
    out = percentile_stretch(band)
    assert out.dtype == np.uint8
    assert (out[:, :5] == 0).all()  # nodata stays black
    assert out[:, 5:].max() == 255
    # Zeros ignored: the 2nd percentile is ~100, so the darkest valid pixel maps to 0.
    assert out[0, 5] == 0
    assert 100 < out[5, 7] < 160


def test_parse_zooms() -> None:
    assert parse_zooms("10-14") == [10, 11, 12, 13, 14]
    assert parse_zooms("12,10") == [10, 12]
    assert parse_zooms("7") == [7]


@pytest.mark.parametrize("spec", ["14-10", "ten", "10-", "5,x", "30"])
def test_cli_bad_zoom_spec_is_one_line_exit_2(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_main(["--out", "unused", "--zooms", spec, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "Traceback" not in err
