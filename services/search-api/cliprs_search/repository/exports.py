"""Every SQL statement of a detection run's exports and vector tiles.

Functions take an open connection and return plain dicts, bytes or async row streams; nothing here
knows about HTTP or file formats. The exports read ``run_polygons`` (and ``run_hits`` for the
per-window CSV) through server-side cursors, so a run of any size streams in batches: one
statement, hence one consistent snapshot even while the run's threshold is being changed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

# Rows fetched from the server-side cursor at a time: small enough that a batch of large polygons
# stays a few MB, large enough that round trips do not dominate.
BATCH_ROWS = 2000

# MVT: the tile's extent in integer units, and the buffer around it (in the same units) that
# keeps polygon edges from showing seams at tile boundaries.
MVT_EXTENT = 4096
MVT_BUFFER = 64

POLYGON_PROPERTIES = "p.id, p.run_id, r.project_id, p.z, p.area_m2, p.max_score, p.mean_score, p.window_count"


async def run(conn: AsyncConnection, run_id: int) -> dict | None:
    """The run's state and what identifies a version of its results (threshold, updated_at)."""
    row = (
        await conn.execute(
            text(
                "SELECT id, project_id, state, threshold, hits, updated_at, "
                "(SELECT count(*) FROM run_polygons p WHERE p.run_id = r.id) AS polygons "
                "FROM detect_runs r WHERE id = :id"
            ),
            {"id": run_id},
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def _stream(conn: AsyncConnection, sql: str, params: dict[str, Any]) -> AsyncIterator[list[Row]]:
    result = await conn.stream(text(sql), params)
    async for batch in result.partitions(BATCH_ROWS):
        yield batch


def polygons_geojson(conn: AsyncConnection, run_id: int) -> AsyncIterator[list[Row]]:
    """The run's polygons in id order, geometry as GeoJSON text (7 decimals: ~1 cm)."""
    return _stream(
        conn,
        f"SELECT {POLYGON_PROPERTIES}, ST_AsGeoJSON(p.geom, 7) AS geometry "
        "FROM run_polygons p JOIN detect_runs r ON r.id = p.run_id WHERE p.run_id = :r ORDER BY p.id",
        {"r": run_id},
    )


def polygons_wkb(conn: AsyncConnection, run_id: int) -> AsyncIterator[list[Row]]:
    """The run's polygons in id order, geometry as WKB (for GDAL)."""
    return _stream(
        conn,
        f"SELECT {POLYGON_PROPERTIES}, ST_AsBinary(p.geom) AS wkb "
        "FROM run_polygons p JOIN detect_runs r ON r.id = p.run_id WHERE p.run_id = :r ORDER BY p.id",
        {"r": run_id},
    )


def polygons_centroids(conn: AsyncConnection, run_id: int) -> AsyncIterator[list[Row]]:
    """The run's polygons in id order with their centroid and bounding box in degrees."""
    return _stream(
        conn,
        f"SELECT {POLYGON_PROPERTIES}, ST_X(c.pt) AS lon, ST_Y(c.pt) AS lat, "
        "ST_XMin(p.geom) AS west, ST_YMin(p.geom) AS south, ST_XMax(p.geom) AS east, "
        "ST_YMax(p.geom) AS north "
        "FROM run_polygons p JOIN detect_runs r ON r.id = p.run_id "
        "CROSS JOIN LATERAL (SELECT ST_Centroid(p.geom) AS pt) c WHERE p.run_id = :r ORDER BY p.id",
        {"r": run_id},
    )


def hit_windows(conn: AsyncConnection, run_id: int) -> AsyncIterator[list[Row]]:
    """The run's hit windows in id order: score, zoom, centre and the polygon holding each."""
    return _stream(
        conn,
        "WITH members AS (SELECT p.id AS polygon_id, unnest(p.window_ids) AS window_id "
        "FROM run_polygons p WHERE p.run_id = :r) "
        "SELECT h.window_id, h.run_id, r.project_id, m.polygon_id, w.z, h.score, "
        "ST_X(w.center) AS lon, ST_Y(w.center) AS lat "
        "FROM run_hits h JOIN detect_runs r ON r.id = h.run_id "
        "JOIN windows w ON w.id = h.window_id "
        "LEFT JOIN members m ON m.window_id = h.window_id "
        "WHERE h.run_id = :r ORDER BY h.window_id",
        {"r": run_id},
    )


# Web Mercator: the sphere's radius, half the world's side, and metres per degree of longitude.
MERCATOR_R = 6378137.0
MERCATOR_HALF = math.pi * MERCATOR_R
M_PER_DEG = MERCATOR_HALF / 180

# One vector tile, two layers:
# - ``detections``: the polygons whose bounding box is at least MIN_SIZE Web-Mercator metres
#   across (the caller's MIN_PX pixels), clipped to the tile (plus its buffer);
# - ``detection_points``: the others (at low zoom a polygon of a few windows would collapse to
#   nothing), each the centre of its bounding box, merged per cell of a CELL-unit grid so a tile
#   over a run of hundreds of thousands of polygons stays small: a point carries how many
#   polygons and windows its cell holds, their best score and their total area.
# Sizes and points are plain arithmetic on the bounding boxes (Web-Mercator y of a latitude is
# R ln tan(pi/4 + lat/2)): a low-zoom tile may hold hundreds of thousands of small polygons, and
# ST_Transform per polygon would cost seconds; only polygons drawn as polygons are transformed.
MVT_SQL = """
WITH bounds AS (
    SELECT ST_TileEnvelope(:z, :x, :y) AS env,
           ST_Transform(ST_TileEnvelope(:z, :x, :y, margin => :margin), 4326) AS env4326
),
candidates AS NOT MATERIALIZED (
    SELECT p.id, p.z, p.max_score, p.mean_score, p.area_m2, p.window_count, p.geom, m.*,
           GREATEST(m.x1 - m.x0, m.y1 - m.y0) >= :min_size AS big
    FROM run_polygons p CROSS JOIN bounds b
    CROSS JOIN LATERAL (
        SELECT ST_XMin(p.geom) * :m_per_deg AS x0, ST_XMax(p.geom) * :m_per_deg AS x1,
               :r * ln(tan(pi() / 4 + radians(GREATEST(ST_YMin(p.geom), -85.06)) / 2)) AS y0,
               :r * ln(tan(pi() / 4 + radians(LEAST(ST_YMax(p.geom), 85.06)) / 2)) AS y1
    ) m
    WHERE p.run_id = :run AND p.geom && b.env4326
),
polygons AS (
    SELECT c.id, c.z, c.max_score AS score, c.mean_score, c.area_m2, c.window_count,
           ST_AsMVTGeom(ST_Transform(c.geom, 3857), b.env, :extent, :buffer, true) AS geom
    FROM candidates c CROSS JOIN bounds b WHERE c.big
),
points AS (
    -- Tile units from the tile's north-west corner (MVT's y points down). Each point lands in
    -- exactly one tile: a tile's west and north edges are its own, the others its neighbours'.
    SELECT floor(u.ux / :cell)::int AS cx, floor(u.uy / :cell)::int AS cy,
           c.max_score, c.area_m2, c.window_count
    FROM candidates c
    CROSS JOIN LATERAL (
        SELECT ((c.x0 + c.x1) / 2 - :tile_x0) * :units_per_m AS ux,
               (:tile_y0 - (c.y0 + c.y1) / 2) * :units_per_m AS uy
    ) u
    WHERE NOT c.big AND u.ux >= 0 AND u.ux < :extent AND u.uy >= 0 AND u.uy < :extent
),
cells AS (
    SELECT ST_MakePoint(cx * :cell + :cell / 2, cy * :cell + :cell / 2) AS geom,
           max(max_score) AS score, count(*)::int AS polygons,
           sum(window_count)::int AS window_count, sum(area_m2) AS area_m2
    FROM points GROUP BY cx, cy
)
SELECT COALESCE((SELECT ST_AsMVT(q, 'detections', :extent, 'geom', 'id')
                 FROM (SELECT * FROM polygons WHERE geom IS NOT NULL) q), ''::bytea)
    || COALESCE((SELECT ST_AsMVT(q, 'detection_points', :extent, 'geom') FROM cells q), ''::bytea)
"""


async def run_tile(
    conn: AsyncConnection, run_id: int, z: int, x: int, y: int, min_px: float, cell: int
) -> bytes:
    """The run's MVT tile ``z/x/y`` (see ``MVT_SQL``); empty bytes when nothing is in it.

    ``min_px``: the size, in pixels of a 256-px tile, from which a polygon is drawn as a polygon;
    ``cell``: the point grid's cell in tile units (of ``MVT_EXTENT``)."""
    tile_m = 2 * MERCATOR_HALF / (1 << z)
    row = (
        await conn.execute(
            text(MVT_SQL),
            {
                "run": run_id,
                "z": z,
                "x": x,
                "y": y,
                # Candidates are picked with the buffer too, so polygons just outside the tile
                # still draw their edges inside its buffer.
                "margin": MVT_BUFFER / MVT_EXTENT,
                "extent": MVT_EXTENT,
                "buffer": MVT_BUFFER,
                "min_size": tile_m * min_px / 256,
                "cell": cell,
                "r": MERCATOR_R,
                "m_per_deg": M_PER_DEG,
                "tile_x0": -MERCATOR_HALF + x * tile_m,
                "tile_y0": MERCATOR_HALF - y * tile_m,
                "units_per_m": MVT_EXTENT / tile_m,
            },
        )
    ).scalar_one()
    return bytes(row or b"")
