"""Soak: areas ingested one after the other while workers are killed and Redis and PostgreSQL
restarted at random; no window may be lost or duplicated, and every job must end.

    make soak                       (or: .venv/bin/python benchmarks/soak.py --minutes 10)

The platform runs as local processes (`cliprs_testing.platform.run_platform`, the same starter
as ``make up``) against a PostgreSQL+PostGIS and a Redis of the soak's own
(`cliprs_testing.instances`: own data directories and ports, so restarting them never touches
the machine's services), with tiles of the Sentinel-2 demo scene served over loopback HTTP and
the tiny generated CLIP (``--model`` for another). ``--no-private`` runs on the machine's
PostgreSQL (a throwaway database) and Redis (a database of its own) instead; those are never
restarted, so only the worker kills remain.

For ``--minutes``, ``--concurrent-areas`` areas (random boxes and zooms of the demo region,
each from a tile source of its own, so every area fetches and embeds its own tiles) are kept in
flight; about every ``--fault-every-s`` seconds one fault strikes: the tiler, an embedder or the
indexer worker SIGKILLed (and started again after a moment, as a supervisor would), Redis
restarted empty, or PostgreSQL restarted (fast or immediate shutdown, down for a few seconds).
A fault waits until every job the previous one hit has moved again. Then the soak stops
starting areas and faults and waits for every job to end.

What it reports (and writes to ``benchmarks/results/soak.json``):

- ``jobs``: started, completed (done), done with failures, failed, unfinished;
- ``windows_lost`` (must be 0): windows a fault-free ingest of the same tiles gives (a warm-up
  ingest of the whole region, before any fault, counts them per tile) that an area does not
  have as a PostGIS row, a vector in its tile's chunk and an entry of the index; tiles of jobs
  that failed or never ended count whole;
- ``duplicates`` (must be 0): window ids twice in a chunk or in the index, rows beyond a tile's
  expected count, two rows for one window (same tile, scale and pixel box);
- ``faults``: each fault's kind, when, and its recovery time — the longest any job in flight
  when it struck then went without visible progress (its state or counts in ``GET /v1/jobs``,
  the user's view) until it moved again or ended; ``max_recovery_s`` is the largest;
- ``api_500s`` (must be 0): answers 500 from the search-api while polling (an outage must be a
  503);
- ``crashes`` (must be 0): processes that exited without being killed by the soak (each is
  started again at once, as a restart policy would, so the soak goes on);

plus the machine, its load average and every setting. Every process's log is kept in a
temporary directory the summary names.

The exit status is 1 when anything that must be 0 is not, or a job did not complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import workspace  # noqa: F401  (the repository on sys.path, for tests.support)
from machine_info import finish, run_info
from pydantic import Field
from pydantic_settings import BaseSettings

from cliprs.errors import InvalidInput
from cliprs.manifest import load_manifest
from cliprs.settings import CoreSettings
from cliprs.tiles import BBox, tiles_for_bbox
from cliprs.vectors import read_chunk
from cliprs_embedder.settings import EmbedderSettings
from cliprs_index.shardset import load_shardset
from cliprs_index.store import tile_of
from cliprs_indexer.settings import IndexerSettings
from cliprs_model.settings import ModelSettings
from cliprs_testing.db import query
from cliprs_testing.faultserver import TileServer
from cliprs_testing.instances import PostgresInstance, RedisInstance
from cliprs_testing.loopback import wait_until
from cliprs_testing.tiles import render_demo_tiles
from cliprs_tools.cli import cli_config, run_cli
from cliprs_tools.devstack import Ports, service_specs
from tests.support.platform import ingest_area, run_platform

REPO = Path(__file__).resolve().parents[1]
# Inside the Sentinel-2 demo scene (lon -75.73..-75.51, lat 37.58..37.76).
REGION = (-75.70, 37.60, -75.54, 37.74)
ZOOMS = (13, 14)
FAULT_KINDS = ("kill-tiler", "kill-embedder", "kill-indexer", "restart-redis", "restart-postgres")
KILLS = {"kill-tiler": "tiler-worker", "kill-indexer": "indexer-worker"}
ENDED = ("done", "failed")


class SoakSettings(BaseSettings):
    """Ingest areas while processes are killed and Redis/PostgreSQL restarted; count what is lost."""

    model_config = cli_config("SOAK_", "python benchmarks/soak.py")

    minutes: float = Field(10.0, gt=0, description="how long areas are started and faults injected")
    concurrent_areas: int = Field(3, ge=1, description="areas kept in flight at once")
    max_tiles: int = Field(60, ge=1, description="the most tiles one area plans")
    embed_workers: int = Field(2, ge=1, description="embedder worker processes")
    fault_every_s: float = Field(25.0, gt=0, description="mean seconds between faults")
    faults: list[str] = Field(list(FAULT_KINDS), description=f"fault kinds among {', '.join(FAULT_KINDS)}")
    seed: int = Field(0, description="random seed (areas, faults, their timing)")
    private: bool = Field(
        True, description="own PostgreSQL and Redis (restartable); --no-private: the machine's, kills only"
    )
    reconcile_s: float = Field(2.0, gt=0, description="CLIPRS_RECONCILE_S of the workers")
    stall_s: float = Field(8.0, gt=0, description="CLIPRS_STALL_S of the workers")
    window_scales: list[float] = Field([1.0, 0.5, 0.25], description="EMBEDDER_WINDOW_SCALES")
    lease_tiles: int = Field(4, ge=1, description="EMBEDDER_LEASE_TILES")
    lease_s: float = Field(10.0, gt=0, description="EMBEDDER_LEASE_S")
    flat_max_vectors: int = Field(
        10_000_000,
        ge=1,
        description="INDEXER_FLAT_MAX_VECTORS: exact shards throughout (training IVF-PQ when the index "
        "crosses the default 100k takes minutes on a small machine and would read as a fault's recovery)",
    )
    drain_minutes: float = Field(10.0, gt=0, description="how long to wait for the last jobs to end")
    stuck_minutes: float = Field(
        3.0, gt=0, description="stop waiting when no job left has moved for this long (they are stuck)"
    )
    model: str | None = Field(
        None, description="CLIP model (Hugging Face id or folder); default: the tiny CLIP"
    )
    out: Path = Field(REPO / "benchmarks/results/soak.json", description="where the JSON results go")


# ------------------------------------------------------------------------------------ bookkeeping


@dataclass
class Job:
    id: int
    area_id: int
    source: str
    started: float
    last: dict
    moves: list[float] = field(default_factory=list)  # when its visible progress changed
    ended: float | None = None

    @staticmethod
    def key(job: dict) -> tuple:
        return tuple(
            job[k]
            for k in (
                "state",
                "tiles_fetched",
                "tiles_embedded",
                "tiles_failed",
                "windows_embedded",
                "windows_indexed",
            )
        )


@dataclass
class Fault:
    kind: str
    at: float
    detail: str
    jobs: list[int]  # in flight when it struck
    until: float | None = None  # the next fault, or the end of the soak
    recovery_s: float | None = None
    recovered: bool = False


class Soak:
    def __init__(self, options: SoakSettings, p: dict, pg_url: str, rds: RedisInstance | None, t0: float):
        self.options, self.p, self.pg_url, self.redis, self.t0 = options, p, pg_url, rds, t0
        self.pg: PostgresInstance | None = p.get("pg")
        self.rng = random.Random(options.seed)
        self.jobs: dict[int, Job] = {}
        self.faults: list[Fault] = []
        self.api_answers: Counter = Counter()
        self.next_source = 0
        self.round: list[str] = []
        self.killing: set[str] = set()  # killed by the soak, not started again yet
        self.crashes: list[dict] = []

    # -- the API, polled -------------------------------------------------------------------

    def get(self, path: str) -> httpx.Response | None:
        try:
            resp = httpx.get(f"{self.p['api']}{path}", timeout=10)
        except httpx.HTTPError:
            self.api_answers["no answer"] += 1
            return None
        self.api_answers[resp.status_code] += 1
        return resp

    def supervise(self) -> None:
        """Start again any process that exited without being killed by the soak (as a restart
        policy would), and record it: a crash is a defect the soak reports."""
        for name, proc in list(self.p["stack"].procs.items()):
            if name in self.killing or proc.poll() is None:
                continue
            at = time.monotonic() - self.t0
            tail = self.p["stack"].log_tail(name, 6)
            self.crashes.append({"process": name, "at_s": round(at, 1), "exit": proc.returncode, "log": tail})
            print(f"[{at:6.0f} s] CRASH: {name} exited with {proc.returncode}; starting it again", flush=True)
            self.restart(name)

    def restart(self, name: str) -> None:
        specs = service_specs(Ports(), self.options.embed_workers, with_web=False)
        self.p["stack"].start({s.name: s for s in specs}[name])

    def poll(self) -> None:
        self.supervise()
        now = time.monotonic()
        for job in self.jobs.values():
            if job.ended is not None:
                continue
            resp = self.get(f"/v1/jobs/{job.id}")
            if resp is None or resp.status_code != 200:
                continue
            body = resp.json()
            if Job.key(body) != Job.key(job.last):
                job.moves.append(now)
            job.last = body
            if body["state"] in ENDED:
                job.ended = now
                print(
                    f"[{now - self.t0:6.0f} s] job {job.id} ({job.source}) {body['state']}: "
                    f"{body['tiles_embedded']}/{body['tiles_planned']} tiles, {body['windows_indexed']} windows",
                    flush=True,
                )

    def sleep(self, seconds: float) -> None:
        """Wait, polling the jobs meanwhile."""
        until = time.monotonic() + seconds
        while True:
            self.poll()
            left = until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.5, left))

    @property
    def in_flight(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.ended is None]

    # -- areas ---------------------------------------------------------------------------------

    def random_area(self) -> dict:
        w, s, e, n = REGION
        for _ in range(100):
            zooms = sorted(self.rng.sample(ZOOMS, self.rng.randint(1, len(ZOOMS))))
            width, height = self.rng.uniform(0.02, 0.08), self.rng.uniform(0.02, 0.06)
            x0, y0 = self.rng.uniform(w, e - width), self.rng.uniform(s, n - height)
            bbox = [round(x0, 5), round(y0, 5), round(x0 + width, 5), round(y0 + height, 5)]
            if len(list(tiles_for_bbox(BBox(*bbox), zooms))) <= self.options.max_tiles:
                return {"bbox": bbox, "zooms": zooms}
        return {"bbox": [w, s, w + 0.02, s + 0.02], "zooms": [14]}

    def start_area(self) -> None:
        source = f"soak-{self.next_source}"
        area = {"name": f"soak {source}", "source": source, **self.random_area()}
        try:
            resp = httpx.post(f"{self.p['api']}/v1/areas", json=area, timeout=30)
        except httpx.HTTPError:
            return
        self.api_answers[resp.status_code] += 1
        if resp.status_code != 202:
            return  # a dependency is down (503): try again on the next round
        self.next_source += 1
        body = resp.json()["job"]
        now = time.monotonic()
        self.jobs[body["id"]] = Job(body["id"], body["area_id"], source, now, body, [now])

    # -- faults --------------------------------------------------------------------------------

    def recovered(self, fault: Fault) -> bool:
        """Every job it hit moved again after it (or ended)."""
        for job_id in fault.jobs:
            job = self.jobs[job_id]
            if job.ended is None and not any(t > fault.at for t in job.moves):
                return False
        return True

    def next_kind(self) -> str | None:
        """The fault kinds in shuffled rounds: every kind strikes as often as the others."""
        kinds = [k for k in self.options.faults if self.options.private or k.startswith("kill-")]
        if not kinds:
            return None
        if not self.round:
            self.round = self.rng.sample(kinds, len(kinds))
        return self.round.pop()

    def strike(self) -> None:
        kind = self.next_kind()
        if kind is None:
            return
        now = time.monotonic()
        if self.faults:
            self.faults[-1].until = now
        fault = Fault(kind, now, "", [j.id for j in self.in_flight])
        self.faults.append(fault)
        if kind.startswith("kill-"):
            name = KILLS.get(kind) or f"embedder-worker-{self.rng.randint(1, self.options.embed_workers)}"
            down = self.rng.uniform(0, 3)
            fault.detail = f"{name} SIGKILLed, started again after {down:.1f} s"
        elif kind == "restart-redis":
            down = self.rng.uniform(0, 3)
            fault.detail = f"Redis down {down:.1f} s, restarted empty"
        else:
            mode, down = self.rng.choice(["fast", "immediate"]), self.rng.uniform(1, 6)
            fault.detail = f"PostgreSQL {mode} shutdown, down {down:.1f} s"
        print(
            f"[{now - self.t0:6.0f} s] fault: {fault.detail} ({len(fault.jobs)} jobs in flight)", flush=True
        )
        if kind.startswith("kill-"):
            proc = self.p["stack"].procs[name]
            self.killing.add(name)  # not a crash: the supervisor leaves it to us
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it had died by itself: it is started again all the same
                pass
            proc.wait(timeout=10)
            self.sleep(down)
            self.restart(name)
            self.killing.discard(name)
        elif kind == "restart-redis":
            assert self.redis is not None
            self.redis.stop()
            self.sleep(down)
            self.redis.start()
        else:
            assert self.pg is not None
            self.pg.stop(mode)
            self.sleep(down)  # the polls meanwhile must be 503s, never 500s
            self.pg.start()

    def measure_recoveries(self, end: float) -> None:
        """Each fault's recovery: the longest stall of a job it hit, from the fault to the next one
        (the last one's lasts until every job has ended)."""
        for fault in self.faults:
            until = fault.until or end
            longest, recovered = 0.0, True
            for job_id in fault.jobs:
                job = self.jobs[job_id]
                marks = [fault.at] + [t for t in job.moves if fault.at < t <= until]
                if job.ended is not None and fault.at < job.ended <= until:
                    marks.append(job.ended)
                if len(marks) == 1:  # it never moved again before the next fault (or the end)
                    recovered = False
                    longest = max(longest, until - fault.at)
                else:
                    longest = max(longest, float(np.diff(marks).max()))
            fault.recovery_s, fault.recovered = round(longest, 1), recovered

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> None:
        options = self.options
        deadline = self.t0 + options.minutes * 60
        next_fault = time.monotonic() + self.rng.uniform(0.5, 1.5) * options.fault_every_s
        while time.monotonic() < deadline:
            while len(self.in_flight) < options.concurrent_areas:
                before = len(self.jobs)
                self.start_area()
                if len(self.jobs) == before:
                    break
            if time.monotonic() >= next_fault and (not self.faults or self.recovered(self.faults[-1])):
                self.strike()
                next_fault = time.monotonic() + self.rng.uniform(0.5, 1.5) * options.fault_every_s
            self.sleep(0.5)
        print(
            f"[{time.monotonic() - self.t0:6.0f} s] no more areas or faults; waiting for the last jobs",
            flush=True,
        )
        drain_until = time.monotonic() + options.drain_minutes * 60
        while self.in_flight and time.monotonic() < drain_until:
            self.sleep(1)
            last_move = max(
                (m for j in self.in_flight for m in [j.started, *j.moves]), default=time.monotonic()
            )
            if time.monotonic() - last_move > options.stuck_minutes * 60:
                break  # nothing has moved for that long: the jobs left are stuck
        self.measure_recoveries(time.monotonic())


# ---------------------------------------------------------------------------------- accounting


TILE_WINDOWS = """
    SELECT t.id, t.z, t.x, t.y, t.status, count(w.id) AS windows,
           count(DISTINCT (w.scale, w.px_x0, w.px_y0, w.px_x1, w.px_y1)) AS distinct_windows
    FROM area_tiles at JOIN tiles t ON t.id = at.tile_id LEFT JOIN windows w ON w.tile_id = t.id
    WHERE at.area_id = :a GROUP BY t.id
"""


def expected_windows(pg_url: str, area_id: int) -> dict[tuple[int, int, int], int]:
    """Windows per tile (z, x, y) that a fault-free ingest gave (the warm-up area)."""
    return {(z, x, y): n for _, z, x, y, _, n, _ in query(pg_url, TILE_WINDOWS, a=area_id)}


def account(pg_url: str, data_dir: Path, area_id: int, expected: dict, index) -> dict:
    """Windows lost and duplicated in one area: rows, chunks and the index against the expected."""
    lost = dups = 0
    tiles = query(pg_url, TILE_WINDOWS, a=area_id)
    tile_ids = [t.id for t in tiles]
    rows = query(pg_url, "SELECT tile_id, id FROM windows WHERE tile_id = ANY(:t)", t=tile_ids)
    row_ids: dict[int, set[int]] = {}
    for tile_id, window_id in rows:
        row_ids.setdefault(tile_id, set()).add(window_id)
    indexed: set[int] = set()
    picked = index.pick(area_id=area_id) if index is not None else []
    if picked:
        ids = np.concatenate([np.asarray(index.shards[i].ids) for i in picked])
        ids = ids[np.isin(tile_of(ids), tile_ids)]  # the shards may hold other areas too
        dups += len(ids) - len(np.unique(ids))
        indexed = set(ids.tolist())
    for t in tiles:
        want = expected.get((t.z, t.x, t.y), 0)
        have = row_ids.get(t.id, set())
        dups += max(0, t.windows - want) + (t.windows - t.distinct_windows)
        chunk = read_chunk(data_dir / "vectors", t.id) if have else None
        chunk_ids = set(chunk[0].tolist()) if chunk is not None else set()
        if chunk is not None:
            dups += len(chunk[0]) - len(chunk_ids)
        complete = have & chunk_ids & indexed  # a row, a vector and an index entry
        lost += max(0, want - len(complete))
    return {"tiles": len(tiles), "windows": len(rows), "lost": lost, "duplicates": dups}


# ------------------------------------------------------------------------------------------ setup


def save_logs(p: dict, servers: list, to: Path) -> None:
    shutil.copytree(p["stack"].log_dir, to, dirs_exist_ok=True)
    for server in servers:
        if server is not None and server.log_path.exists():
            shutil.copy(server.log_path, to / server.log_path.name)


@contextmanager
def infrastructure(
    options: SoakSettings, root: Path
) -> Iterator[tuple[str, str, PostgresInstance | None, RedisInstance | None]]:
    """``(database URL, Redis URL, PostgreSQL instance, Redis instance)``; the instances are None
    on the machine's services (``--no-private``)."""
    with ExitStack() as stack:
        if options.private:
            pg = stack.enter_context(PostgresInstance(root / "servers"))
            rds = stack.enter_context(RedisInstance(root / "servers"))
            print(f"==> private PostgreSQL on port {pg.port}, Redis on port {rds.port}", flush=True)
            yield pg.url, rds.url, pg, rds
        else:
            from cliprs_testing.db import throwaway_database
            from cliprs_testing.redis_db import private_redis_db

            pg_url = stack.enter_context(throwaway_database(prefix="cliprs_soak"))
            redis_url = stack.enter_context(private_redis_db(owner="soak"))
            print(
                "==> the machine's PostgreSQL (a throwaway database) and Redis: worker kills only", flush=True
            )
            yield pg_url, redis_url, None, None


def tile_server(root: Path) -> TileServer:
    """The demo scene's tiles of the region over loopback HTTP, ``/{source}/{z}/{x}/{y}.png``."""
    folder = render_demo_tiles(root / "demo-tiles", tiles_for_bbox(BBox(*REGION), list(ZOOMS)))

    def provider(z: int, x: int, y: int) -> bytes | None:
        path = folder / str(z) / str(x) / f"{y}.png"
        return path.read_bytes() if path.exists() else None

    return TileServer(provider=provider).start()


def model_dir(options: SoakSettings) -> str:
    if options.model:
        return options.model
    from cliprs_testing.model import default_cache_dir, tiny_clip

    return str(tiny_clip(default_cache_dir(REPO)))


# The services' settings the soak changes (environment variable -> settings class, field): the
# timers are far shorter than the defaults so that a 10-minute soak sees many recoveries.
PRODUCT_FIELDS = {
    "CLIPRS_RECONCILE_S": (CoreSettings, "reconcile_s"),
    "CLIPRS_STALL_S": (CoreSettings, "stall_s"),
    "EMBEDDER_WINDOW_SCALES": (EmbedderSettings, "window_scales"),
    "EMBEDDER_LEASE_TILES": (EmbedderSettings, "lease_tiles"),
    "EMBEDDER_LEASE_S": (EmbedderSettings, "lease_s"),
    "INDEXER_FLAT_MAX_VECTORS": (IndexerSettings, "flat_max_vectors"),
    "CLIP_MODEL": (ModelSettings, "model"),
    "CLIP_TORCH_THREADS": (ModelSettings, "torch_threads"),
}


def product_settings(env: dict[str, str]) -> dict:
    """Each setting of the services that the soak changes: its value here and the default."""
    out: dict = {
        name: {"value": env[name], "default": cls.model_fields[field].get_default(call_default_factory=True)}
        for name, (cls, field) in PRODUCT_FIELDS.items()
        if name in env
    }
    out["CLIPRS_TILE_SOURCES"] = {"value": "one local tile server per area (soak-0 ...)", "default": None}
    # The test platform starter turns access control off unless told otherwise.
    out["SEARCH_AUTH"] = {"value": os.environ.get("SEARCH_AUTH", "off"), "default": "on"}
    return out


def run(options: SoakSettings) -> None:
    unknown = set(options.faults) - set(FAULT_KINDS)
    if unknown:
        raise InvalidInput(f"--faults: unknown {sorted(unknown)}; choose among {', '.join(FAULT_KINDS)}")
    at_start: dict = {}
    started_at = time.time()
    with tempfile.TemporaryDirectory(prefix="cliprs-soak-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        pg_url, redis_url, pg, rds = stack.enter_context(infrastructure(options, root))
        server = tile_server(root)
        stack.callback(server.stop)
        # One source per area (and the warm-up's): every area fetches and embeds its own tiles.
        sources = {f"soak-{i}": f"{server.base}/soak-{i}/{{z}}/{{x}}/{{y}}.png" for i in range(1000)}
        sources["soak-warmup"] = f"{server.base}/warmup/{{z}}/{{x}}/{{y}}.png"
        env = {
            "CLIPRS_TILE_SOURCES": json.dumps(sources),
            "CLIPRS_RECONCILE_S": str(options.reconcile_s),
            "CLIPRS_STALL_S": str(options.stall_s),
            "CLIP_MODEL": model_dir(options),
            "CLIP_TORCH_THREADS": "1",
            "EMBEDDER_WINDOW_SCALES": json.dumps(options.window_scales),
            "EMBEDDER_LEASE_TILES": str(options.lease_tiles),
            "EMBEDDER_LEASE_S": str(options.lease_s),
            "INDEXER_FLAT_MAX_VECTORS": str(options.flat_max_vectors),
        }
        at_start = run_info(options, product=product_settings(env))
        print("==> starting the platform", flush=True)
        p = stack.enter_context(
            run_platform(
                root / "run",
                database_url=pg_url,
                redis_url=redis_url,
                data_dir=root / "run" / "data",
                namespace=f"soak-{uuid.uuid4().hex[:8]}",
                env=env,
                embed_workers=options.embed_workers,
                health_only=True,
            )
        )
        p["pg"] = pg
        # The logs outlive the run's temporary directory, however the run ends (they are what a
        # failure is read from): copied while everything still runs, before the teardown.
        logs = Path(tempfile.mkdtemp(prefix="cliprs-soak-logs-"))
        stack.callback(save_logs, p, [pg, rds], logs)
        print(f"==> logs will be kept in {logs}", flush=True)
        print("==> warm-up: the whole region without faults (windows per tile to expect)", flush=True)
        warm = ingest_area(
            p,
            {"name": "soak warm-up", "bbox": list(REGION), "zooms": list(ZOOMS), "source": "soak-warmup"},
            timeout_s=1800,
        )
        expected = expected_windows(pg_url, warm["area"]["id"])
        wait_until(lambda: httpx.get(f"{p['api']}/readyz", timeout=10).status_code == 200, 120, "the index")
        print(
            f"==> {len(expected)} tiles, {sum(expected.values())} windows; soaking for {options.minutes:g} min",
            flush=True,
        )
        soak = Soak(options, p, pg_url, rds, time.monotonic())
        soak.run()

        manifest = load_manifest(p["data_dir"] / "index")
        index = load_shardset(p["data_dir"] / "index", manifest) if manifest is not None else None
        per_job = []
        for job in soak.jobs.values():
            counts = account(pg_url, p["data_dir"], job.area_id, expected, index)
            state = job.last["state"] if job.ended is not None else "unfinished"
            per_job.append(
                {
                    "id": job.id,
                    "source": job.source,
                    "state": state,
                    "outcome": job.last.get("outcome"),
                    "tiles_planned": job.last["tiles_planned"],
                    "seconds": round((job.ended or time.monotonic()) - job.started, 1),
                    **counts,
                }
            )

    report(options, soak, per_job, at_start, started_at, logs)


def report(
    options: SoakSettings, soak: Soak, per_job: list[dict], at_start: dict, started_at: float, logs: Path
) -> None:
    states = Counter(j["state"] for j in per_job)
    with_failures = sum(1 for j in per_job if j["state"] == "done" and j["outcome"] == "done_with_failures")
    lost = sum(j["lost"] for j in per_job)
    dups = sum(j["duplicates"] for j in per_job)
    recoveries = [f.recovery_s for f in soak.faults if f.recovery_s is not None]
    results = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "jobs": {
            "started": len(per_job),
            "completed": states["done"] - with_failures,
            "done_with_failures": with_failures,
            "failed": states["failed"],
            "unfinished": states["unfinished"],
            "list": per_job,
        },
        "faults": [
            {
                "kind": f.kind,
                "at_s": round(f.at - soak.t0, 1),
                "detail": f.detail,
                "jobs_in_flight": len(f.jobs),
                "recovery_s": f.recovery_s,
                "recovered": f.recovered,
            }
            for f in soak.faults
        ],
        "windows": sum(j["windows"] for j in per_job),
        "windows_lost": lost,
        "duplicates": dups,
        "max_recovery_s": max(recoveries, default=None),
        "api_answers": {str(k): v for k, v in sorted(soak.api_answers.items(), key=str)},
        "api_500s": soak.api_answers[500],
        "crashes": soak.crashes,
        "logs": str(logs),
        **finish(at_start),
        "settings": json.loads(options.model_dump_json()),
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")

    print(
        f"\n=== soak: {options.minutes:g} min, seed {options.seed}, load {at_start['load_average_start']} ==="
    )
    jobs = results["jobs"]
    print(
        f"jobs: {jobs['started']} started, {jobs['completed']} completed, "
        f"{jobs['done_with_failures']} done with failures, {jobs['failed']} failed, {jobs['unfinished']} unfinished"
    )
    print(f"windows: {results['windows']} ingested, {lost} lost (must be 0), {dups} duplicates (must be 0)")
    print(f"API: {results['api_answers']} (500s must be 0)")
    print(f"processes that exited by themselves (must be 0): {len(soak.crashes)}")
    for crash in soak.crashes:
        print(
            f"  {crash['at_s']:6.0f} s  {crash['process']} exited with {crash['exit']}: {crash['log'].splitlines()[-1:]}"
        )
    by_kind: dict[str, list[float]] = {}
    for f in soak.faults:
        by_kind.setdefault(f.kind, []).append(f.recovery_s or 0.0)
        mark = "" if f.recovered else "  (had not moved again before the next fault)"
        print(f"  {f.at - soak.t0:6.0f} s  {f.kind:17s} recovered in {f.recovery_s:5.1f} s  {f.detail}{mark}")
    for kind, values in sorted(by_kind.items()):
        print(
            f"{kind:17s} x{len(values)}: recovery max {max(values):.1f} s, median {float(np.median(values)):.1f} s"
        )
    print(f"max recovery: {results['max_recovery_s']} s\nresults: {options.out}")
    bad = lost or dups or results["api_500s"] or soak.crashes or jobs["failed"] or jobs["unfinished"]
    print(f"logs of every process: {logs}")
    if bad:
        print("FAILED: windows lost or duplicated, 500s, crashes or jobs that did not complete (see above)")
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(SoakSettings, run, argv)


if __name__ == "__main__":
    sys.exit(main())
