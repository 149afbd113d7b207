"""Rows for tests and benchmarks: areas, tiles, windows, ingest jobs, projects and detection runs,
one function each.

Each takes an open SQLAlchemy connection (``with sync_engine(url).begin() as conn:``), fills in
what a test does not care about, and returns the new row's id. Geometry comes from tile
coordinates unless given, so the rows agree with each other the way the services write them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text

from cliprs.tiles import BBox, tile_polygon_wkt

Box = tuple[float, float, float, float]  # west, south, east, north


def make_area(
    conn: Connection,
    *,
    name: str = "test area",
    bbox: Box | None = (-75.7, 37.6, -75.5, 37.8),
    polygon: dict | None = None,
    zooms: Sequence[int] = (14,),
    source: str = "test",
    status: str | None = None,
) -> int:
    """An area with ``bbox`` (or a GeoJSON ``polygon``); ``status`` None keeps the table's default."""
    if polygon is not None:
        shape, params = "ST_SetSRID(ST_GeomFromGeoJSON(:g), 4326)", {"g": json.dumps(polygon)}
    else:
        if bbox is None:
            raise ValueError("an area needs a bbox or a polygon")
        shape, params = "ST_MakeEnvelope(:w, :s, :e, :n, 4326)", dict(zip("wsen", bbox, strict=True))
    columns, values = "name, bbox, zooms, source", f":name, {shape}, CAST(:zooms AS smallint[]), :source"
    if status is not None:
        columns, values = f"{columns}, status", f"{values}, :status"
    return conn.execute(
        text(f"INSERT INTO areas ({columns}) VALUES ({values}) RETURNING id"),
        {**params, "name": name, "zooms": list(zooms), "source": source, "status": status},
    ).scalar_one()


def make_tile(
    conn: Connection,
    area_id: int,
    z: int,
    x: int,
    y: int,
    *,
    source: str = "test",
    status: str = "fetched",
    bounds: Box | None = None,
    tile_size: int | None = None,
    link: bool = True,
) -> int:
    """A tile row (footprint: the tile's own bounds unless ``bounds``), linked to its area."""
    polygon = tile_polygon_wkt(z, x, y) if bounds is None else BBox(*bounds).wkt()
    tile_id = conn.execute(
        text(
            "INSERT INTO tiles (area_id, source, z, x, y, polygon, status, tile_size) VALUES "
            "(:a, :s, :z, :x, :y, ST_GeomFromText(:p, 4326), :st, :size) RETURNING id"
        ),
        {"a": area_id, "s": source, "z": z, "x": x, "y": y, "p": polygon, "st": status, "size": tile_size},
    ).scalar_one()
    if link:
        link_tiles(conn, area_id, [tile_id])
    return tile_id


def link_tiles(conn: Connection, area_id: int, tile_ids: Sequence[int]) -> None:
    """Make existing tiles part of an area too (tiles are shared between areas)."""
    conn.execute(
        text("INSERT INTO area_tiles (area_id, tile_id) SELECT :a, unnest(CAST(:t AS bigint[]))"),
        {"a": area_id, "t": list(tile_ids)},
    )


def make_window(
    conn: Connection,
    window_id: int,
    tile_id: int,
    *,
    px: tuple[int, int, int, int] = (0, 0, 224, 224),
    scale: float = 1.0,
    bounds: Box | None = None,
) -> int:
    """A window of a tile; its footprint is ``bounds`` or, by default, the tile's own polygon."""
    if bounds is None:
        footprint, params = "t.polygon", {}
    else:
        footprint, params = "ST_MakeEnvelope(:w, :s, :e, :n, 4326)", dict(zip("wsen", bounds, strict=True))
    conn.execute(
        text(
            "INSERT INTO windows (id, tile_id, z, px_x0, px_y0, px_x1, px_y1, scale, footprint, center) "
            f"SELECT :id, t.id, t.z, :x0, :y0, :x1, :y1, :scale, {footprint}, ST_Centroid({footprint}) "
            "FROM tiles t WHERE t.id = :tile"
        ),
        {
            **params,
            "id": window_id,
            "tile": tile_id,
            "scale": scale,
            **dict(zip(("x0", "y0", "x1", "y1"), px, strict=True)),
        },
    )
    return window_id


def make_job(conn: Connection, area_id: int, *, state: str | None = None) -> int:
    """An ingest job of an area; ``state`` None keeps the table's default (queued)."""
    if state is None:
        return conn.execute(
            text("INSERT INTO ingest_jobs (area_id) VALUES (:a) RETURNING id"), {"a": area_id}
        ).scalar_one()
    return conn.execute(
        text("INSERT INTO ingest_jobs (area_id, state) VALUES (:a, :s) RETURNING id"),
        {"a": area_id, "s": state},
    ).scalar_one()


def make_project(conn: Connection, name: str, query: str | None = None) -> int:
    """A project (no areas, no labels)."""
    return conn.execute(
        text("INSERT INTO projects (name, query) VALUES (:n, :q) RETURNING id"), {"n": name, "q": query}
    ).scalar_one()


def make_run(conn: Connection, project_id: int, state: str = "done", threshold: float = 0.5) -> int:
    """A detection run of a project in ``state`` (finished now when ``done``), with no hits: a
    test adds the polygons or hits it needs."""
    return conn.execute(
        text(
            "INSERT INTO detect_runs (project_id, state, threshold, finished_at) "
            "VALUES (:p, :s, :t, CASE WHEN :s = 'done' THEN now() END) RETURNING id"
        ),
        {"p": project_id, "s": state, "t": threshold},
    ).scalar_one()


@contextmanager
def window_quality(
    engine: Engine, values: Mapping[int, tuple[float | None, float | None, int | None]]
) -> Iterator[None]:
    """Set windows' (cloud_score, valid_fraction, fingerprint), by window id, for the block;
    each window gets back what it had before (shared rows of other tests stay as they were)."""
    ids = [int(i) for i in values]
    with engine.begin() as conn:
        before = conn.execute(
            text("SELECT id, cloud_score, valid_fraction, fingerprint FROM windows WHERE id = ANY(:ids)"),
            {"ids": ids},
        ).all()
        conn.execute(SET_QUALITY, [{"id": int(w), "c": c, "v": v, "f": f} for w, (c, v, f) in values.items()])
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(
                SET_QUALITY,
                [{"id": r.id, "c": r.cloud_score, "v": r.valid_fraction, "f": r.fingerprint} for r in before],
            )


SET_QUALITY = text(
    "UPDATE windows SET cloud_score = :c, valid_fraction = :v, fingerprint = :f WHERE id = :id"
)
