"""Web map: page load, search as the browser sees it, and live filtering, in headless Chromium.

    make bench-web            (or: .venv/bin/python benchmarks/bench_web.py --queries 30)

Starts the whole platform as local processes (tiny generated CLIP, a throwaway PostGIS
database, a Redis database of its own), ingests a real Sentinel-2 area through the API, then
drives the page in Debian's Chromium (Playwright, ``--disable-gpu``: WebGL runs on the CPU,
so map drawing is slower than on a desktop with a GPU). Figures:

- the page's own weight (HTML, CSS, JS and the vendored MapLibre bundle), raw and gzipped;
- cold page load: navigation until the areas are listed (config, API capabilities, areas) and
  until the map has loaded, median of ``--loads`` fresh browser contexts;
- text search: the API alone (a Python client), the browser's fetch of the same request, and the
  browser's whole search (fetch, list and pins), p50 and p90, with the page's overhead as ratios;
- live filtering: one move of the sensitivity slider over ``--k`` results (list and pins
  redrawn), mean of 50 moves.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import workspace  # noqa: F401  (the repository on sys.path, for tests.support)
from machine_info import finish, run_info
from playwright.sync_api import sync_playwright
from pydantic import Field
from pydantic_settings import BaseSettings

from cliprs.tiles import BBox, tiles_for_bbox
from cliprs_testing.browser import CHROMIUM, CHROMIUM_ARGS
from cliprs_testing.db import ADMIN_URL, throwaway_database
from cliprs_testing.model import default_cache_dir, tiny_clip
from cliprs_testing.redis_db import private_redis_db
from cliprs_testing.tiles import render_demo_tiles
from cliprs_tools.cli import cli_config, run_cli
from cliprs_web.app import STATIC_DIR
from tests.support.platform import ingest_area, run_platform

REPO = Path(__file__).resolve().parents[1]
HELP = __doc__  # the whole module docstring is the --help text
AREA = {"name": "bench", "bbox": [-75.68, 37.64, -75.60, 37.70], "zooms": [13, 14, 15], "source": "bench"}
PHRASES = [
    "boats near a pier", "farmland", "a creek through a marsh", "a beach", "houses along a road",
    "a forest", "a parking lot", "a small town", "a field with crops", "a river bend",
]  # fmt: skip


class WebBenchSettings(BaseSettings):
    """Web map: page load, search as the browser sees it, and live filtering, in headless Chromium."""

    model_config = cli_config(
        "BENCH_WEB_", "python benchmarks/bench_web.py", json_schema_extra={"description": HELP}
    )

    queries: int = Field(30, gt=0, description="timed text searches")
    loads: int = Field(5, gt=0, description="cold page loads")
    k: int = Field(200, gt=0, description="results for the rendering and slider figures")
    chromium: str = CHROMIUM
    admin_url: str = ADMIN_URL
    redis_url: str = os.environ.get("CLIPRS_REDIS_URL", "redis://127.0.0.1:6379/0")
    json: Path = Field(REPO / "benchmarks/results/web.json", description="where the JSON results go")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def render_area(out: Path) -> int:
    tiles = list(tiles_for_bbox(BBox(*AREA["bbox"]), AREA["zooms"]))
    render_demo_tiles(out, tiles)
    return len(tiles)


def bundle_sizes() -> tuple[int, int, int, int]:
    """(own files raw, gzipped, vendored MapLibre raw, gzipped) in bytes."""
    own = [STATIC_DIR / "index.html", STATIC_DIR / "app.css", STATIC_DIR / "app.js"]
    own += sorted((STATIC_DIR / "js").glob("*.js"))
    vendor = [STATIC_DIR / "vendor/maplibre-gl.js", STATIC_DIR / "vendor/maplibre-gl.css"]

    def sizes(paths: list[Path]) -> tuple[int, int]:
        data = [p.read_bytes() for p in paths]
        return sum(map(len, data)), sum(len(gzip.compress(d, 9)) for d in data)

    return (*sizes(own), *sizes(vendor))


def measure_page(web: str, api: str, options: WebBenchSettings) -> dict:
    out: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=options.chromium, args=CHROMIUM_ARGS)
        ready, map_ready = [], []
        for _ in range(options.loads):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            start = time.perf_counter()
            page.goto(web, wait_until="commit")
            page.wait_for_selector("body[data-ready=true]", timeout=60_000)
            ready.append((time.perf_counter() - start) * 1000)
            page.wait_for_selector("body[data-map=ready]", timeout=60_000)
            map_ready.append((time.perf_counter() - start) * 1000)
            context.close()
        out["load"] = {"ready": statistics.median(ready), "map": statistics.median(map_ready)}

        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(web)
        page.wait_for_selector("body[data-ready=true][data-map=ready]")
        # Each search starts on a settled map: the previous fly-to animation and tile loads are
        # over (on a CPU-rendered WebGL they would hold the page's main thread). The time until
        # the map settles again (fly to the best hit, tiles loaded) is measured too.
        search = """async ([q, k]) => {
            // 'idle' comes after a frame with nothing left to load; a timer keeps a stuck tile
            // from stalling the benchmark.
            const idle = () => new Promise((resolve) => {
                const timer = setTimeout(resolve, 10000);
                const done = () => { clearTimeout(timer); resolve(); };
                if (cliprs.map.loaded() && !cliprs.map.isMoving()) done();
                else { cliprs.map.once('idle', done); cliprs.map.triggerRepaint(); }
            });
            await idle();
            const t = performance.now();
            await cliprs.search.run({kind: 'text', q}, {k});
            const shown = performance.now() - t;
            await new Promise((resolve) => requestAnimationFrame(resolve));
            await idle();
            return [shown, cliprs.search.meta.roundTripMs, cliprs.search.meta.tookMs,
                    cliprs.search.features.length, performance.now() - t];
        }"""
        for q in PHRASES:  # warm-up: connections, caches, JIT
            page.evaluate(search, [q, 20])
            httpx.get(f"{api}/v1/search", params={"q": q, "k": 20})
        total, fetch, server, direct, direct_server, settled = [], [], [], [], [], []
        with httpx.Client(timeout=60) as client:

            def from_python(q: str) -> None:
                t = time.perf_counter()
                resp = client.get(f"{api}/v1/search", params={"q": q, "k": 20})
                direct.append((time.perf_counter() - t) * 1000)
                resp.raise_for_status()
                direct_server.append(resp.json()["took_ms"])

            for i in range(options.queries):
                q = PHRASES[i % len(PHRASES)]
                if i % 2:  # alternate who asks first, so neither profits from the other's caches
                    from_python(q)
                t_total, t_fetch, t_server, _, t_settled = page.evaluate(search, [q, 20])
                settled.append(t_settled)
                total.append(t_total)
                fetch.append(t_fetch)
                server.append(t_server)
                if not i % 2:
                    from_python(q)
        # What the client adds to the server's own work, per request: HTTP, JSON, the event loop.
        client_cost = {
            "direct": [d - s for d, s in zip(direct, direct_server, strict=True)],
            "fetch": [f - s for f, s in zip(fetch, server, strict=True)],
        }
        out["client_cost"] = {k: statistics.median(v) for k, v in client_cost.items()}
        out["search"] = {
            name: {"p50": pct(v, 50), "p90": pct(v, 90)}
            for name, v in (
                ("server", server),
                ("direct", direct),
                ("fetch", fetch),
                ("total", total),
                ("settled", settled),
            )
        }
        t_big, _, _, n_big, _ = page.evaluate(search, ["farmland", options.k])
        out["big"] = {"ms": t_big, "n": n_big}
        per_move = page.evaluate(
            """() => {
                const slider = document.getElementById('min-score');
                const lo = Number(slider.min), hi = Number(slider.max);
                const t = performance.now();
                for (let i = 0; i < 50; i += 1) {
                    slider.value = String(lo + ((i % 10) / 10) * (hi - lo));
                    slider.dispatchEvent(new Event('input'));
                }
                return (performance.now() - t) / 50;
            }"""
        )
        out["slider"] = {"ms": per_move, "n": n_big}
        browser.close()
    return out


def run(options: WebBenchSettings) -> None:
    """Start the platform, ingest the area, measure the page in Chromium and print the figures."""
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the services, database and Redis are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    info = run_info(
        options,
        product={
            "SEARCH_AUTH": "off (the test platform's default; the page searches without a key either way)",
            "CLIP_MODEL": "the tiny generated CLIP (no weights can be downloaded here)",
        },
    )
    own_raw, own_gz, vendor_raw, vendor_gz = bundle_sizes()
    model_dir = tiny_clip(default_cache_dir(REPO))
    with (
        tempfile.TemporaryDirectory() as tmp,
        throwaway_database(options.admin_url) as db_url,
        private_redis_db(options.redis_url) as redis_url,
    ):
        tmp_path = Path(tmp)
        print("rendering the Sentinel-2 tiles of the area...", flush=True)
        n_tiles = render_area(tmp_path / "tiles")
        env = {
            "CLIPRS_TILE_SOURCES": json.dumps({"bench": f"file://{tmp_path}/tiles/{{z}}/{{x}}/{{y}}.png"}),
            "CLIP_MODEL": str(model_dir),
        }
        with run_platform(
            tmp_path / "run",
            database_url=db_url,
            redis_url=redis_url,
            data_dir=tmp_path / "data",
            namespace="bench-web",
            env=env,
            with_web=True,
            ready_timeout_s=300,
            cwd=REPO,
        ) as platform:
            print(f"ingesting {n_tiles} tiles through the API...", flush=True)
            job = ingest_area(platform, AREA, timeout_s=900)["job"]
            print(
                f"area: {n_tiles} Sentinel-2 tiles at zooms {AREA['zooms']}, {job['windows_indexed']:,} windows"
            )
            r = measure_page(platform["web"], platform["api"], options)

    s = r["search"]
    print(f"\npage weight: own files {own_raw / 1024:.0f} KiB ({own_gz / 1024:.0f} KiB gzipped), "
          f"MapLibre {vendor_raw / 1024:.0f} KiB ({vendor_gz / 1024:.0f} KiB gzipped)")  # fmt: skip
    print(
        f"cold load (median of {options.loads}): areas listed {r['load']['ready']:.0f} ms, map loaded {r['load']['map']:.0f} ms"
    )
    print(f"\ntext search, k=20, {options.queries} queries      p50 ms   p90 ms")
    for name, label in (
        ("server", "API work (took_ms)"),
        ("direct", "API from a Python client"),
        ("fetch", "API from the page (fetch)"),
        ("total", "page: fetch + list + pins"),
        ("settled", "page: until the map has flown"),
    ):
        print(f"  {label:<32} {s[name]['p50']:7.1f}  {s[name]['p90']:7.1f}")
    cost = r["client_cost"]
    print(
        f"  page overhead: total/fetch {s['total']['p50'] / s['fetch']['p50']:.2f}x "
        f"(list and pins {s['total']['p50'] - s['fetch']['p50']:.1f} ms); "
        f"transfer beyond took_ms: page {cost['fetch']:.1f} ms, Python {cost['direct']:.1f} ms"
    )
    print(f"\n{r['big']['n']} results (k={options.k}): search and render {r['big']['ms']:.0f} ms")
    print(f"slider move over {r['slider']['n']} results (list and pins redrawn): {r['slider']['ms']:.1f} ms")
    sizes = {"own_kib": own_raw / 1024, "own_gzip_kib": own_gz / 1024}
    sizes |= {"maplibre_kib": vendor_raw / 1024, "maplibre_gzip_kib": vendor_gz / 1024}
    result = {**finish(info), "area_tiles": n_tiles, "windows": job["windows_indexed"], "page": sizes, **r}
    options.json.write_text(json.dumps(result, indent=2, default=float))
    print(f"results: {options.json}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; bad options are reported as one ``error: ...`` line (exit 2)."""
    args = list(sys.argv[1:] if argv is None else argv)
    # pydantic-settings spells a one-letter option "-k"; the flag has always been "--k".
    args = ["-k" if a == "--k" else "-k" + a[4:] if a.startswith("--k=") else a for a in args]
    return run_cli(WebBenchSettings, run, args)


if __name__ == "__main__":
    sys.exit(main())
