"""MBTiles files and georeferenced rasters (GeoTIFF/COG/JP2, any CRS) as tile sources."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject

from cliprs.errors import InvalidInput
from cliprs.settings import CoreSettings
from cliprs_raster.render import render_tile, scene_stretch
from cliprs_raster.samples import demo_band_paths
from cliprs_testing.faultserver import make_tile
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.sources import (
    MBTilesSource,
    RasterSource,
    SourcePool,
    TileFetchError,
    TileNotFound,
    open_source,
)

SETTINGS = TilerSettings()


def source(template: str, name: str = "s"):
    return open_source(name, CoreSettings(tile_sources={name: template}), SETTINGS)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --------------------------------------------------------------------------- MBTiles


def write_mbtiles(path: Path, tiles: dict[tuple[int, int, int], bytes], fmt: str = "png") -> None:
    """The MBTiles 1.3 layout; rows are stored TMS style (row 0 at the south)."""
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE metadata (name text, value text);"
        "CREATE TABLE tiles (zoom_level integer, tile_column integer, tile_row integer, tile_data blob);"
        "CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row);"
    )
    db.executemany("INSERT INTO metadata VALUES (?, ?)", [("name", "test"), ("format", fmt)])
    db.executemany(
        "INSERT INTO tiles VALUES (?, ?, ?, ?)",
        [(z, x, (1 << z) - 1 - y, data) for (z, x, y), data in tiles.items()],
    )
    db.commit()
    db.close()


async def test_mbtiles_flips_rows_and_reports_missing_and_corrupt_tiles(tmp_path: Path) -> None:
    path = tmp_path / "area.mbtiles"
    tiles = {(3, 1, 2): make_tile(3, 1, 2), (3, 1, 5): make_tile(3, 1, 5), (0, 0, 0): make_tile(0, 0, 0)}
    broken = make_tile(3, 4, 4)
    write_mbtiles(path, {**tiles, (3, 4, 4): broken[: len(broken) // 2]})
    src = source(f"mbtiles://{path}")
    assert isinstance(src, MBTilesSource)
    try:
        for (z, x, y), data in tiles.items():
            got = await src.fetch(z, x, y)
            assert (got.data, got.ext, got.size) == (data, "png", 256)
        # Row 2 is stored as TMS row 5 and vice versa: without the flip they would swap.
        assert (await src.fetch(3, 1, 2)).data != (await src.fetch(3, 1, 5)).data
        with pytest.raises(TileNotFound, match="3/2/2"):
            await src.fetch(3, 2, 2)
        with pytest.raises(TileFetchError, match="corrupt or truncated"):
            await src.fetch(3, 4, 4)
        # Concurrent reads share the one connection safely.
        got = await asyncio.gather(*(src.fetch(3, 1, 2) for _ in range(20)))
        assert {g.data for g in got} == {tiles[(3, 1, 2)]}
    finally:
        await src.aclose()


def test_mbtiles_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no MBTiles file"):
        source(f"mbtiles://{tmp_path}/missing.mbtiles")
    vector = tmp_path / "vector.mbtiles"
    write_mbtiles(vector, {}, fmt="pbf")
    with pytest.raises(InvalidInput, match="vector tiles"):
        source(f"mbtiles://{vector}")
    junk = tmp_path / "junk.mbtiles"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InvalidInput, match="not an MBTiles file"):
        source(f"mbtiles://{junk}")
    with pytest.raises(InvalidInput, match="one file"):
        source(f"mbtiles://{vector},{junk}")


# --------------------------------------------------------------------------- rasters


def write_geotiff(path: Path, data: np.ndarray, crs: str, bounds: tuple[float, float, float, float]) -> None:
    count, height, width = data.shape
    west, south, east, north = bounds
    # Built directly: rasterio's from_bounds() warns about affine's `*` deprecation.
    transform = Affine((east - west) / width, 0.0, west, 0.0, -(north - south) / height, north)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype,
        crs=crs,
        transform=transform,
    ) as dst:
        dst.write(data)


async def test_sentinel2_band_files_give_the_same_tiles_as_the_renderer() -> None:
    bands = demo_band_paths()
    src = source("geotiff://" + ",".join(str(p) for p in bands))
    assert isinstance(src, RasterSource)
    tiles = list(mercantile.tiles(-75.66, 37.66, -75.62, 37.69, [13, 14]))
    try:
        got = await asyncio.gather(*(src.fetch(t.z, t.x, t.y) for t in tiles))  # several threads at once
        with pytest.raises(TileNotFound, match="no data"):
            paris = mercantile.tile(2.35, 48.85, 13)
            await src.fetch(13, paris.x, paris.y)
    finally:
        await src.aclose()
    stretch = scene_stretch(bands)
    # The scene-wide stretch is the bands' 2nd and 98th percentiles over their non-zero pixels.
    for band, limits in zip(bands, stretch, strict=True):
        with rasterio.open(band) as src:
            values = src.read(1)
        assert limits == pytest.approx(np.percentile(values[values != 0], [2, 98]), rel=0.01), band.name
    for t, g in zip(tiles, got, strict=True):
        assert (g.ext, g.size) == ("png", 256)
        expected = np.asarray(render_tile(bands, t.z, t.x, t.y, stretch=stretch))
        np.testing.assert_array_equal(pixels(g.data), expected)
        assert pixels(g.data).std() > 10  # real texture, not a flat fill
        # And independently of the renderer: GDAL's own bilinear warp of each band onto the
        # tile's Web-Mercator grid, stretched by the same limits, agrees to about one grey level.
        diff = np.abs(pixels(g.data).astype(int) - warped_tile(bands, t, stretch))
        assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 1, (t, diff.mean(), diff.max())


def warped_tile(bands: list[Path], tile: mercantile.Tile, stretch: list[tuple[float, float]]) -> np.ndarray:
    """Tile ``tile`` as (256, 256, 3) grey levels, each band warped by `rasterio.warp.reproject`
    (bilinear, 0 = no data) and stretched linearly from its limits to 0..255 (floored)."""
    xy = mercantile.xy_bounds(tile)
    grid = Affine((xy.right - xy.left) / 256, 0.0, xy.left, 0.0, -(xy.top - xy.bottom) / 256, xy.top)
    planes = []
    for band, (lo, hi) in zip(bands, stretch, strict=True):
        out = np.zeros((256, 256), np.float64)
        with rasterio.open(band) as src:
            reproject(
                rasterio.band(src, 1),
                out,
                src_nodata=0,
                dst_transform=grid,
                dst_crs="EPSG:3857",
                dst_nodata=0,
                resampling=Resampling.bilinear,
            )
        planes.append(np.clip(np.floor((out - lo) / (hi - lo) * 255), 0, 255))
    return np.dstack(planes).astype(int)


async def test_an_8bit_rgb_raster_in_any_crs_is_cut_without_restretching(tmp_path: Path) -> None:
    """A lon/lat (EPSG:4326) raster: west half red, east half blue, values kept as they are."""
    data = np.zeros((3, 200, 200), np.uint8)
    data[0, :, :100] = 200
    data[2, :, 100:] = 90
    path = tmp_path / "rgb.tif"
    write_geotiff(path, data, "EPSG:4326", (10.0, 45.0, 10.2, 45.2))
    src = source(f"geotiff://{path}?tile_size=512&format=jpg")
    t = mercantile.tile(10.1, 45.1, 12)
    try:
        got = await src.fetch(t.z, t.x, t.y)
    finally:
        await src.aclose()
    assert (got.ext, got.size) == ("jpg", 512)
    image = pixels(got.data).astype(int)
    b = mercantile.bounds(t)
    # Column of lon 10.1 (the colour boundary) in the tile; sample well away from it.
    edge = round((10.1 - b.west) / (b.east - b.west) * 512)
    west, east = image[200:300, max(edge - 60, 5) : edge - 20], image[200:300, edge + 20 : edge + 60]
    assert np.abs(west.mean(axis=(0, 1)) - [200, 0, 0]).max() < 6
    assert np.abs(east.mean(axis=(0, 1)) - [0, 0, 90]).max() < 6


def test_raster_source_options_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "one.tif"
    write_geotiff(path, np.ones((3, 8, 8), np.uint8), "EPSG:32618", (500000, 4000000, 500080, 4000080))
    with pytest.raises(InvalidInput, match="no raster file"):
        source(f"geotiff://{tmp_path}/nope.tif")
    with pytest.raises(InvalidInput, match="three band files"):
        source(f"geotiff://{path},{path}")
    with pytest.raises(InvalidInput, match="tile_size must be within"):
        source(f"geotiff://{path}?tile_size=5000")
    with pytest.raises(InvalidInput, match="unsupported tile format"):
        source(f"geotiff://{path}?format=gif")
    single = tmp_path / "single.tif"
    write_geotiff(single, np.ones((1, 8, 8), np.uint8), "EPSG:32618", (500000, 4000000, 500080, 4000080))
    with pytest.raises(InvalidInput, match="three single-band sources"):
        source(f"geotiff://{single}")
    with pytest.raises(
        InvalidInput, match=r"unsupported scheme; use http\(s\)://, file://, mbtiles:// or geotiff://"
    ):
        source("s3://bucket/a.tif")


async def test_source_pool_opens_each_source_once(tmp_path: Path) -> None:
    path = tmp_path / "a.mbtiles"
    write_mbtiles(path, {(0, 0, 0): make_tile(0, 0, 0)})
    pool = SourcePool(CoreSettings(tile_sources={"a": f"mbtiles://{path}"}), SETTINGS)
    first = pool.get("a")
    assert pool.get("a") is first
    await pool.aclose()
    with pytest.raises(sqlite3.ProgrammingError):  # closed with the pool
        first.db.execute("SELECT 1")
    with pytest.raises(InvalidInput, match="unknown tile source"):
        pool.get("b")


@pytest.mark.parametrize("marking", ["nodata", "mask", "alpha"])
async def test_raster_no_data_becomes_transparent_and_the_embedder_reads_it(
    tmp_path: Path, marking: str
) -> None:
    """A raster whose west half is no-data (by a nodata value, an internal mask or an alpha
    band) gives PNG tiles transparent there, and the decoder counts those pixels as no-data."""
    from cliprs_embedder.decode import decode_tile

    bands = np.full((3, 200, 200), 120, np.uint8)
    bands[1] = 160
    bands[:, :, :100] = 7  # what the no-data pixels hold: must not leak into the tile
    path = tmp_path / "edge.tif"
    bounds = (10.0, 45.0, 10.2, 45.2)
    count = 4 if marking == "alpha" else 3
    west, south, east, north = bounds
    transform = Affine((east - west) / 200, 0.0, west, 0.0, -(north - south) / 200, north)
    profile = dict(driver="GTiff", width=200, height=200, count=count, dtype="uint8", crs="EPSG:4326")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(
            path, "w", transform=transform, **profile, **({"nodata": 7} if marking == "nodata" else {})
        ) as dst:
            dst.write(bands, indexes=[1, 2, 3])
            valid = np.zeros((200, 200), np.uint8)
            valid[:, 100:] = 255
            if marking == "alpha":
                dst.write(valid, 4)
                dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
            elif marking == "mask":
                dst.write_mask(valid)
    src = source(f"geotiff://{path}")
    t = mercantile.tile(10.1, 45.1, 11)
    try:
        got = await src.fetch(t.z, t.x, t.y)
    finally:
        await src.aclose()
    rgba = np.asarray(Image.open(io.BytesIO(got.data)))
    assert rgba.shape == (256, 256, 4)
    alpha = rgba[..., 3]
    b = mercantile.bounds(t)
    edge = round((10.1 - b.west) / (b.east - b.west) * 256)  # column of lon 10.1
    rows = slice(
        round((b.north - 45.19) / (b.north - b.south) * 256),
        round((b.north - 45.01) / (b.north - b.south) * 256),
    )
    assert (alpha[rows, edge + 3 : edge + 20] == 255).all()  # data: opaque
    assert (alpha[rows, : edge - 3] == 0).all()  # no-data (and off the raster): transparent
    assert (rgba[rows, edge + 3 : edge + 20, :3] == [120, 160, 120]).all()
    tile_file = tmp_path / "tile.png"
    tile_file.write_bytes(got.data)
    decoded = decode_tile(tile_file, (1.0,), 0.25)
    assert decoded.valid_fraction is not None
    assert decoded.valid_fraction[0] == pytest.approx((alpha >= 128).mean())
    assert 0 < decoded.valid_fraction[0] < 0.5
