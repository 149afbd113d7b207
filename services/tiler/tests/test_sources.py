"""Tile sources against a real HTTP tile server on loopback that injects faults per path.

The server (``cliprs_testing.faultserver.TileServer``) serves deterministic PNG tiles for
``/.../{z}/{x}/{y}.png`` and can be told, per path, to answer 429 with ``Retry-After: 1``, 500,
403 or 404, to send half the PNG (with a matching Content-Length, so only decoding can notice),
to drop the connection without a response, or to answer later than the client's timeout; each
fault either always or for its first N requests. Every request is recorded (time, address, full
target) so the tests can count what really went over the wire.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import text
from tenacity import RetryCallState

from cliprs.db.engine import sync_engine
from cliprs.errors import InvalidInput
from cliprs.settings import CoreSettings
from cliprs.tiles import BBox, tiles_for_bbox
from cliprs_testing.factories import make_area, make_job
from cliprs_testing.faultserver import TILE_SIZE, Fault, TileServer, make_tile
from cliprs_tiler.fetch import fetch_job
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.sources import (
    FetchedTile,
    FolderSource,
    TileFetchError,
    TileNotFound,
    WaitRetryAfter,
    XyzSource,
    check_image,
    open_source,
)


@pytest.fixture
def server() -> Iterator[TileServer]:
    srv = TileServer().start()
    yield srv
    srv.stop()


def fast_settings(**overrides) -> TilerSettings:
    values = dict(retries=3, timeout_s=5.0, backoff_base_s=0.01, backoff_max_s=5.0, rate_limit=1000.0)
    values.update(overrides)
    return TilerSettings(**values)


def xyz(server: TileServer, settings: TilerSettings | None = None, prefix: str = "") -> XyzSource:
    return XyzSource("t", f"{server.base}{prefix}/{{z}}/{{x}}/{{y}}.png", settings or fast_settings())


# --------------------------------------------------------------------------- check_image


def test_check_image_accepts_square_png_and_jpeg() -> None:
    png = make_tile(3, 1, 2)
    got = check_image(png)
    assert got == FetchedTile(png, "png", TILE_SIZE)
    jpg = make_tile(3, 1, 2, size=512, fmt="JPEG")
    assert (check_image(jpg).ext, check_image(jpg).size) == ("jpg", 512)


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.1])
def test_check_image_detects_truncated_png(cut: float) -> None:
    png = make_tile(3, 1, 2)
    with pytest.raises(TileFetchError, match="corrupt or truncated") as info:
        check_image(png[: int(len(png) * cut)])
    assert info.value.retryable


def test_check_image_rejects_garbage_non_square_and_unsupported_formats() -> None:
    with pytest.raises(TileFetchError, match="corrupt or truncated"):
        check_image(b"<html>rate limited</html>")
    buf = io.BytesIO()
    Image.new("RGB", (256, 128)).save(buf, "PNG")
    with pytest.raises(TileFetchError, match="256x128") as info:
        check_image(buf.getvalue())
    assert not info.value.retryable
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "BMP")
    with pytest.raises(TileFetchError, match="unsupported image format BMP") as info:
        check_image(buf.getvalue())
    assert not info.value.retryable


# --------------------------------------------------------------------------- XyzSource over HTTP


async def test_fetch_returns_the_served_tile(server: TileServer) -> None:
    src = xyz(server)
    try:
        got = await src.fetch(5, 10, 12)
    finally:
        await src.aclose()
    assert got.data == server.tile(5, 10, 12)
    assert (got.ext, got.size) == ("png", TILE_SIZE)
    assert server.count("/5/10/12.png") == 1
    assert src.requests == 1


async def test_500_twice_then_ok_succeeds_after_exactly_three_requests(server: TileServer) -> None:
    server.faults["/5/1/1.png"] = Fault("500", times=2)
    src = xyz(server, fast_settings(retries=4))
    try:
        got = await src.fetch(5, 1, 1)
    finally:
        await src.aclose()
    assert got.data == server.tile(5, 1, 1)
    assert server.count("/5/1/1.png") == 3
    assert src.requests == 3


async def test_500_always_gives_up_after_the_configured_retries(server: TileServer) -> None:
    server.faults["/5/1/2.png"] = Fault("500")
    src = xyz(server, fast_settings(retries=2))
    try:
        with pytest.raises(TileFetchError, match="HTTP 500") as info:
            await src.fetch(5, 1, 2)
    finally:
        await src.aclose()
    assert not isinstance(info.value, TileNotFound)
    assert server.count("/5/1/2.png") == 3


async def test_429_honours_retry_after(server: TileServer) -> None:
    server.faults["/5/2/2.png"] = Fault("429", times=1)
    src = xyz(server, fast_settings(retries=2, backoff_base_s=0.01))
    start = time.monotonic()
    try:
        got = await src.fetch(5, 2, 2)
    finally:
        await src.aclose()
    elapsed = time.monotonic() - start
    assert got.data == server.tile(5, 2, 2)
    assert server.count("/5/2/2.png") == 2
    assert elapsed >= 0.95, f"retried after {elapsed:.2f}s, before the 1 s Retry-After"
    hits = [h.t for h in server.hits if h.path == "/5/2/2.png"]
    assert hits[1] - hits[0] >= 0.95


async def test_404_is_tile_not_found_after_one_request(server: TileServer) -> None:
    server.faults["/5/3/3.png"] = Fault("404")
    src = xyz(server, fast_settings(retries=4))
    try:
        with pytest.raises(TileNotFound, match="404") as info:
            await src.fetch(5, 3, 3)
    finally:
        await src.aclose()
    assert "5/3/3" in str(info.value)
    assert not info.value.retryable
    assert server.count("/5/3/3.png") == 1
    assert src.requests == 1


async def test_403_is_not_retried(server: TileServer) -> None:
    server.faults["/5/3/4.png"] = Fault("403")
    src = xyz(server, fast_settings(retries=4))
    try:
        with pytest.raises(TileFetchError, match="HTTP 403") as info:
            await src.fetch(5, 3, 4)
    finally:
        await src.aclose()
    assert not isinstance(info.value, TileNotFound)
    assert not info.value.retryable
    assert server.count("/5/3/4.png") == 1


async def test_truncated_body_is_detected_and_retried(server: TileServer) -> None:
    server.faults["/5/4/4.png"] = Fault("truncate", times=1)
    server.faults["/5/4/5.png"] = Fault("truncate")
    src = xyz(server, fast_settings(retries=2))
    try:
        got = await src.fetch(5, 4, 4)
        assert got.data == server.tile(5, 4, 4)
        assert server.count("/5/4/4.png") == 2
        with pytest.raises(TileFetchError) as info:
            await src.fetch(5, 4, 5)
    finally:
        await src.aclose()
    message = str(info.value).lower()
    assert "corrupt" in message or "truncated" in message
    assert server.count("/5/4/5.png") == 3


async def test_connection_reset_is_retried_then_fails_clearly(server: TileServer) -> None:
    server.faults["/5/6/6.png"] = Fault("reset", times=1)
    server.faults["/5/6/7.png"] = Fault("reset")
    src = xyz(server, fast_settings(retries=2))
    try:
        got = await src.fetch(5, 6, 6)
        assert got.data == server.tile(5, 6, 6)
        assert server.count("/5/6/6.png") == 2
        with pytest.raises(TileFetchError, match="connection error") as info:
            await src.fetch(5, 6, 7)
    finally:
        await src.aclose()
    assert info.value.retryable
    assert server.count("/5/6/7.png") == 3


async def test_slow_response_times_out_is_retried_then_fails_clearly(server: TileServer) -> None:
    server.faults["/5/7/7.png"] = Fault("slow", delay=2.0)
    server.faults["/5/7/8.png"] = Fault("slow", times=1, delay=2.0)
    src = xyz(server, fast_settings(retries=1, timeout_s=0.3))
    start = time.monotonic()
    try:
        with pytest.raises(TileFetchError, match="timed out") as info:
            await src.fetch(5, 7, 7)
        elapsed = time.monotonic() - start
        got = await src.fetch(5, 7, 8)  # slow once, then fine
    finally:
        await src.aclose()
    assert info.value.retryable
    assert server.count("/5/7/7.png") == 2
    # Two 0.3 s timeouts (a lower bound only: a busy machine may take longer; that the server's
    # 2 s answer was not waited for is what "timed out" above says).
    assert 0.55 <= elapsed, elapsed
    assert got.data == server.tile(5, 7, 8)
    assert server.count("/5/7/8.png") == 2


def test_backoff_is_exponential_with_equal_jitter_and_honours_retry_after() -> None:
    wait = WaitRetryAfter(base_s=0.5, max_s=3.0)

    def state(attempt: int, exc: BaseException) -> RetryCallState:
        retry_state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        retry_state.attempt_number = attempt
        retry_state.set_exception((type(exc), exc, None))
        return retry_state

    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (8, 3.0)]:
        waits = [wait(state(attempt, TileFetchError("HTTP 500", retryable=True))) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > ceiling / 4  # jittered, not fixed
    assert wait(state(1, TileFetchError("HTTP 429", retryable=True, retry_after=1.5))) == 1.5
    assert wait(state(1, TileFetchError("HTTP 429", retryable=True, retry_after=60))) == 3.0


def test_subdomain_substitution_in_the_url() -> None:
    src = XyzSource("t", "https://{s}.tiles.example/{z}/{x}/{y}.png", fast_settings())
    try:
        assert src.url(3, 0, 0) == "https://a.tiles.example/3/0/0.png"
        assert src.url(3, 1, 0) == "https://b.tiles.example/3/1/0.png"
        assert src.url(3, 1, 1) == "https://c.tiles.example/3/1/1.png"
        assert src.url(3, 2, 1) == "https://a.tiles.example/3/2/1.png"
    finally:
        asyncio.run(src.aclose())


async def test_subdomains_spread_requests_over_hosts() -> None:
    """``{s}`` picks a host per tile; three loopback addresses stand in for a.b.c subdomains."""
    srv = TileServer(hosts=("127.0.0.1", "127.0.0.2", "127.0.0.3")).start()
    src = XyzSource("t", f"http://127.0.0.{{s}}:{srv.port}/{{z}}/{{x}}/{{y}}.png", fast_settings(), "123")
    try:
        coords = [(6, x, y) for x in range(3) for y in range(2)]
        got = await asyncio.gather(*(src.fetch(*c) for c in coords))
    finally:
        await src.aclose()
        srv.stop()
    assert [g.data for g in got] == [srv.tile(*c) for c in coords]
    by_path = {h.path: h.host for h in srv.hits}
    assert len(srv.hits) == len(coords)
    for z, x, y in coords:
        assert by_path[f"/{z}/{x}/{y}.png"] == f"127.0.0.{'123'[(x + y) % 3]}"
    assert set(by_path.values()) == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}


async def test_rate_limit_holds(server: TileServer) -> None:
    # aiolimiter's bucket holds one second of requests: `rate` may go at once, then `rate` per
    # second. 60 tiles at 20/s therefore take >= 2 s (40 tiles would take only ~1 s).
    rate, n = 20, 60
    burst = rate
    coords = [(8, x, y) for x in range(10) for y in range(n // 10)]
    for c in coords:
        server.tile(*c)  # rendered up front: the server's pace must not be what limits the rate
    src = xyz(server, fast_settings(rate_limit=rate, concurrency=16))
    # Timed where the limiter lets each request go. At the server, the first requests of new
    # connections arrive late on a busy machine and bunch up with later ones, and stamping in
    # an httpx hook has the same problem; neither says anything about the limiter.
    admitted: list[float] = []
    acquire = src.limiter.acquire

    async def stamped(amount: float = 1) -> None:
        await acquire(amount)
        admitted.append(time.monotonic())  # same step as the bucket's own accounting

    src.limiter.acquire = stamped  # type: ignore[method-assign]
    start = time.monotonic()
    try:
        got = await asyncio.gather(*(src.fetch(*c) for c in coords))
    finally:
        await src.aclose()
    elapsed = time.monotonic() - start
    assert len(got) == n
    assert len(server.hits) == n
    assert elapsed >= (n - burst) / rate * 0.9, f"{n} tiles at {rate}/s took only {elapsed:.2f}s"
    # The token bucket's promise: requests i..j (inclusive) fit in the bucket plus what it
    # refilled between them. This also bounds any one-second window to burst + rate.
    times = sorted(admitted)
    assert len(times) == n
    for a in range(n):
        for b in range(a + 1, n):
            allowed = burst + rate * (times[b] - times[a]) + 0.01  # clock reads microseconds apart
            assert b - a + 1 <= allowed, f"{b - a + 1} requests in {times[b] - times[a]:.3f}s"


async def test_token_never_appears_in_logs_or_errors(
    server: TileServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sekrit-123"
    monkeypatch.setenv("TEST_TILE_TOKEN", secret)
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "cliprs", "cliprs.tiler", "tenacity", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    template = f"http://127.0.0.1:{server.port}/{{z}}/{{x}}/{{y}}.png?access_token=${{TEST_TILE_TOKEN}}"
    server.faults["/9/1/1.png"] = Fault("500")
    server.faults["/9/1/2.png"] = Fault("404")
    server.faults["/9/1/3.png"] = Fault("500", times=1)
    core = CoreSettings(tile_sources={"secret": template})
    src = open_source("secret", core, fast_settings(retries=2))
    assert isinstance(src, XyzSource)
    assert src.template == template  # stored as written, placeholder and all
    messages: list[str] = []
    try:
        for coords in ((9, 1, 1), (9, 1, 2)):
            with pytest.raises(TileFetchError) as info:
                await src.fetch(*coords)
            exc: BaseException | None = info.value
            while exc is not None:
                messages += [str(exc), repr(exc)]
                exc = exc.__cause__ or exc.__context__
        got = await src.fetch(9, 1, 3)
        assert got.data == server.tile(9, 1, 3)
    finally:
        await src.aclose()
    # The server did get the token, and it echoed the full URL in its error bodies.
    assert server.hits and all(f"access_token={secret}" in h.target for h in server.hits)
    assert server.count("/9/1/1.png") == 3
    assert caplog.records, "nothing was logged, so the check below would prove nothing"
    logged = [r.getMessage() for r in caplog.records] + [caplog.text]
    assert any("9/1/1" in m for m in logged), "the requests should be logged (without the token)"
    for text_ in logged + messages:
        assert secret not in text_, text_


# --------------------------------------------------------------------------- FolderSource, open_source


async def test_folder_source_reads_files_and_reports_missing(tmp_path: Path) -> None:
    data = make_tile(4, 3, 2)
    (tmp_path / "4" / "3").mkdir(parents=True)
    (tmp_path / "4" / "3" / "2.png").write_bytes(data)
    (tmp_path / "4" / "3" / "5.png").write_bytes(data[: len(data) // 2])
    src = FolderSource("local", f"file://{tmp_path}/{{z}}/{{x}}/{{y}}.png")
    got = await src.fetch(4, 3, 2)
    assert got == FetchedTile(data, "png", TILE_SIZE)
    with pytest.raises(TileNotFound, match="4/3/9"):
        await src.fetch(4, 3, 9)
    with pytest.raises(TileFetchError, match="corrupt or truncated"):
        await src.fetch(4, 3, 5)
    await src.aclose()


def test_open_source_picks_the_class_by_scheme_and_rejects_the_rest(tmp_path: Path) -> None:
    settings = fast_settings()
    core = CoreSettings(
        tile_sources={
            "local": f"file://{tmp_path}/{{z}}/{{x}}/{{y}}.png",
            "web": "https://tiles.example/{z}/{x}/{y}.png",
            "ftp": "ftp://tiles.example/{z}/{x}/{y}.png",
        }
    )
    assert isinstance(open_source("local", core, settings), FolderSource)
    web = open_source("web", core, settings)
    assert isinstance(web, XyzSource)
    asyncio.run(web.aclose())
    with pytest.raises(InvalidInput, match=r"unknown tile source 'nope'.*ftp, local, web"):
        open_source("nope", core, settings)
    with pytest.raises(InvalidInput, match=r"'ftp' has an unsupported scheme.*http\(s\)://.*file://"):
        open_source("ftp", core, settings)
    with pytest.raises(InvalidInput, match="configured sources: none"):
        open_source("web", CoreSettings(tile_sources={}), settings)


# --------------------------------------------------------------------------- fetch_job on the real DB


def _job_tiles(core: CoreSettings, area_id: int) -> list[dict]:
    with sync_engine(core.database_url).connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.id, t.z, t.x, t.y, t.status, t.error, t.content_hash, t.tile_size "
                "FROM area_tiles at JOIN tiles t ON t.id = at.tile_id WHERE at.area_id = :a ORDER BY t.id"
            ),
            {"a": area_id},
        ).mappings()
        return [dict(r) for r in rows]


async def test_fetch_job_records_fetched_and_failed_tiles(
    server: TileServer, core_settings: CoreSettings
) -> None:
    core = CoreSettings(
        **core_settings.model_dump(exclude={"tile_sources"}),
        tile_sources={"t": f"http://127.0.0.1:{server.port}/{{z}}/{{x}}/{{y}}.png"},
    )
    bbox = BBox(7.40, 46.90, 7.62, 47.02)
    zooms = [11, 12]
    plan = sorted((t.z, t.x, t.y) for t in tiles_for_bbox(bbox, zooms))
    assert len(plan) >= 8
    path = "/{}/{}/{}.png".format
    permanent = {path(*plan[0]): Fault("404"), path(*plan[1]): Fault("500")}
    transient = {
        path(*plan[2]): Fault("500", times=1),
        path(*plan[3]): Fault("truncate", times=1),
        path(*plan[4]): Fault("reset", times=1),
        path(*plan[5]): Fault("429", times=1),
    }
    server.faults.update(permanent | transient)
    settings = fast_settings(retries=2, concurrency=4, embed_batch=3, timeout_s=5.0)

    engine = sync_engine(core.database_url)
    with engine.begin() as conn:
        area_id = make_area(conn, name="bern", bbox=tuple(bbox.as_list()), zooms=zooms, source="t")
        job_id = make_job(conn, area_id)

    sent: list[tuple[int, list[int]]] = []
    counts = await fetch_job(job_id, core, settings, lambda j, ids: sent.append((j, list(ids))))

    rows = _job_tiles(core, area_id)
    assert sorted((r["z"], r["x"], r["y"]) for r in rows) == plan
    fetched = {r["id"] for r in rows if r["status"] == "fetched"}
    failed = {r["id"] for r in rows if r["status"] == "failed"}
    assert fetched | failed == {r["id"] for r in rows}
    for r in rows:
        key = path(r["z"], r["x"], r["y"])
        if r["status"] == "fetched":
            served = server.tile(r["z"], r["x"], r["y"])
            assert r["content_hash"] == hashlib.sha256(served).hexdigest()
            assert r["tile_size"] == TILE_SIZE
            cached = core.tile_cache_dir / "t" / str(r["z"]) / str(r["x"]) / f"{r['y']}.png"
            assert cached.read_bytes() == served
            assert r["error"] is None
        else:
            assert key in permanent, f"{key} failed: {r['error']}"
            assert r["error"]
    by_key = {path(r["z"], r["x"], r["y"]): r for r in rows}
    assert "404" in by_key[path(*plan[0])]["error"]
    assert "500" in by_key[path(*plan[1])]["error"]
    assert len(failed) == len(permanent)

    hits = server.counts()
    expected = {path(*t): 1 for t in plan}
    expected[path(*plan[1])] = settings.retries + 1  # 500 every time
    for key in transient:
        expected[key] = 2  # one fault, one retry
    assert dict(hits) == expected

    assert all(j == job_id for j, _ in sent)
    assert all(0 < len(ids) <= settings.embed_batch for _, ids in sent)
    embedded = [i for _, ids in sent for i in ids]
    assert sorted(embedded) == sorted(fetched)  # each fetched tile exactly once

    assert counts["tiles_planned"] == len(plan)
    assert counts["tiles_fetched"] == len(fetched)
    assert counts["tiles_failed"] == len(failed)
    with engine.connect() as conn:
        state = conn.execute(text("SELECT state FROM ingest_jobs WHERE id = :j"), {"j": job_id}).scalar()
    assert state == "embedding"

    # Run it again (a redelivered task): fetched tiles come from the cache, only failed ones are
    # asked for again, and the fetched ones are queued for embedding again, once each.
    with engine.begin() as conn:
        conn.execute(text("UPDATE ingest_jobs SET state = 'fetching' WHERE id = :j"), {"j": job_id})
    before = server.counts()
    sent.clear()
    counts2 = await fetch_job(job_id, core, settings, lambda j, ids: sent.append((j, list(ids))))
    new = server.counts() - before
    fetched_paths = {path(r["z"], r["x"], r["y"]) for r in rows if r["id"] in fetched}
    assert not (set(new) & fetched_paths), f"fetched tiles requested again: {new}"
    assert set(new) <= set(permanent)
    assert sorted(i for _, ids in sent for i in ids) == sorted(fetched)
    assert counts2["tiles_fetched"] == len(fetched)
    assert counts2["tiles_cached"] == len(fetched)
    assert {r["id"]: r["status"] for r in _job_tiles(core, area_id)} == {r["id"]: r["status"] for r in rows}
