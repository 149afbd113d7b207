"""Exports and vector tiles of a detection run, over HTTP against real PostGIS: runs, hits and
polygons are written as rows (the polygons dissolved by PostGIS from real window footprints, as
Detect does), the files read back with real readers (json, csv, GDAL through pyogrio) and the
tiles decoded with mapbox-vector-tile."""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import mapbox_vector_tile
import mercantile
import pyogrio.raw
import pytest
import shapely
from fastapi.testclient import TestClient
from shapely.geometry import box, shape
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings
from cliprs_search.app import create_app
from cliprs_search.settings import SearchSettings
from cliprs_testing.factories import make_area, make_project, make_run, make_tile, make_window
from cliprs_testing.synthetic import delete_seeded

CENTRE = (-21.94, 64.14)  # Reykjavik: far from every other test's rows
Z = 16
MANY = 4500  # over two of the repository's 2,000-row batches


def child(tile: mercantile.Tile, col: int, row: int) -> mercantile.Tile:
    """The z+2 tile at column ``col`` and row ``row`` (0-3, from the north-west) of ``tile``."""
    return mercantile.Tile(tile.x * 4 + col, tile.y * 4 + row, tile.z + 2)


def dissolve(conn, run_id: int, window_ids: list[int], max_score: float, mean_score: float) -> int:
    """One polygon of the run: the windows' footprints dissolved by PostGIS."""
    return conn.execute(
        text(
            "INSERT INTO run_polygons (run_id, z, geom, area_m2, max_score, mean_score, window_count, window_ids) "
            "SELECT :r, min(z), ST_Multi(ST_Union(footprint)), ST_Area(ST_Union(footprint)::geography), "
            ":mx, :mean, count(*), array_agg(id ORDER BY id) FROM windows WHERE id = ANY(:ids) RETURNING id"
        ),
        {"r": run_id, "ids": window_ids, "mx": max_score, "mean": mean_score},
    ).scalar_one()


@pytest.fixture(scope="module")
def world(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One z16 tile cut into a 4x4 grid of windows, a neighbour tile, and runs:

    - ``a`` (done): P1 = windows 0+1 (two touching cells), P2 = window 10, P3 = a window in the
      tile's east column and its neighbour in the next tile (crosses the tile edge); hits 0, 1,
      10, 7 and the neighbour's window.
    - ``many`` (done): MANY tiny boxes along a line, no windows;
    - ``empty`` (done, no polygons); ``queued``, ``running``, ``failed``.
    """
    core = CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("exports"),
        redis_namespace=f"exports-{uuid.uuid4().hex[:6]}",
    )
    tile = mercantile.tile(*CENTRE, Z)
    east = mercantile.Tile(tile.x + 1, tile.y, Z)
    source = f"exports-{uuid.uuid4().hex[:6]}"
    engine = sync_engine(pg_url)
    with engine.begin() as conn:
        b = mercantile.bounds(tile)
        area = make_area(conn, name="exports", bbox=(b.west, b.south, b.east + 0.01, b.north), source=source)
        tile_id = make_tile(conn, area, Z, tile.x, tile.y, source=source)
        east_id = make_tile(conn, area, Z, east.x, east.y, source=source)
        cells: dict[int, mercantile.Tile] = {}
        for i in range(16):
            cells[tile_id * 4096 + i] = child(tile, i % 4, i // 4)
            make_window(
                conn,
                tile_id * 4096 + i,
                tile_id,
                scale=0.25,
                bounds=tuple(mercantile.bounds(cells[tile_id * 4096 + i])),
            )
        neighbour = east_id * 4096 + 4  # row 1, column 0 of the east tile: beside window 7
        cells[neighbour] = child(east, 0, 1)
        make_window(conn, neighbour, east_id, scale=0.25, bounds=tuple(mercantile.bounds(cells[neighbour])))
        w = [tile_id * 4096 + i for i in range(16)]
        project = make_project(conn, "exports", "water")
        conn.execute(text("INSERT INTO project_areas VALUES (:p, :a)"), {"p": project, "a": area})
        runs = {state: make_run(conn, project, state) for state in ("queued", "running", "failed")}
        runs["a"] = make_run(conn, project, threshold=0.4)
        polygons = {
            "P1": dissolve(conn, runs["a"], [w[0], w[1]], 0.9, 0.8),
            "P2": dissolve(conn, runs["a"], [w[10]], 0.7, 0.7),
            "P3": dissolve(conn, runs["a"], [w[7], neighbour], 0.6, 0.55),
        }
        hits = {w[0]: 0.9, w[1]: 0.7, w[10]: 0.7, w[7]: 0.6, neighbour: 0.5}
        for wid, score in hits.items():
            conn.execute(
                text("INSERT INTO run_hits VALUES (:r, :w, :s)"), {"r": runs["a"], "w": wid, "s": score}
            )
        runs["many"] = make_run(conn, project)
        conn.execute(
            text(
                "INSERT INTO run_polygons (run_id, z, geom, area_m2, max_score, mean_score, window_count, window_ids) "
                "SELECT :r, 18, g, ST_Area(g::geography), 0.5 + i / (2.0 * :n), 0.5, 1, '{}' FROM ("
                "  SELECT i, ST_Multi(ST_MakeEnvelope(:x0 + i * 1e-4, :y0, :x0 + i * 1e-4 + 5e-5, :y0 + 5e-5, 4326)) AS g"
                "  FROM generate_series(0, :n - 1) i) s"
            ),
            {"r": runs["many"], "n": MANY, "x0": CENTRE[0] - 0.3, "y0": CENTRE[1] - 0.05},
        )
        runs["empty"] = make_run(conn, project)
    app = create_app(core, SearchSettings(geocoder="none", embedder_url="http://embedder.invalid"))
    with TestClient(app) as client:
        yield {
            "client": client,
            "engine": engine,
            "runs": runs,
            "polygons": polygons,
            "hits": hits,
            "cells": cells,
            "windows": w,
            "neighbour": neighbour,
            "tile": tile,
            "east": east,
            "project": project,
        }
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM projects WHERE id = :p"), {"p": project})
    delete_seeded(pg_url, [area])


def cell_box(world: dict, *window_ids: int) -> shapely.Geometry:
    return shapely.union_all([box(*mercantile.bounds(world["cells"][i])) for i in window_ids])


def get(world: dict, path: str, **kw):
    return world["client"].get(path, **kw)


def test_geojson_holds_every_polygon_with_its_properties(world: dict) -> None:
    run = world["runs"]["a"]
    resp = get(world, f"/v1/runs/{run}/export.geojson")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/geo+json"
    assert resp.headers["content-disposition"] == f'attachment; filename="run-{run}-t0.4-detections.geojson"'
    body = json.loads(resp.content)
    assert body["type"] == "FeatureCollection"
    assert body["run"] == {"id": run, "project_id": world["project"], "threshold": 0.4}
    features = {f["id"]: f for f in body["features"]}
    p, w = world["polygons"], world["windows"]
    assert set(features) == set(p.values())
    expected = {
        "P1": ((w[0], w[1]), 0.9, 0.8, 2),
        "P2": ((w[10],), 0.7, 0.7, 1),
        "P3": ((w[7], world["neighbour"]), 0.6, 0.55, 2),
    }
    for name, (members, mx, mean, count) in expected.items():
        f = features[p[name]]
        props = f["properties"]
        assert props["polygon_id"] == p[name] and props["run_id"] == run
        assert props["project_id"] == world["project"] and props["z"] == Z
        assert props["max_score"] == pytest.approx(mx, abs=1e-6)
        assert props["mean_score"] == pytest.approx(mean, abs=1e-6)
        assert props["window_count"] == count
        geom = shape(f["geometry"])
        assert geom.geom_type == "MultiPolygon"
        truth = cell_box(world, *members)
        # Same shape as the dissolved windows, to the 7 decimals GeoJSON carries: the difference
        # is at most a 5e-8-degree strip along the outline.
        assert geom.symmetric_difference(truth).area <= 5e-8 * truth.length
        # A z18 cell is a ground square of the equator's length * cos(lat) / 2^18 (~67 m here).
        side = 40_075_016 * math.cos(math.radians(truth.centroid.y)) / 2**18
        assert props["area_m2"] == pytest.approx(count * side**2, rel=0.01)


def test_geojson_streams_many_polygons_in_batches(world: dict) -> None:
    resp = get(world, f"/v1/runs/{world['runs']['many']}/export.geojson")
    assert resp.status_code == 200
    features = json.loads(resp.content)["features"]
    ids = [f["id"] for f in features]
    assert len(ids) == MANY and ids == sorted(set(ids))
    scores = [f["properties"]["max_score"] for f in features]
    assert scores == sorted(scores) and scores[0] == 0.5


def test_csv_one_row_per_polygon_with_its_centroid(world: dict) -> None:
    run = world["runs"]["a"]
    resp = get(world, f"/v1/runs/{run}/export.csv")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["content-disposition"].endswith('detections.csv"')
    rows = {int(r["polygon_id"]): r for r in csv.DictReader(io.StringIO(resp.text))}
    assert set(rows) == set(world["polygons"].values())
    p2 = rows[world["polygons"]["P2"]]
    centre = cell_box(world, world["windows"][10]).centroid
    assert float(p2["lon"]) == pytest.approx(centre.x, abs=1e-6)
    assert float(p2["lat"]) == pytest.approx(centre.y, abs=1e-6)
    b = mercantile.bounds(world["cells"][world["windows"][10]])
    assert [float(p2[k]) for k in ("west", "south", "east", "north")] == pytest.approx(list(b), abs=1e-6)
    assert int(p2["window_count"]) == 1 and float(p2["max_score"]) == pytest.approx(0.7, abs=1e-6)
    # The polygon crossing the tile edge: its centroid is the middle of its two cells.
    p3 = rows[world["polygons"]["P3"]]
    centre = cell_box(world, world["windows"][7], world["neighbour"]).centroid
    assert (float(p3["lon"]), float(p3["lat"])) == pytest.approx((centre.x, centre.y), abs=1e-6)

    many = get(world, f"/v1/runs/{world['runs']['many']}/export.csv")
    assert len(list(csv.DictReader(io.StringIO(many.text)))) == MANY


def test_csv_one_row_per_hit_window(world: dict) -> None:
    run = world["runs"]["a"]
    resp = get(world, f"/v1/runs/{run}/export.csv", params={"rows": "windows"})
    assert resp.status_code == 200
    assert resp.headers["content-disposition"].endswith('windows.csv"')
    rows = {int(r["window_id"]): r for r in csv.DictReader(io.StringIO(resp.text))}
    assert set(rows) == set(world["hits"])
    p, w = world["polygons"], world["windows"]
    holder = {w[0]: p["P1"], w[1]: p["P1"], w[10]: p["P2"], w[7]: p["P3"], world["neighbour"]: p["P3"]}
    for wid, row in rows.items():
        assert int(row["polygon_id"]) == holder[wid]
        assert float(row["score"]) == pytest.approx(world["hits"][wid], abs=1e-6)
        centre = cell_box(world, wid).centroid
        assert (float(row["lon"]), float(row["lat"])) == pytest.approx((centre.x, centre.y), abs=1e-6)
    bad = get(world, f"/v1/runs/{run}/export.csv", params={"rows": "tiles"})
    assert bad.status_code == 422


def test_geopackage_reads_back_with_gdal(world: dict, tmp_path: Path) -> None:
    run = world["runs"]["a"]
    resp = get(world, f"/v1/runs/{run}/export.gpkg")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/geopackage+sqlite3"
    assert resp.headers["content-disposition"] == f'attachment; filename="run-{run}-t0.4-detections.gpkg"'
    path = tmp_path / "run.gpkg"
    path.write_bytes(resp.content)
    meta, _, geometry, fields = pyogrio.raw.read(path, layer="detections")
    assert meta["crs"] == "EPSG:4326" and meta["geometry_type"] == "MultiPolygon"
    names = list(meta["fields"])
    assert names == [
        "polygon_id",
        "run_id",
        "project_id",
        "z",
        "area_m2",
        "max_score",
        "mean_score",
        "window_count",
    ]
    columns = dict(zip(names, fields, strict=True))
    geoms = dict(zip(columns["polygon_id"].tolist(), shapely.from_wkb(geometry), strict=True))
    p, w = world["polygons"], world["windows"]
    assert set(geoms) == set(p.values())
    truth = cell_box(world, w[0], w[1])
    assert geoms[p["P1"]].symmetric_difference(truth).area < 1e-9 * truth.area
    assert set(columns["run_id"].tolist()) == {run}
    assert sorted(columns["window_count"].tolist()) == [1, 2, 2]
    # The temporary file is gone once sent.
    assert not list(Path(tempfile.gettempdir()).glob(f"cliprs-run-{run}-*"))

    many = get(world, f"/v1/runs/{world['runs']['many']}/export.gpkg")
    (tmp_path / "many.gpkg").write_bytes(many.content)
    assert pyogrio.raw.read(tmp_path / "many.gpkg")[2].shape == (MANY,)


def test_a_run_without_polygons_exports_empty_files(world: dict, tmp_path: Path) -> None:
    run = world["runs"]["empty"]
    assert json.loads(get(world, f"/v1/runs/{run}/export.geojson").content)["features"] == []
    lines = get(world, f"/v1/runs/{run}/export.csv").text.splitlines()
    assert lines == [
        "polygon_id,run_id,project_id,z,lon,lat,area_m2,max_score,mean_score,window_count,west,south,east,north"
    ]
    (tmp_path / "empty.gpkg").write_bytes(get(world, f"/v1/runs/{run}/export.gpkg").content)
    meta, _, geometry, _ = pyogrio.raw.read(tmp_path / "empty.gpkg")
    assert len(geometry) == 0 and "window_count" in list(meta["fields"])
    tile = get(world, f"/v1/runs/{run}/tiles/{Z}/{world['tile'].x}/{world['tile'].y}.mvt")
    assert tile.status_code == 200 and tile.content == b""


ENDPOINTS = ["export.geojson", "export.gpkg", "export.csv", "tiles/3/1/2.mvt"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("state", ["queued", "running", "failed"])
def test_a_run_that_is_not_done_is_409(world: dict, endpoint: str, state: str) -> None:
    run = world["runs"][state]
    resp = get(world, f"/v1/runs/{run}/{endpoint}")
    assert resp.status_code == 409
    error = resp.json()["error"]
    assert error["code"] == "conflict"
    assert f"run {run} is {state}" in error["message"]
    assert ("start a new run" if state == "failed" else f"poll GET /v1/runs/{run}") in error["message"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_unknown_run_is_404(world: dict, endpoint: str) -> None:
    resp = get(world, f"/v1/runs/987654321/{endpoint}")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def decode(content: bytes) -> dict:
    return mapbox_vector_tile.decode(content, default_options={"y_coord_down": True})


def test_tile_draws_the_polygons_in_tile_coordinates(world: dict) -> None:
    run, tile, p = world["runs"]["a"], world["tile"], world["polygons"]
    resp = get(world, f"/v1/runs/{run}/tiles/{Z}/{tile.x}/{tile.y}.mvt")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    layers = decode(resp.content)
    assert set(layers) == {"detections"}  # nothing is too small to draw at z16
    features = {f["id"]: f for f in layers["detections"]["features"]}
    assert set(features) == set(p.values())
    props = features[p["P2"]]["properties"]
    assert props["score"] == pytest.approx(0.7, abs=1e-6) and props["window_count"] == 1 and props["z"] == Z
    # Window 10 is row 2, column 2 of the 4x4 grid: x and y from 2048 to 3072 of the 4096 units.
    x0, y0, x1, y1 = shape(features[p["P2"]]["geometry"]).bounds
    assert (x0, y0, x1, y1) == pytest.approx((2048, 2048, 3072, 3072), abs=2)
    # P3 goes on into the east tile and is clipped at the tile's buffer (64 units).
    assert shape(features[p["P3"]]["geometry"]).bounds[2] == pytest.approx(4096 + 64, abs=2)
    east = decode(get(world, f"/v1/runs/{run}/tiles/{Z}/{world['east'].x}/{world['east'].y}.mvt").content)
    assert {f["id"] for f in east["detections"]["features"]} == {p["P3"]}
    # A tile two tiles away holds nothing at all.
    far = get(world, f"/v1/runs/{run}/tiles/{Z}/{tile.x - 3}/{tile.y}.mvt")
    assert far.status_code == 200 and far.content == b""


LINE_LAT = CENTRE[1] - 0.05 + 2.5e-5  # the middle of the "many" run's line of boxes


def tile_units(tile: mercantile.Tile, lon: float, lat: float) -> tuple[float, float]:
    """A point's position in a tile's 4096 units, y down from the tile's north edge."""
    b = mercantile.xy_bounds(tile)
    mx, my = mercantile.xy(lon, lat)
    return (mx - b.left) / (b.right - b.left) * 4096, (b.top - my) / (b.top - b.bottom) * 4096


def test_low_zoom_tiles_draw_small_polygons_as_merged_points(world: dict) -> None:
    run = world["runs"]["many"]
    for z in (6, 13):
        tiles = list(
            mercantile.tiles(CENTRE[0] - 0.31, CENTRE[1] - 0.06, CENTRE[0] + 0.2, CENTRE[1] + 0.01, z)
        )
        polygons = windows = points = 0
        for t in tiles:
            layers = decode(get(world, f"/v1/runs/{run}/tiles/{z}/{t.x}/{t.y}.mvt").content)
            assert "detections" not in layers  # 5-m boxes are under 3 px at these zooms
            # Where the line of boxes crosses this tile, in tile units (y down from the north).
            _, line_y = tile_units(t, CENTRE[0], LINE_LAT)
            west, _ = tile_units(t, CENTRE[0] - 0.3, LINE_LAT)
            east, _ = tile_units(t, CENTRE[0] - 0.3 + MANY * 1e-4, LINE_LAT)
            for f in layers.get("detection_points", {}).get("features", []):
                assert f["geometry"]["type"] == "Point"
                fx, fy = f["geometry"]["coordinates"]
                # Cell centres: within a cell (16 units) of the boxes they stand for.
                assert abs(fy - line_y) <= 16 and west - 16 <= fx <= east + 16
                assert 0 <= fx < 4096 and 0 <= fy < 4096
                polygons += f["properties"]["polygons"]
                windows += f["properties"]["window_count"]
                points += 1
        # Each polygon is counted once (points are not buffered), merged into ~1-px cells: the
        # 4,500 boxes 5 m apart fit in a few dozen pixels at z6, in thousands at z13.
        assert polygons == MANY and windows == MANY
        assert points < 100 if z == 6 else points > 1000
    # At z19 they are polygons again.
    t = mercantile.tile(CENTRE[0] - 0.3 + 2e-5, CENTRE[1] - 0.05 + 2e-5, 19)
    layers = decode(get(world, f"/v1/runs/{run}/tiles/19/{t.x}/{t.y}.mvt").content)
    assert "detection_points" not in layers and len(layers["detections"]["features"]) >= 1


def test_tile_etag_revalidates_until_the_threshold_changes(world: dict) -> None:
    run, tile = world["runs"]["a"], world["tile"]
    path = f"/v1/runs/{run}/tiles/{Z}/{tile.x}/{tile.y}.mvt"
    first = get(world, path)
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"
    again = get(world, path, headers={"If-None-Match": f"W/{etag}"})
    assert again.status_code == 304 and again.content == b""
    with world["engine"].begin() as conn:
        conn.execute(
            text("UPDATE detect_runs SET threshold = 0.45, updated_at = now() WHERE id = :r"), {"r": run}
        )
    try:
        changed = get(world, path, headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        assert changed.content == first.content  # the rows did not change, only the version
    finally:
        with world["engine"].begin() as conn:
            conn.execute(text("UPDATE detect_runs SET threshold = 0.4 WHERE id = :r"), {"r": run})


@pytest.mark.parametrize("tile", ["3/8/0", "3/0/8", "25/0/0"])
def test_a_tile_outside_the_grid_is_400(world: dict, tile: str) -> None:
    resp = get(world, f"/v1/runs/{world['runs']['a']}/tiles/{tile}.mvt")
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_input"


def test_openapi_describes_the_exports(world: dict) -> None:
    paths = get(world, "/openapi.json").json()["paths"]
    for path, media in (
        ("/v1/runs/{run_id}/export.geojson", "application/geo+json"),
        ("/v1/runs/{run_id}/export.gpkg", "application/geopackage+sqlite3"),
        ("/v1/runs/{run_id}/export.csv", "text/csv"),
        ("/v1/runs/{run_id}/tiles/{z}/{x}/{y}.mvt", "application/vnd.mapbox-vector-tile"),
    ):
        answers = paths[path]["get"]["responses"]
        assert media in answers["200"]["content"]
        assert {"404", "409"} <= set(answers)


def _flip(conn, run_id: int, threshold: float, boxes: int) -> None:
    """Give the run new results as a threshold change does, in one transaction: a new threshold
    and version, and new polygons whose max_score is the threshold + 0.05 (which version a
    polygon belongs to can be read from it)."""
    conn.execute(text("DELETE FROM run_polygons WHERE run_id = :r"), {"r": run_id})
    conn.execute(
        text(
            "INSERT INTO run_polygons (run_id, z, geom, area_m2, max_score, mean_score, window_count, window_ids) "
            "SELECT :r, 18, g, ST_Area(g::geography), :t + 0.05, :t, 1, '{}' FROM ("
            "  SELECT ST_Multi(ST_MakeEnvelope(:x0 + i * 1e-4, :y0, :x0 + i * 1e-4 + 5e-5, :y0 + 5e-5, 4326)) AS g"
            "  FROM generate_series(0, :n - 1) i) s"
        ),
        {"r": run_id, "t": threshold, "n": boxes, "x0": CENTRE[0] + 0.1, "y0": CENTRE[1] + 0.02},
    )
    conn.execute(
        text("UPDATE detect_runs SET threshold = :t, updated_at = clock_timestamp() WHERE id = :r"),
        {"r": run_id, "t": threshold},
    )


def test_tiles_and_exports_never_mix_two_thresholds(world: dict) -> None:
    """While the run's threshold keeps changing, a tile's ETag names the threshold its polygons
    were made at, and a download holds one threshold's polygons (the one its head names) or is
    cut off; never the old threshold with the new polygons."""
    engine = world["engine"]
    with engine.begin() as conn:
        tile_run = make_run(conn, world["project"], threshold=0.3)
        export_run = make_run(conn, world["project"], threshold=0.3)
        _flip(conn, tile_run, 0.3, 1)
        _flip(conn, export_run, 0.3, 2500)  # two batches
    stop = threading.Event()

    def flipper() -> None:
        t = 0.3
        while not stop.is_set():
            t = 0.6 if t == 0.3 else 0.3
            with engine.begin() as conn:
                _flip(conn, tile_run, t, 1)
            with engine.begin() as conn:
                _flip(conn, export_run, t, 2500)

    box = mercantile.tile(CENTRE[0] + 0.1 + 2e-5, CENTRE[1] + 0.02 + 2e-5, 18)
    mixed, whole, cut = [], 0, 0
    thread = threading.Thread(target=flipper, daemon=True)
    thread.start()
    try:
        for i in range(150):
            resp = get(world, f"/v1/runs/{tile_run}/tiles/18/{box.x}/{box.y}.mvt")
            assert resp.status_code == 200
            named = float(resp.headers["etag"].split("-t")[1].split("-")[0])
            scores = {
                round(f["properties"]["score"] - 0.05, 3)
                for f in decode(resp.content)["detections"]["features"]
            }
            if scores != {named}:
                mixed.append(f"tile: ETag threshold {named}, polygons of {scores}")
            if i % 5:
                continue
            try:
                body = json.loads(get(world, f"/v1/runs/{export_run}/export.geojson").content)
            except Exception as exc:  # the app's error, raised through the test client
                assert "changed while its export was being sent" in str(exc)
                cut += 1
                continue
            whole += 1
            scores = {round(f["properties"]["max_score"] - 0.05, 3) for f in body["features"]}
            if scores != {body["run"]["threshold"]} or len(body["features"]) != 2500:
                mixed.append(f"export: head threshold {body['run']['threshold']}, polygons of {scores}")
    finally:
        stop.set()
        thread.join(30)
        with engine.begin() as conn:
            conn.execute(
                text("DELETE FROM detect_runs WHERE id IN (:a, :b)"), {"a": tile_run, "b": export_run}
            )
    assert not mixed, mixed[:5]
    assert whole > 0, f"every one of {cut} downloads was cut off"
