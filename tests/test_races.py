"""Races between ingest stages, each reproduced deterministically (threads paused at the point
where the other party slips in), against the real database and the indexer's own code."""

from __future__ import annotations

import threading
import uuid

import mercantile
import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from cliprs.db.engine import sync_engine
from cliprs.db.models import Area
from cliprs.manifest import load_manifest
from cliprs.settings import CoreSettings
from cliprs.vectors import write_chunk
from cliprs.windows import window_id
from cliprs_index.shardset import load_shardset
from cliprs_indexer import maintenance
from cliprs_indexer import repository as indexer_repository
from cliprs_indexer.build import collect_area_vectors, publish_area
from cliprs_indexer.settings import IndexerSettings
from cliprs_testing.factories import make_area, make_tile, make_window
from cliprs_tiler.repository import upsert_area_tiles

DIM = 512
WINDOWS = 4
SETTINGS = IndexerSettings()


def seed_area(
    core: CoreSettings, seeded: list[int], x0: int, n_tiles: int, status: str = "embedded"
) -> tuple[int, list[int], str]:
    """An area of ``n_tiles`` z14 tiles from x = ``x0``, with windows and vector chunks."""
    source = f"src-{uuid.uuid4().hex[:8]}"
    engine = sync_engine(core.database_url)
    with engine.begin() as conn:
        area_id = make_area(conn, source=source, status="ingesting")
        seeded.append(area_id)
        tile_ids = [
            make_tile(conn, area_id, 14, x0 + i, 6339, source=source, status=status) for i in range(n_tiles)
        ]
        for tile_id in tile_ids:
            wids = [window_id(tile_id, k) for k in range(WINDOWS)]
            for wid in wids:
                make_window(conn, wid, tile_id)
            vecs = np.random.default_rng(tile_id).standard_normal((WINDOWS, DIM)).astype(np.float32)
            write_chunk(
                core.vectors_dir,
                tile_id,
                np.array(wids),
                vecs / np.linalg.norm(vecs, axis=1, keepdims=True),
                "m",
            )
    return area_id, tile_ids, source


def indexed_ids(core: CoreSettings) -> set[int]:
    manifest = load_manifest(core.index_dir)
    index = load_shardset(core.index_dir, manifest)
    return {int(i) for s in index.shards for i in np.asarray(s.ids)}


def test_an_area_planned_over_a_deleted_areas_tile_keeps_it(core_settings, seeded_areas, monkeypatch) -> None:
    """Deleting area A decides which of its tiles nobody else uses, then deletes them: a new area
    B planned over one of those tiles in between must not lose it (the cascade would take B's link
    row and B's job would end with a hole)."""
    a, a_tiles, source = seed_area(core_settings, seeded_areas, 4700, 2)
    publish_area(core_settings, a, collect_area_vectors(core_settings, a), SETTINGS)
    with sync_engine(core_settings.database_url).begin() as conn:
        b = make_area(conn, source=source, status="ingesting")
        seeded_areas.append(b)

    decided, go = threading.Event(), threading.Event()
    count_windows = indexer_repository.count_windows

    def paused_count(conn, tile_ids):  # runs once the delete has decided what to delete
        decided.set()
        go.wait(10)
        return count_windows(conn, tile_ids)

    monkeypatch.setattr(indexer_repository, "count_windows", paused_count)
    deleter = threading.Thread(target=maintenance.delete_area, args=(core_settings, a, SETTINGS))
    deleter.start()
    assert decided.wait(30)

    def plan_b() -> None:  # the tiler planning area B (its own upsert and link, one transaction)
        engine = sync_engine(core_settings.database_url)
        with Session(engine) as session, session.begin():
            area = session.get(Area, b)
            upsert_area_tiles(session.connection(), area, [mercantile.Tile(4700, 6339, 14)])

    planner = threading.Thread(target=plan_b)
    planner.start()
    planner.join(1.5)  # today it commits at once; with the fix it waits for the delete
    go.set()
    deleter.join(30)
    planner.join(30)
    assert not deleter.is_alive() and not planner.is_alive()
    with sync_engine(core_settings.database_url).connect() as conn:
        linked = conn.execute(
            text(
                "SELECT t.id, t.status FROM area_tiles at JOIN tiles t ON t.id = at.tile_id "
                "WHERE at.area_id = :b AND t.z = 14 AND t.x = 4700 AND t.y = 6339"
            ),
            {"b": b},
        ).all()
    assert len(linked) == 1, "area B lost its tile to area A's delete"
    tile_id, status = linked[0]
    if tile_id in a_tiles:  # B linked first: the tile stays, with its windows in the index
        assert status == "embedded"
        assert {window_id(tile_id, k) for k in range(WINDOWS)} <= indexed_ids(core_settings)
    else:  # the delete went first: B planned a fresh tile, which its job fetches and embeds
        assert status == "planned"


def test_a_full_rebuild_never_drops_an_area_published_while_it_read(
    core_settings, seeded_areas, monkeypatch
) -> None:
    """A full rebuild lists the embedded tiles and reads their vectors (slow at scale), then
    publishes: area B embedded and published meanwhile must still be in the index after it."""
    a, _, _ = seed_area(core_settings, seeded_areas, 4800, 2)
    publish_area(core_settings, a, collect_area_vectors(core_settings, a), SETTINGS)
    b, b_tiles, _ = seed_area(core_settings, seeded_areas, 4900, 2, status="fetched")

    read = maintenance.read_tile_vectors
    publisher: list[threading.Thread] = []

    def slow_read(core, tile_ids):
        if not publisher:  # B's last tiles are embedded and its index job publishes now
            with sync_engine(core.database_url).begin() as conn:
                conn.execute(text("UPDATE tiles SET status = 'embedded' WHERE id = ANY(:t)"), {"t": b_tiles})
            t = threading.Thread(
                target=lambda: publish_area(core, b, collect_area_vectors(core, b), SETTINGS)
            )
            publisher.append(t)
            t.start()
            t.join(1.5)  # today it publishes at once; with the fix it waits for the rebuild
        return read(core, tile_ids)

    monkeypatch.setattr(maintenance, "read_tile_vectors", slow_read)
    maintenance.rebuild(core_settings, SETTINGS)
    publisher[0].join(30)
    expected = {window_id(t, k) for t in b_tiles for k in range(WINDOWS)}
    assert expected <= indexed_ids(core_settings), "the rebuild published an index without area B"
