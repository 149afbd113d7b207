"""The SQL of the heat map: an ingested tile and its windows."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from cliprs_search.repository.search import WINDOW_COLUMNS


async def tile_at(conn: AsyncConnection, source: str, z: int, x: int, y: int) -> dict | None:
    """The ingested tile ``source/z/x/y`` (``id``, ``tile_size``), or None."""
    row = (
        await conn.execute(
            text("SELECT id, tile_size FROM tiles WHERE source = :s AND z = :z AND x = :x AND y = :y"),
            {"s": source, "z": z, "x": x, "y": y},
        )
    ).one_or_none()
    return dict(row._mapping) if row is not None else None


async def tile_windows(conn: AsyncConnection, tile_id: int) -> list[dict]:
    """Every window row of one tile, by id."""
    rows = await conn.execute(
        text(
            f"SELECT {WINDOW_COLUMNS} FROM windows w JOIN tiles t ON t.id = w.tile_id WHERE w.tile_id = :t ORDER BY w.id"
        ),
        {"t": tile_id},
    )
    return [dict(r._mapping) for r in rows]
