"""Every SQL statement of a detection run's exports and vector tiles.

Functions take an open connection and return plain dicts, bytes or lists of rows; nothing here
knows about HTTP or file formats. Exports read ``run_polygons`` (and ``run_hits`` for the
per-window CSV) in keyset batches (``ORDER BY id``, ``WHERE id > :after LIMIT :n``): the service
reads each batch on a short connection of its own (`snapshot`), so a download that the client
reads slowly holds no connection. Every batch is read in the same snapshot as the run's version
(``threshold`` and ``updated_at``, which change in the same transaction as the hits and
polygons), so the service can tell when the results changed between two batches.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# Rows read per batch (one short connection each): small enough that a batch of large polygons
# stays a few MB, large enough that round trips do not dominate.
BATCH_ROWS = 2000

# MVT: the tile's extent in integer units, and the buffer around it (in the same units) that
# keeps polygon edges from showing seams at tile boundaries.
MVT_EXTENT = 4096
MVT_BUFFER = 64

POLYGON_PROPERTIES = "p.id, p.run_id, r.project_id, p.z, p.area_m2, p.max_score, p.mean_score, p.window_count"


@asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a read-only REPEATABLE READ transaction: every statement in the block sees
    the same committed state (a run's version and its polygons cannot come from two thresholds)."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            await conn.execute(text("SET TRANSACTION READ ONLY"))
            yield conn


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


async def version(conn: AsyncConnection, run_id: int) -> Row | None:
    """The run's state, threshold and updated_at (its results' version), or None when gone."""
    return (
        await conn.execute(
            text("SELECT state, threshold, updated_at FROM detect_runs WHERE id = :r"), {"r": run_id}
        )
    ).first()


async def _batch(conn: AsyncConnection, sql: str, run_id: int, after: int, limit: int) -> list[Row]:
    return list(await conn.execute(text(sql), {"r": run_id, "after": after, "n": limit}))


_POLYGONS_FROM = (
    "FROM run_polygons p JOIN detect_runs r ON r.id = p.run_id "
    "WHERE p.run_id = :r AND p.id > :after ORDER BY p.id LIMIT :n"
)


async def polygons_geojson(conn: AsyncConnection, run_id: int, after: int, limit: int) -> list[Row]:
    """Up to ``limit`` of the run's polygons with id above ``after``, in id order, geometry as
    GeoJSON text (7 decimals: ~1 cm)."""
    sql = f"SELECT {POLYGON_PROPERTIES}, ST_AsGeoJSON(p.geom, 7) AS geometry {_POLYGONS_FROM}"
    return await _batch(conn, sql, run_id, after, limit)


async def polygons_wkb(conn: AsyncConnection, run_id: int, after: int, limit: int) -> list[Row]:
    """Up to ``limit`` of the run's polygons with id above ``after``, geometry as WKB (for GDAL)."""
    sql = f"SELECT {POLYGON_PROPERTIES}, ST_AsBinary(p.geom) AS wkb {_POLYGONS_FROM}"
    return await _batch(conn, sql, run_id, after, limit)


async def polygons_centroids(conn: AsyncConnection, run_id: int, after: int, limit: int) -> list[Row]:
    """Up to ``limit`` of the run's polygons with id above ``after`` with their centroid and
    bounding box in degrees."""
    sql = (
        f"SELECT {POLYGON_PROPERTIES}, ST_X(ST_Centroid(p.geom)) AS lon, ST_Y(ST_Centroid(p.geom)) AS lat, "
        "ST_XMin(p.geom) AS west, ST_YMin(p.geom) AS south, ST_XMax(p.geom) AS east, "
        f"ST_YMax(p.geom) AS north {_POLYGONS_FROM}"
    )
    return await _batch(conn, sql, run_id, after, limit)


async def hit_windows(conn: AsyncConnection, run_id: int, after: int, limit: int) -> list[Row]:
    """Up to ``limit`` of the run's hit windows with id above ``after``, in id order: score,
    zoom, centre and the polygon holding each (found through the polygons' spatial index: the
    polygon of the window's zoom that touches its footprint and lists it)."""
    sql = (
        "SELECT h.window_id, h.run_id, r.project_id, m.polygon_id, w.z, h.score, "
        "ST_X(w.center) AS lon, ST_Y(w.center) AS lat "
        "FROM run_hits h JOIN detect_runs r ON r.id = h.run_id "
        "JOIN windows w ON w.id = h.window_id "
        "LEFT JOIN LATERAL (SELECT p.id AS polygon_id FROM run_polygons p "
        "  WHERE p.run_id = h.run_id AND p.z = w.z AND p.geom && w.footprint "
        "  AND h.window_id = ANY(p.window_ids) LIMIT 1) m ON true "
        "WHERE h.run_id = :r AND h.window_id > :after ORDER BY h.window_id LIMIT :n"
    )
    return await _batch(conn, sql, run_id, after, limit)


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
