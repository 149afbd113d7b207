"""Slow downloads against a real search-api (uvicorn on a loopback port, real PostGIS): readers
that take the first part of an export and then stop reading hold no database connection, so
searches keep answering; past the cap on concurrent exports an export answers 503 with
Retry-After, and a reader that goes away gives its slot back."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import mercantile
import numpy as np
import pytest
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs_search.app import create_app
from cliprs_search.settings import SearchSettings
from cliprs_testing.factories import make_project, make_run
from cliprs_testing.loopback import serving
from cliprs_testing.synthetic import clustered_unit_vectors, delete_seeded, seed_area
from tests.support.search_app import core_for_test, index_seeded

CENTRE = (-16.0, 28.3)  # Tenerife: far from every other test's rows
READERS = 25
# Polygons of the big run: its GeoJSON is several MB, far more than the socket buffers and the
# server's write buffer hold, so a reader that stops reading stalls the server's sending.
POLYGONS = 20_000
# What a slow reader takes before it stops: past the collection's head, into the features (the
# part that is read from the database).
FIRST_BYTES = 20_000


@pytest.fixture(scope="module")
def world(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    core = core_for_test(pg_url, redis_url, tmp_path_factory.mktemp("exports-load"), "exports-load")
    t = mercantile.tile(*CENTRE, 16)
    area = seed_area(
        pg_url, [t, mercantile.Tile(t.x + 1, t.y, 16)], name="exports load", source="exports-load"
    )
    engine = sync_engine(pg_url)
    try:
        index_seeded(core, area, clustered_unit_vectors(len(area.ids), 512, seed=3), "test/exports-load")
        with engine.begin() as conn:
            project = make_project(conn, "exports load")
            run = make_run(conn, project)
            conn.execute(
                text(
                    "INSERT INTO run_polygons (run_id, z, geom, area_m2, max_score, mean_score, window_count, "
                    "window_ids) SELECT :r, 18, g, 25, 0.9, 0.8, 1, '{}' FROM ("
                    "  SELECT ST_Multi(ST_MakeEnvelope(:x0 + i * 1e-4, :y0, :x0 + i * 1e-4 + 5e-5, :y0 + 5e-5, "
                    "  4326)) AS g FROM generate_series(0, :n - 1) i) s"
                ),
                {"r": run, "n": POLYGONS, "x0": CENTRE[0] - 1, "y0": CENTRE[1] - 0.1},
            )
        settings = SearchSettings(
            auth="off", geocoder="none", embedder_url="http://127.0.0.1:9", max_concurrent_exports=READERS
        )
        app = create_app(core, settings)
        try:
            with serving(app) as port:
                yield {"app": app, "port": port, "run": run, "window": int(area.ids[0])}
        finally:
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM projects WHERE id = :p"), {"p": project})
    finally:
        delete_seeded(pg_url, [area.area_id])


class SlowReader:
    """An HTTP/1.1 GET on a raw socket with a tiny receive buffer, read only as far as asked."""

    def __init__(self, port: int, path: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        self.data = b""

    def read(self, n: int) -> bytes:
        """At least ``n`` bytes of the answer (head included), or what came before it ended."""
        while len(self.data) < n:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.data += chunk
        return self.data

    @property
    def status(self) -> int:
        return int(self.data.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


def test_slow_export_readers_hold_no_connection_and_searches_keep_answering(world: dict) -> None:
    api = f"http://127.0.0.1:{world['port']}"
    path = f"/v1/runs/{world['run']}/export.geojson"
    readers = [SlowReader(world["port"], path) for _ in range(READERS)]
    try:
        for r in readers:
            r.read(FIRST_BYTES)
            assert r.status == 200, r.data[:300]
            assert b'"type": "Feature"' in r.data  # into the polygons read from the database
        # Every reader now holds its download open and reads nothing more.
        pool = world["app"].state.ctx.engine.sync_engine.pool
        for _ in range(10):
            resp = httpx.get(f"{api}/v1/windows/{world['window']}/similar", params={"k": 5}, timeout=10)
            assert resp.status_code == 200, resp.text
            assert resp.json()["features"]
        assert httpx.get(f"{api}/v1/runs/{world['run']}", timeout=10).status_code == 200
        assert pool.checkedout() == 0, pool.status()

        # Past the cap: a clear 503 with Retry-After, from the cap (its message), not from a
        # connection pool that ran dry (that would take its 30 s timeout and say so).
        refused = httpx.get(f"{api}{path}", timeout=20)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        message = refused.json()["error"]["message"]
        assert f"{READERS} exports" in message and "retry" in message
        for kind in ("export.csv", "export.gpkg"):
            assert httpx.get(f"{api}/v1/runs/{world['run']}/{kind}", timeout=10).status_code == 503

        # A reader that goes away gives its slot back.
        readers.pop().close()
        deadline = time.monotonic() + 10
        while True:
            with httpx.stream("GET", f"{api}{path}", timeout=10) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed reader's slot did not come back"
            time.sleep(0.1)
    finally:
        for r in readers:
            r.close()


def test_an_export_read_slowly_to_the_end_is_whole(world: dict) -> None:
    """Batches read on their own connections still make one file: every polygon once, in order."""
    reader = SlowReader(world["port"], f"/v1/runs/{world['run']}/export.csv")
    try:
        reader.read(FIRST_BYTES)
        time.sleep(0.5)  # the server waits on the reader meanwhile
        body = reader.read(10**9)
    finally:
        reader.close()
    head, _, rest = body.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    # Chunked transfer: strip the chunk sizes.
    out, pos = b"", 0
    while True:
        eol = rest.index(b"\r\n", pos)
        size = int(rest[pos:eol], 16)
        if size == 0:
            break
        out += rest[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2
    lines = out.decode().splitlines()
    ids = [int(line.split(",")[0]) for line in lines[1:]]
    assert len(ids) == POLYGONS and ids == sorted(set(ids))
    assert np.all(np.diff(ids) > 0)
