"""Synthetic CLIP-like embeddings for tests and benchmarks: clustered unit vectors, not noise.

Uniform random unit vectors in 512 dimensions are all nearly orthogonal, so every index looks
either perfect or hopeless on them. Real image embeddings sit in a narrow cone with a decaying
spectrum, grouped by scene type, and a tile's overlapping windows are near-duplicates. This
draws the same structure: a shared mean direction, Zipf-sized clusters ("scene types"), places
inside clusters, and windows around places (``group`` per place, consecutive), each level with
a power-law spectrum in a random basis. With the defaults the mean pairwise cosine is about 0.5
and a vector's nearest neighbour (a window of the same place) sits at about 0.95, much like CLIP ViT-B/32 image features.
`ClusteredStream` draws the same structure batch by batch (one area at a time), so a benchmark
can write ten million of them without ever holding them all.

`seed_area` writes matching PostGIS rows (an area, its tiles, their windows), fast enough for a
million windows, so tests and `make bench-search` exercise the real filters and joins.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mercantile
import numpy as np
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.vectors import write_chunk
from cliprs.windows import plan_windows, window_bbox, window_id
from cliprs_testing.factories import link_tiles, make_area


def clustered_unit_vectors(
    n: int,
    dim: int = 512,
    seed: int = 0,
    group: int = 16,
    clusters: int | None = None,
    chunk: int = 65_536,
) -> np.ndarray:
    """(n, dim) float32 unit vectors; rows ``i*group .. (i+1)*group-1`` share a place."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(8, int(np.sqrt(n) / 2))
    spectrum = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)

    def draw(m: int, scale: float) -> np.ndarray:
        z = rng.standard_normal(size=(m, dim), dtype=np.float32)
        return (z * (spectrum * scale)) @ basis

    mean = 1.4 * draw(1, 1.0)[0]
    sizes = 1.0 / np.arange(1, clusters + 1)  # Zipf-like: a few common scene types, a long tail
    centres = mean + draw(clusters, 1.0)
    n_places = -(-n // group)
    places = centres[rng.choice(clusters, size=n_places, p=sizes / sizes.sum())] + draw(n_places, 0.8)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x = places[np.arange(start, stop) // group] + draw(stop - start, 0.5)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:stop] = x
    return out


class ClusteredStream:
    """`clustered_unit_vectors`' structure drawn batch by batch: the mean direction, the scene
    types (cluster centres), the spectrum and the basis are fixed once; each batch gets new places
    inside those clusters and ``group`` windows around each place. Nothing but the shared
    structure is kept between batches, so the memory is one batch's."""

    def __init__(
        self,
        dim: int = 512,
        seed: int = 0,
        group: int = 16,
        clusters: int | None = None,
        planned: int = 1_000_000,
    ):
        """``planned``: the total the batches will add up to (it sets the number of clusters as
        `clustered_unit_vectors` sets it for that many vectors, unless ``clusters`` is given)."""
        self.rng = np.random.default_rng(seed)
        self.dim, self.group = dim, group
        n_clusters = clusters or max(8, int(np.sqrt(planned) / 2))
        self.spectrum = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
        self.basis = np.linalg.qr(self.rng.normal(size=(dim, dim)))[0].astype(np.float32)
        self.mean = 1.4 * self._draw(1, 1.0)[0]
        sizes = 1.0 / np.arange(1, n_clusters + 1)  # Zipf-like, as in clustered_unit_vectors
        self.cluster_p = sizes / sizes.sum()
        self.centres = self.mean + self._draw(n_clusters, 1.0)

    def _draw(self, m: int, scale: float) -> np.ndarray:
        z = self.rng.standard_normal(size=(m, self.dim), dtype=np.float32)
        return (z * (self.spectrum * scale)) @ self.basis

    def places(self, n: int) -> np.ndarray:
        """(n, dim) new place centres (not unit vectors), each in a random cluster."""
        return self.centres[self.rng.choice(len(self.centres), size=n, p=self.cluster_p)] + self._draw(n, 0.8)

    def around(
        self, places: np.ndarray, per_place: int, n: int | None = None, chunk: int = 65_536
    ) -> np.ndarray:
        """(n, dim) float32 unit vectors: ``per_place`` windows around each place, consecutive
        (default n: all of them)."""
        n = len(places) * per_place if n is None else n
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            x = places[np.arange(start, stop) // per_place] + self._draw(stop - start, 0.5)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start:stop] = x
        return out

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, places): ``n`` unit vectors at new places, rows ``i*group .. (i+1)*group-1``
        around ``places[i]``; keep ``places`` to draw more windows of them (held-out queries)."""
        places = self.places(-(-n // self.group))
        return self.around(places, self.group, n), places


def split_queries(vectors: np.ndarray, n_queries: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(indexed, held-out queries): ``n_queries`` random rows taken out of ``vectors``."""
    rng = np.random.default_rng(seed)
    held = rng.choice(len(vectors), n_queries, replace=False)
    mask = np.ones(len(vectors), dtype=bool)
    mask[held] = False
    return vectors[mask], vectors[held]


@dataclass
class SeededArea:
    """Rows written by `seed_area`: one entry per window, in id order."""

    area_id: int
    tile_ids: np.ndarray
    ids: np.ndarray  # window ids (int64)
    boxes: np.ndarray  # (n, 4) min_lon, min_lat, max_lon, max_lat
    zooms: np.ndarray
    tile_of: np.ndarray  # tile id of each window


def seed_area(
    database_url: str,
    tiles: list[mercantile.Tile],
    name: str = "synthetic",
    source: str = "synthetic",
    scales: tuple[float, ...] = (1.0, 0.5),
    stride_ratio: float = 0.25,
    tile_size: int = 256,
    status: str = "ready",
    scales_for_zoom: Callable[[int], Sequence[float]] | None = None,
) -> SeededArea:
    """Write an area with ``tiles`` (status embedded) and their windows, cut exactly as the
    embedder cuts them, straight into PostGIS with COPY (a million windows take about a minute).
    The area's box is the tiles' extent. ``scales_for_zoom`` (e.g. the embedder settings'
    method of that name: finer windows at high zooms) replaces ``scales`` zoom by zoom."""
    tiles = list(tiles)
    bbox, zooms = _extent(tiles), sorted({t.z for t in tiles})
    plans = {
        z: plan_windows(
            tile_size, list(scales if scales_for_zoom is None else scales_for_zoom(z)), stride_ratio
        )
        for z in zooms
    }
    with sync_engine(database_url).begin() as conn:
        area_id = make_area(conn, name=name, bbox=bbox, zooms=zooms, source=source, status=status)
        cur = conn.connection.cursor()  # the same transaction, for COPY
        rows = _copy_tiles(cur, area_id, tiles, source, tile_size)
        link_tiles(conn, area_id, [r[0] for r in rows])
        windows = _copy_windows(cur, rows, plans, tile_size)
    return SeededArea(area_id=area_id, tile_ids=np.array([r[0] for r in rows], dtype=np.int64), **windows)


def _extent(tiles: list[mercantile.Tile]) -> tuple[float, float, float, float]:
    """(west, south, east, north) of the tiles together."""
    bounds = [mercantile.bounds(t) for t in tiles]
    return (
        min(b.west for b in bounds),
        min(b.south for b in bounds),
        max(b.east for b in bounds),
        max(b.north for b in bounds),
    )


def _copy_tiles(
    cur, area_id: int, tiles: list[mercantile.Tile], source: str, tile_size: int
) -> list[tuple[int, int, int, int]]:
    """Insert the tiles (through a COPY into a temporary table, to get their ids back):
    ``(id, z, x, y)`` of each, sorted."""
    tile_rows = io.StringIO()
    for t in tiles:
        b = mercantile.bounds(t)
        tile_rows.write(
            f"{area_id}\t{source}\t{t.z}\t{t.x}\t{t.y}\tSRID=4326;{_box_wkt(b.west, b.south, b.east, b.north)}"
            f"\tembedded\t{tile_size}\n"
        )
    tile_rows.seek(0)
    cur.execute("CREATE TEMP TABLE seed_tiles (LIKE tiles INCLUDING DEFAULTS) ON COMMIT DROP")
    cur.copy_expert(
        "COPY seed_tiles (area_id, source, z, x, y, polygon, status, tile_size) FROM STDIN", tile_rows
    )
    cur.execute(
        "INSERT INTO tiles (area_id, source, z, x, y, polygon, status, tile_size) "
        "SELECT area_id, source, z, x, y, polygon, status, tile_size FROM seed_tiles ORDER BY z, x, y "
        "RETURNING id, z, x, y"
    )
    return sorted(cur.fetchall())


def _copy_windows(
    cur, rows: list[tuple[int, int, int, int]], plans: dict[int, list], tile_size: int
) -> dict[str, np.ndarray]:
    """COPY the windows of every tile (the zoom's plan): the `SeededArea` fields ``ids``,
    ``boxes``, ``zooms`` and ``tile_of``."""
    ids, boxes, zs, tile_of = [], [], [], []
    window_rows = io.StringIO()
    for tile_id, z, x, y in rows:
        for w in plans[z]:
            b = window_bbox(z, x, y, tile_size, w)
            wid = window_id(tile_id, w.index)
            cx, cy = (b.min_lon + b.max_lon) / 2, (b.min_lat + b.max_lat) / 2
            window_rows.write(
                f"{wid}\t{tile_id}\t{z}\t{w.x0}\t{w.y0}\t{w.x1}\t{w.y1}\t{w.scale}\t"
                f"SRID=4326;{_box_wkt(b.min_lon, b.min_lat, b.max_lon, b.max_lat)}\tSRID=4326;POINT({cx!r} {cy!r})\n"
            )
            ids.append(wid)
            boxes.append((b.min_lon, b.min_lat, b.max_lon, b.max_lat))
            zs.append(z)
            tile_of.append(tile_id)
    window_rows.seek(0)
    cur.copy_expert(
        "COPY windows (id, tile_id, z, px_x0, px_y0, px_x1, px_y1, scale, footprint, center) FROM STDIN",
        window_rows,
    )
    return {
        "ids": np.array(ids, dtype=np.int64),
        "boxes": np.array(boxes, dtype=np.float64),
        "zooms": np.array(zs, dtype=np.int16),
        "tile_of": np.array(tile_of, dtype=np.int64),
    }


def write_area_chunks(vectors_dir: Path, area: SeededArea, vectors: np.ndarray, model_id: str) -> None:
    """One vector chunk per tile of a seeded area, as the embedder writes them."""
    # Rows are grouped by tile (seed_area writes them tile by tile): cut at the tile changes
    # rather than scanning every row once per tile (a million windows have 5,000 tiles).
    order = np.argsort(area.tile_of, kind="stable")
    tile_of = area.tile_of[order]
    starts = np.searchsorted(tile_of, area.tile_ids, side="left")
    stops = np.searchsorted(tile_of, area.tile_ids, side="right")
    for tile_id, start, stop in zip(area.tile_ids.tolist(), starts.tolist(), stops.tolist(), strict=True):
        rows = order[start:stop]
        write_chunk(vectors_dir, tile_id, area.ids[rows], vectors[rows], model_id)


def _box_wkt(w: float, s: float, e: float, n: float) -> str:
    return f"POLYGON(({w!r} {s!r},{e!r} {s!r},{e!r} {n!r},{w!r} {n!r},{w!r} {s!r}))"


def delete_seeded(database_url: str, area_ids: list[int]) -> None:
    """Remove seeded areas with their tiles and windows (tests share one database per session)."""
    with sync_engine(database_url).begin() as conn:
        conn.execute(
            text("DELETE FROM tiles WHERE id IN (SELECT tile_id FROM area_tiles WHERE area_id = ANY(:a))"),
            {"a": area_ids},
        )
        conn.execute(text("DELETE FROM areas WHERE id = ANY(:a)"), {"a": area_ids})
