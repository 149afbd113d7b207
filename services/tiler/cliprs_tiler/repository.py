"""Every SQL statement of the tiler: tile planning and bookkeeping for the fetch stage (the STAC
items behind each tile included), and the reads behind the HTTP API (areas covering a tile,
window boxes, job progress)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import mercantile
from sqlalchemy import Engine, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection, Row, RowMapping

from cliprs.db.models import Area, AreaTile, IngestJob, Tile
from cliprs.tiles import tile_polygon_wkt
from cliprs_tiler.source_base import ItemRecord

_UPSERT_CHUNK = 1000  # rows per INSERT: keeps statements (and their parameter lists) modest


# --------------------------------------------------------------------------- fetch stage


@dataclass(frozen=True)
class PlannedTile:
    id: int
    z: int
    x: int
    y: int
    status: str


# An ``areas`` row (Core, not an ORM object): id, name, bbox, zooms, source, status.
AreaRow = Row


def get_job(conn: Connection, job_id: int) -> Row | None:
    return conn.execute(select(IngestJob.__table__).where(IngestJob.id == job_id)).first()


def get_area(conn: Connection, area_id: int) -> AreaRow | None:
    return conn.execute(select(Area.__table__).where(Area.id == area_id)).first()


def upsert_area_tiles(conn: Connection, area: AreaRow, tiles: Iterable[mercantile.Tile]) -> list[PlannedTile]:
    """Upsert the tile rows of an area (shared with overlapping areas) and link them to it,
    keeping the order of ``tiles``; returns each tile's id and current status."""
    ordered = list(tiles)
    planned: list[PlannedTile] = []
    for start in range(0, len(ordered), _UPSERT_CHUNK):
        part = ordered[start : start + _UPSERT_CHUNK]
        stmt = insert(Tile).values(
            [
                dict(
                    area_id=area.id,
                    source=area.source,
                    z=t.z,
                    x=t.x,
                    y=t.y,
                    polygon=f"SRID=4326;{tile_polygon_wkt(t.z, t.x, t.y)}",
                )
                for t in part
            ]
        )
        stmt = stmt.on_conflict_do_update(
            constraint="tiles_source_zxy_key", set_={"source": stmt.excluded.source}
        ).returning(Tile.id, Tile.z, Tile.x, Tile.y, Tile.status)
        by_zxy = {(r.z, r.x, r.y): r for r in conn.execute(stmt).all()}
        planned += [PlannedTile(*by_zxy[(t.z, t.x, t.y)]) for t in part]
        conn.execute(
            insert(AreaTile)
            .values([dict(area_id=area.id, tile_id=by_zxy[(t.z, t.x, t.y)].id) for t in part])
            .on_conflict_do_nothing()
        )
    return planned


def set_area_status(conn: Connection, area_id: int, status: str) -> None:
    conn.execute(update(Area).where(Area.id == area_id).values(status=status))


def set_job_counts(conn: Connection, job_id: int, **counts: int) -> None:
    """Store counts only the tiler knows (``tiles_planned``, ``tiles_cached``) on the job."""
    conn.execute(update(IngestJob).where(IngestJob.id == job_id).values(**counts))


def record_tile(
    engine: Engine, tile_id: int, values: dict, source: str, items: Sequence[ItemRecord] = ()
) -> None:
    """Store a fetch outcome; a tile the embedder already finished keeps its status.

    A fetched tile of a STAC source also records the ``items`` it was drawn from (in mosaic
    order) and the first one's date, replacing what an earlier fetch recorded, in the same
    transaction: a tile fetched twice keeps one set of links. Other sources write nothing more.
    """
    fetched = values["status"] == "fetched"
    extra: dict = {"fetched_at": text("now()") if fetched else None}
    if fetched and items:
        extra["acquired_at"] = items[0].acquired_at
    with engine.begin() as conn:
        # Also the lock that serialises two fetches of one tile (the row stays locked until commit).
        updated = conn.execute(
            update(Tile)
            .where(Tile.id == tile_id, Tile.status != "embedded")
            .values(**values, **extra)
            .returning(Tile.id)
        ).first()
        if updated is not None and fetched and items:
            _link_items(conn, tile_id, source, items)


def _link_items(conn: Connection, tile_id: int, source: str, items: Sequence[ItemRecord]) -> None:
    """Upsert the items (once per source and item; rows are never revised) and make them the
    tile's links, in mosaic order. Three statements, however many items."""
    keyed = {(r.collection, r.id): r for r in items}  # one row per item, were one listed twice
    # Inserted in key order: two tiles inserting the same new items never wait on each other
    # in opposite orders (a deadlock).
    rows = [keyed[k] for k in sorted(keyed, key=lambda k: (k[0] or "", k[1]))]
    conn.execute(
        text(
            """
            INSERT INTO stac_items (source, collection, item_id, acquired_at, cloud_cover, footprint)
            SELECT :source, r.collection, r.item_id, r.acquired_at, r.cloud_cover,
                ST_GeomFromText(r.footprint, 4326)
            FROM unnest(CAST(:collections AS text[]), CAST(:ids AS text[]),
                        CAST(:times AS timestamptz[]), CAST(:clouds AS real[]), CAST(:footprints AS text[]))
                WITH ORDINALITY AS r(collection, item_id, acquired_at, cloud_cover, footprint, n)
            ORDER BY r.n
            ON CONFLICT ON CONSTRAINT stac_items_source_item_key DO NOTHING
            """
        ),
        {
            "source": source,
            "collections": [r.collection for r in rows],
            "ids": [r.id for r in rows],
            "times": [r.acquired_at for r in rows],
            "clouds": [r.cloud_cover for r in rows],
            "footprints": [r.footprint_wkt for r in rows],
        },
    )
    conn.execute(text("DELETE FROM tile_items WHERE tile_id = :t"), {"t": tile_id})
    conn.execute(
        text(
            """
            INSERT INTO tile_items (tile_id, stac_item_id, position)
            SELECT :t, s.id, min(r.n) - 1
            FROM unnest(CAST(:collections AS text[]), CAST(:ids AS text[])) WITH ORDINALITY
                AS r(collection, item_id, n)
            JOIN stac_items s ON s.source = :source AND s.item_id = r.item_id
                AND s.collection IS NOT DISTINCT FROM r.collection
            GROUP BY s.id
            """
        ),
        {
            "t": tile_id,
            "source": source,
            "collections": [r.collection for r in items],
            "ids": [r.id for r in items],
        },
    )


# --------------------------------------------------------------------------- HTTP API reads


@dataclass(frozen=True)
class WindowRow:
    """An indexed window and the tile it belongs to; ``tile_size`` is None until it is fetched."""

    source: str
    z: int
    x: int
    y: int
    box: tuple[int, int, int, int]  # in the tile's pixel frame; may reach into neighbours
    tile_size: int | None


def tile_inside_some_area(engine: Engine, source: str, z: int, x: int, y: int) -> bool:
    """Whether any area of ``source`` overlaps the tile (not just touches it: the planner's rule)."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM areas WHERE source = :s AND "
                    "ST_Relate(bbox, ST_GeomFromText(:wkt, 4326), 'T********'))"
                ),
                {"s": source, "wkt": tile_polygon_wkt(z, x, y)},
            ).scalar()
        )


def planned_tiles(
    engine: Engine, source: str, z: int, xys: Iterable[tuple[int, int]]
) -> set[tuple[int, int]]:
    """The (x, y) among ``xys`` of tiles that some area of ``source`` planned at zoom ``z`` (a
    tile row linked to a live area): the only tiles a remote source may be asked for."""
    wanted = list(dict.fromkeys(xys))
    if not wanted:
        return set()
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.x, t.y FROM tiles t "
                "JOIN unnest(CAST(:xs AS integer[]), CAST(:ys AS integer[])) AS w(x, y) "
                "ON t.x = w.x AND t.y = w.y "
                "WHERE t.source = :s AND t.z = :z "
                "AND EXISTS (SELECT 1 FROM area_tiles at WHERE at.tile_id = t.id)"
            ),
            {"s": source, "z": z, "xs": [x for x, _ in wanted], "ys": [y for _, y in wanted]},
        ).all()
    return {(r.x, r.y) for r in rows}


def window_row(engine: Engine, window_id: int) -> WindowRow | None:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT w.px_x0, w.px_y0, w.px_x1, w.px_y1, t.source, t.z, t.x, t.y, t.tile_size "
                "FROM windows w JOIN tiles t ON t.id = w.tile_id WHERE w.id = :id"
            ),
            {"id": window_id},
        ).one_or_none()
    if row is None:
        return None
    return WindowRow(
        row.source, row.z, row.x, row.y, (row.px_x0, row.px_y0, row.px_x1, row.px_y1), row.tile_size
    )


def job_with_area(conn: Connection, job_id: int) -> RowMapping | None:
    """The job's id, area_id, state, error and tiles_planned, with its area's source and zooms."""
    return (
        conn.execute(
            text(
                "SELECT j.id, j.area_id, j.state, j.error, j.tiles_planned, a.source, a.zooms "
                "FROM ingest_jobs j JOIN areas a ON a.id = j.area_id WHERE j.id = :job"
            ),
            {"job": job_id},
        )
        .mappings()
        .one_or_none()
    )


def job_zoom_counts(conn: Connection, job_id: int) -> list[dict]:
    """Per zoom of the job's area: planned, fetched (during this job), cached (fetched before the
    job was created), failed, pending and embedded tiles, by zoom."""
    rows = conn.execute(
        text(
            """
            SELECT t.z,
                count(*) AS planned,
                count(*) FILTER (WHERE t.status IN ('fetched', 'embedded')
                                 AND (t.fetched_at IS NULL OR t.fetched_at >= j.created_at)) AS fetched,
                count(*) FILTER (WHERE t.status IN ('fetched', 'embedded')
                                 AND t.fetched_at < j.created_at) AS cached,
                count(*) FILTER (WHERE t.status = 'failed') AS failed,
                count(*) FILTER (WHERE t.status = 'planned') AS pending,
                count(*) FILTER (WHERE t.status = 'embedded') AS embedded
            FROM ingest_jobs j
            JOIN area_tiles at ON at.area_id = j.area_id
            JOIN tiles t ON t.id = at.tile_id
            WHERE j.id = :job GROUP BY t.z ORDER BY t.z
            """
        ),
        {"job": job_id},
    ).mappings()
    return [dict(r) for r in rows]


def area_failures(conn: Connection, area_id: int, limit: int) -> list[dict]:
    """The first ``limit`` failed tiles of an area (by zoom), with their reasons."""
    rows = conn.execute(
        text(
            "SELECT t.z, t.x, t.y, t.error FROM area_tiles at JOIN tiles t ON t.id = at.tile_id "
            "WHERE at.area_id = :area AND t.status = 'failed' ORDER BY t.z, t.id LIMIT :n"
        ),
        {"area": area_id, "n": limit},
    ).mappings()
    return [dict(r) for r in rows]
