"""Tiler throughput: tiles per second from a local fault-free tile server and from the cache,
against a naive sequential fetch of the same tiles.

    make bench-tiler            (or: .venv/bin/python benchmarks/bench_tiler.py --tiles 512)

Every figure fetches the same plan into an empty cache and checks every image, so the work per
tile is the same: request, decode check, atomic cache write. ``fetch_job`` adds the PostGIS
tile rows and the embedding batches, as in production. The local server answers at once; the
``--latency-ms`` rows add a delay per response, as a distant tile provider has, which is where
bounded concurrency pays. The provider's rate limit is lifted for the measurement (it is a
politeness setting, 20/s by default, and would be the whole figure otherwise).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import mercantile
from machine_info import finish, run_info
from pydantic import Field
from pydantic_settings import BaseSettings

from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings
from cliprs.tilecache import find_tile, store_tile
from cliprs.tiles import BBox, tiles_for_bbox, zorder
from cliprs_raster.samples import demo_band_paths
from cliprs_testing.db import throwaway_database
from cliprs_testing.factories import make_area, make_job
from cliprs_testing.faultserver import TileServer
from cliprs_tiler.fetch import fetch_job
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.sources import RasterSource, XyzSource, check_image
from cliprs_tools.cli import cli_config, run_cli


def plan(n: int) -> list[mercantile.Tile]:
    """About ``n`` zoom-15 tiles of the demo area, in fetch (Z-) order."""
    z, side = 15, max(1, round(n**0.5))
    centre = mercantile.tile(-75.62, 37.67, z)
    tiles = [mercantile.Tile(centre.x + dx, centre.y + dy, z) for dx in range(side) for dy in range(side)]
    return zorder(tiles)


def _serve(conn, tiles: list[tuple[int, int, int]], latency_s: float) -> None:
    server = TileServer(latency_s=latency_s)
    for t in tiles:
        server.tile(*t)  # rendered up front: the client side is what is measured
    server.start()
    conn.send(server.base)
    conn.recv()  # until told to stop
    server.stop()


@contextmanager
def tile_server(tiles: list[mercantile.Tile], latency_s: float) -> Iterator[str]:
    """The fault-free test tile server in a process of its own, as a real provider would be."""
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(there, [tuple(t) for t in tiles], latency_s), daemon=True)
    proc.start()
    try:
        yield here.recv()
    finally:
        here.send("stop")
        proc.join(10)


def naive(base: str, tiles: list[mercantile.Tile], cache: Path) -> float:
    """One request after the other with a plain client: the baseline."""
    start = time.perf_counter()
    with httpx.Client(timeout=20) as client:
        for t in tiles:
            got = check_image(client.get(f"{base}/{t.z}/{t.x}/{t.y}.png").raise_for_status().content)
            store_tile(cache, "naive", t.z, t.x, t.y, got.ext, got.data)
    return len(tiles) / (time.perf_counter() - start)


async def concurrent(base: str, tiles: list[mercantile.Tile], cache: Path, settings: TilerSettings) -> float:
    """The tiler's source (rate limit, retries, bounded concurrency) with the cache writes."""
    src = XyzSource("bench", f"{base}/{{z}}/{{x}}/{{y}}.png", settings)
    sem = asyncio.Semaphore(settings.concurrency)

    async def one(t: mercantile.Tile) -> None:
        async with sem:
            got = await src.fetch(t.z, t.x, t.y)
            await asyncio.to_thread(store_tile, cache, "bench", t.z, t.x, t.y, got.ext, got.data)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(one(t) for t in tiles))
    finally:
        await src.aclose()
    return len(tiles) / (time.perf_counter() - start)


def cache_reads(tiles: list[mercantile.Tile], cache: Path) -> float:
    start = time.perf_counter()
    for t in tiles:
        check_image(find_tile(cache, "bench", t.z, t.x, t.y).read_bytes())
    return len(tiles) / (time.perf_counter() - start)


def job_rates(
    base: str, n: int, data_dir: Path, db_url: str, settings: TilerSettings
) -> tuple[float, float, int]:
    """fetch_job end to end (plan, fetch, cache, tile rows, embedding batches): a cold run from
    the server, then a second job over the same area, served entirely from the cache."""
    tiles = plan(n)
    nw = mercantile.bounds(min(t.x for t in tiles), min(t.y for t in tiles), 15)
    se = mercantile.bounds(max(t.x for t in tiles), max(t.y for t in tiles), 15)
    eps = 1e-7  # inside the outer tiles' borders, so the plan is exactly these tiles
    box = BBox(nw.west + eps, se.south + eps, se.east - eps, nw.north - eps)
    planned = len(list(tiles_for_bbox(box, [15])))
    core = CoreSettings(
        database_url=db_url,
        data_dir=data_dir,
        tile_sources={"bench": f"{base}/{{z}}/{{x}}/{{y}}.png"},
        max_tiles_per_area=100_000,
    )
    with sync_engine(db_url).begin() as conn:
        area = make_area(conn, name="bench", bbox=tuple(box.as_list()), zooms=[15], source="bench")
        jobs = [make_job(conn, area) for _ in range(2)]
    rates = []
    for job in jobs:
        start = time.perf_counter()
        counts = asyncio.run(fetch_job(job, core, settings, lambda _j, _ids: None))
        rates.append(planned / (time.perf_counter() - start))
        if counts["tiles_fetched"] != planned:  # a rate over tiles never fetched would be meaningless
            raise RuntimeError(
                f"fetch_job fetched {counts['tiles_fetched']} of {planned} planned tiles: {counts}"
            )
    return rates[0], rates[1], planned


def render_rate(n: int) -> float:
    """Tiles cut on the fly from the Sentinel-2 scene (geotiff:// source), all cores."""
    src = RasterSource("s2", demo_band_paths())
    tiles = list(mercantile.tiles(-75.70, 37.60, -75.55, 37.74, [14]))[:n]

    async def run() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(src.fetch(t.z, t.x, t.y) for t in tiles))
        elapsed = time.perf_counter() - start
        await src.aclose()
        return len(tiles) / elapsed

    src.render(tiles[0].z, tiles[0].x, tiles[0].y)  # the one-off scene stretch, outside the timing
    return asyncio.run(run())


# `--json` is the flag's name: the field shadows BaseModel's deprecated `.json()`, harmlessly.
warnings.filterwarnings("ignore", message='Field name "json" in "TilerBenchSettings"', category=UserWarning)


class TilerBenchSettings(BaseSettings):
    """Tiler throughput: tiles/s from a local tile server and from the cache, against a naive fetch."""

    model_config = cli_config("BENCH_TILER_", "python benchmarks/bench_tiler.py")

    tiles: int = Field(400, gt=0, description="tiles per measurement")
    concurrency: int = Field(16, gt=0)
    latency_ms: float = Field(20.0, ge=0, description="simulated provider latency")
    json: Path = Field(
        Path(__file__).resolve().parents[1] / "benchmarks/results/tiler.json",
        description="where the JSON results go",
    )


def run(options: TilerBenchSettings) -> None:
    """Measure every figure, print them and write them to ``--json``."""
    tiles = plan(options.tiles)
    settings = TilerSettings(concurrency=options.concurrency, rate_limit=1e6)
    info = run_info(
        options,
        product={
            "TILER_CONCURRENCY": f"{settings.concurrency} (default {TilerSettings().concurrency})",
            "TILER_RATE_LIMIT": "1e6 (lifted: a politeness setting, 20/s by default)",
        },
    )
    figures: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-tiler-"))
    try:
        for latency in (0.0, options.latency_ms / 1000):
            with tile_server(tiles, latency) as base:
                tag = f"{latency * 1000:.0f}ms"
                figures[f"naive_{tag}"] = naive(base, tiles, work / f"naive-{tag}")
                figures[f"tiler_{tag}"] = asyncio.run(concurrent(base, tiles, work / f"c-{tag}", settings))
                if latency == 0:
                    figures["cache_read"] = cache_reads(tiles, work / f"c-{tag}")
                    with throwaway_database(CoreSettings().database_url, prefix="cliprs_bench") as db_url:
                        cold, warm, planned = job_rates(base, options.tiles, work / "job", db_url, settings)
                    figures["job_cold"], figures["job_cached"] = cold, warm
        figures["geotiff_render"] = render_rate(min(options.tiles, 48))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    size = len(tiles)
    lat = f"{options.latency_ms:.0f}ms"
    print(
        f"tiler benchmark: {size} tiles of 256 px PNG, concurrency {options.concurrency}, rate limit lifted"
    )
    print(
        f"  local server, no latency : tiler {figures['tiler_0ms']:8.1f} tiles/s   naive sequential "
        f"{figures['naive_0ms']:8.1f} tiles/s   ratio {figures['tiler_0ms'] / figures['naive_0ms']:5.2f}x"
    )
    print(
        f"  local server, {lat} latency: tiler {figures[f'tiler_{lat}']:8.1f} tiles/s   naive sequential "
        f"{figures[f'naive_{lat}']:8.1f} tiles/s   ratio {figures[f'tiler_{lat}'] / figures[f'naive_{lat}']:5.2f}x"
    )
    print(
        f"  fetch_job (PostGIS rows, cache, batches), {planned} tiles: cold {figures['job_cold']:8.1f} tiles/s, "
        f"re-run from the cache {figures['job_cached']:8.1f} tiles/s"
    )
    print(f"  cache reads (find, read, decode check): {figures['cache_read']:8.1f} tiles/s")
    print(f"  geotiff:// Sentinel-2 tiles cut on the fly: {figures['geotiff_render']:8.1f} tiles/s")
    result = {**finish(info), "tiles": size, "job_tiles": planned, "figures": figures}
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(result, indent=2))
    print(f"results: {options.json}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; bad options are reported as one ``error: ...`` line (exit 2)."""
    return run_cli(TilerBenchSettings, run, argv)


if __name__ == "__main__":
    sys.exit(main())
