"""Run the whole platform as local processes (no Docker): used by `make up` and the e2e tests.

`python -m cliprs_tools.devstack up` migrates the database, renders the demo tiles, starts every
service in the background (pid files and logs under ``.run/``), ingests the demo area and the
cloudy Landsat 8 area (`cliprs_tools.landsat`) with a progress bar and prints the map URL.
`python -m cliprs_tools.devstack down` stops what `up` started.

`up` leaves a supervisor behind (``.run/supervisor.pid``, log ``.run/logs/supervisor.log``), as
compose's ``restart: unless-stopped`` does for the containers: a service process that exits
(a Celery worker whose Redis restarted under a delayed task, a crash) is started again, with
a growing delay while it keeps dying at once (`restart_delay`), and each restart is logged.
`down` stops the supervisor first, then the services.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, CliApp, CliSubCommand, SettingsConfigDict

from cliprs_tools.hub import hub_reachable

DEMO_AREA = {
    "name": "Virginia Eastern Shore (Sentinel-2 demo)",
    # The Sentinel-2 scene's extent (lon −75.73…−75.51, lat 37.58…37.76).
    "bbox": [-75.7296, 37.5848, -75.5091, 37.7613],
    "zooms": [10, 11, 12, 13, 14],
    "source": "demo",
}


@dataclass
class Ports:
    search: int = 8000
    tiler: int = 8001
    embedder: int = 8002
    web: int = 8080


@dataclass
class ServiceSpec:
    name: str
    argv: list[str]
    ready_url: str | None = None  # None for Celery workers (checked through the job flow)
    env: dict[str, str] = field(default_factory=dict)


def stack_env(ports: Ports, base: dict[str, str]) -> dict[str, str]:
    """Environment shared by every process: infrastructure from ``base`` plus service wiring."""
    env = dict(base)
    host = "127.0.0.1"
    env.update(
        TILER_PORT=str(ports.tiler),
        EMBEDDER_PORT=str(ports.embedder),
        SEARCH_PORT=str(ports.search),
        SEARCH_EMBEDDER_URL=f"http://{host}:{ports.embedder}",
        SEARCH_TILER_PUBLIC_URL=f"http://{host}:{ports.tiler}",
        WEB_PORT=str(ports.web),
        WEB_SEARCH_API_URL=f"http://{host}:{ports.search}",
        WEB_TILER_URL=f"http://{host}:{ports.tiler}",
        PYTHONUNBUFFERED="1",
    )
    # The embedder answers /v1/embed/* only with this token, which the search-api sends: a fresh
    # one per stack unless the caller gave one.
    token = env.get("EMBEDDER_SERVICE_TOKEN") or secrets.token_hex(32)
    env.update(EMBEDDER_SERVICE_TOKEN=token, SEARCH_EMBEDDER_TOKEN=token)
    # The web page of this stack may call the API from a browser (unless the caller chose).
    env.setdefault(
        "SEARCH_CORS_ORIGINS", json.dumps([f"http://{host}:{ports.web}", f"http://localhost:{ports.web}"])
    )
    return env


def _worker(module: str, queue: str, name: str) -> list[str]:
    # solo pool: the worker process is the one running the task, so killing it kills the
    # task (redelivered thanks to acks_late); scale out by starting more workers.
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        module,
        "worker",
        "-Q",
        queue,
        "--pool",
        "solo",
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]


def service_specs(ports: Ports, embed_workers: int = 1, with_web: bool = True) -> list[ServiceSpec]:
    """Every process of the platform."""
    local = "http://127.0.0.1"
    specs = [
        ServiceSpec("tiler", [sys.executable, "-m", "cliprs_tiler"], f"{local}:{ports.tiler}/readyz"),
        ServiceSpec("tiler-worker", _worker("cliprs_tiler.tasks", "tiles", "tiler")),
        ServiceSpec(
            "embedder", [sys.executable, "-m", "cliprs_embedder"], f"{local}:{ports.embedder}/readyz"
        ),
        *[
            ServiceSpec(f"embedder-worker-{i}", _worker("cliprs_embedder.tasks", "embed", f"embedder{i}"))
            for i in range(1, embed_workers + 1)
        ],
        ServiceSpec("indexer-worker", _worker("cliprs_indexer.tasks", "index", "indexer")),
        ServiceSpec("search-api", [sys.executable, "-m", "cliprs_search"], f"{local}:{ports.search}/readyz"),
    ]
    if with_web:
        specs.append(ServiceSpec("web", [sys.executable, "-m", "cliprs_web"], f"{local}:{ports.web}/healthz"))
    return specs


SUPERVISOR = "supervisor"
SUPERVISED = "supervised.json"  # in run_dir: what the supervisor keeps running, and how
# A service that died within STEADY_S of its start is crashing: its next start waits
# restart_delay(n) after n such deaths in a row.
STEADY_S = 60.0
MAX_RESTART_DELAY_S = 60.0


class Stack:
    """Starts, watches and stops the processes; each gets a pid file and a log in ``run_dir``."""

    def __init__(self, run_dir: Path, env: dict[str, str], cwd: Path | None = None):
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / "logs"
        self.env = env
        self.cwd = cwd
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, spec: ServiceSpec) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{spec.name}.log", "ab")
        proc = subprocess.Popen(
            spec.argv,
            env={**self.env, **spec.env},
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        # The start time makes the pid file name one process, not a number the system may reuse.
        (self.run_dir / f"{spec.name}.pid").write_text(f"{proc.pid} {process_start_time(proc.pid)}")
        self.procs[spec.name] = proc
        return proc

    def wait_ready(self, specs: list[ServiceSpec], timeout_s: float = 180) -> None:
        """Wait until every HTTP service answers its readiness URL; raise with the log tail if not."""
        deadline = time.monotonic() + timeout_s
        pending = [s for s in specs if s.ready_url]
        while pending:
            for spec in list(pending):
                proc = self.procs.get(spec.name)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(
                        f"{spec.name} exited with {proc.returncode}:\n{self.log_tail(spec.name)}"
                    )
                try:
                    if httpx.get(spec.ready_url, timeout=2).status_code == 200:
                        pending.remove(spec)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise RuntimeError(
                    f"not ready after {timeout_s:.0f}s: {names}\n{self.log_tail(pending[0].name)}"
                )
            time.sleep(0.5)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop_all(self, timeout_s: float = 10) -> list[str]:
        """Stop every process whose pid file is in ``run_dir`` (ours or a previous `up`'s); the
        supervisor first, so that nothing is started again behind us.

        A pid is only signalled while the process holding it started when the pid file says:
        a stale pid file whose number was reused by the system never stops somebody else's
        process (nor does a pid file without a start time).
        """
        stopped = []
        supervisor = self.run_dir / f"{SUPERVISOR}.pid"
        if supervisor.exists() and self._stop(supervisor, timeout_s):
            stopped.append(SUPERVISOR)
        for pid_file in sorted(self.run_dir.glob("*.pid")):
            if self._stop(pid_file, timeout_s):
                stopped.append(pid_file.stem)
        return stopped

    def _stop(self, pid_file: Path, timeout_s: float) -> bool:
        """Stop the process of one pid file (and remove the file); True if one was running."""
        recorded = read_pid_file(pid_file)
        pid_file.unlink(missing_ok=True)
        if recorded is None or process_start_time(recorded[0]) != recorded[1]:
            return False
        try:
            os.killpg(recorded[0], signal.SIGTERM)
        except ProcessLookupError:
            return False
        self._reap(pid_file.stem, recorded[0], timeout_s)
        return True

    def running(self, name: str) -> int | None:
        """The pid of service ``name`` while it runs (a process of ours that exited is reaped)."""
        proc = self.procs.get(name)
        if proc is not None:
            return proc.pid if proc.poll() is None else None
        recorded = read_pid_file(self.run_dir / f"{name}.pid")
        return recorded[0] if recorded is not None and process_alive(*recorded) else None

    def _reap(self, name: str, pid: int, timeout_s: float) -> None:
        proc = self.procs.pop(name, None)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 on (None if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count after its end.
    return stat.rsplit(")", 1)[1].split()


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22); None if gone."""
    fields = _stat_fields(pid)
    return int(fields[22 - 3]) if fields else None


def process_alive(pid: int, started: int) -> bool:
    """Whether the process that started at ``started`` still holds ``pid`` and runs (an exited
    process its parent has not reaped yet, a zombie, does not)."""
    fields = _stat_fields(pid)
    return fields is not None and int(fields[22 - 3]) == started and fields[0] != "Z"


def read_pid_file(path: Path) -> tuple[int, int] | None:
    """(pid, start time) of a pid file; None when there is none or it is not one of ours."""
    try:
        recorded = path.read_text().split()
    except OSError:
        return None
    if len(recorded) != 2 or not all(v.isdigit() for v in recorded):
        return None
    return int(recorded[0]), int(recorded[1])


def restart_delay(crashes: int) -> float:
    """Seconds before starting a service again after ``crashes`` quick deaths in a row before
    this one: 1, 2, 4, ... up to `MAX_RESTART_DELAY_S`."""
    return min(MAX_RESTART_DELAY_S, 2.0 ** min(crashes, 16))


def write_supervised(run_dir: Path, env: dict[str, str], specs: list[ServiceSpec], cwd: Path | None) -> Path:
    """Record what the supervisor keeps running (readable by its owner only: the environment
    holds the database URL)."""
    path = Path(run_dir) / SUPERVISED
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "cwd": str(cwd) if cwd else None,
        "env": env,
        "services": [{"name": s.name, "argv": s.argv, "env": s.env} for s in specs],
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(body, out)
    return path


def supervisor_spec(run_dir: Path, poll_s: float = 1.0) -> ServiceSpec:
    """The supervisor process of ``run_dir`` (`supervise`)."""
    argv = [sys.executable, "-m", "cliprs_tools.devstack", "supervise", "--run-dir", str(run_dir)]
    return ServiceSpec(SUPERVISOR, [*argv, "--poll-s", str(poll_s)])


def _say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def supervise(run_dir: Path, poll_s: float = 1.0, stop: threading.Event | None = None) -> None:
    """Keep the services of ``run_dir``'s `SUPERVISED` running until SIGTERM (or ``stop``): one
    that is gone is started again, after `restart_delay` while it keeps dying within
    `STEADY_S` of its start; each restart is logged (stdout: ``logs/supervisor.log``)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    body = json.loads((Path(run_dir) / SUPERVISED).read_text())
    specs = [ServiceSpec(s["name"], s["argv"], env=s.get("env") or {}) for s in body["services"]]
    stack = Stack(Path(run_dir), body["env"], cwd=Path(body["cwd"]) if body.get("cwd") else None)
    known: dict[str, int | None] = {s.name: stack.running(s.name) for s in specs}
    started_at = {s.name: time.monotonic() for s in specs}
    crashes = {s.name: 0 for s in specs}
    due: dict[str, float] = {}  # service -> when it may be started again
    _say(f"supervisor: watching {', '.join(f'{n} (pid {p})' for n, p in known.items())}")
    while not stop.wait(poll_s):
        now = time.monotonic()
        for spec in specs:
            if stack.running(spec.name) is not None:
                continue
            if spec.name not in due:  # just found gone: decide when to start it again
                quick = now - started_at[spec.name] < STEADY_S
                crashes[spec.name] = crashes[spec.name] + 1 if quick else 0
                due[spec.name] = now + restart_delay(crashes[spec.name] - 1 if quick else 0)
            if now < due[spec.name]:
                continue
            old = known[spec.name]
            new = stack.start(spec).pid
            known[spec.name], started_at[spec.name] = new, time.monotonic()
            del due[spec.name]
            _say(
                f"supervisor: {spec.name} (pid {old}) is gone; started again as pid {new} "
                f"({crashes[spec.name]} quick exits in a row)"
            )
    _say("supervisor: stopped")


def follow_job(
    api: str,
    job: dict,
    *,
    timeout_s: float = 240,
    poll_s: float = 0.5,
    on_update: Callable[[dict], None] | None = None,
    headers: dict[str, str] | None = None,
) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until the job is done or failed; returns its last state.

    ``on_update`` sees every state read. Raises TimeoutError when the job is still running
    after ``timeout_s``; a failed job is returned, for the caller to report.
    """
    deadline = time.monotonic() + timeout_s
    while job["state"] not in ("done", "failed"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"ingest job {job['id']} not finished after {timeout_s:.0f} s: {job}")
        time.sleep(poll_s)
        job = httpx.get(f"{api}/v1/jobs/{job['id']}", timeout=10, headers=headers).json()
        if on_update is not None:
            on_update(job)
    return job


def ingest(
    api: str,
    area: dict,
    poll_s: float = 1.0,
    timeout_s: float = 3600,
    show: bool = True,
    headers: dict[str, str] | None = None,
) -> dict:
    """Create an area (unless one with the same name exists) and follow its job to the end;
    ``headers`` carry an API key with the write scope."""
    from tqdm import tqdm

    existing = [
        a
        for a in httpx.get(f"{api}/v1/areas", timeout=10, headers=headers).json()
        if a["name"] == area["name"]
    ]
    if existing and existing[0]["status"] == "ready":
        return existing[0]["job"]
    if existing and existing[0].get("job") and existing[0]["job"]["state"] not in ("failed", "done"):
        job = existing[0]["job"]
    else:
        resp = httpx.post(f"{api}/v1/areas", json=area, timeout=30, headers=headers)
        if resp.status_code != 202:
            raise RuntimeError(f"creating the area failed: {resp.status_code} {resp.text}")
        job = resp.json()["job"]
    bar = tqdm(total=max(job["tiles_planned"], 1), unit="tile", disable=not show, desc="ingest")

    def progress(job: dict) -> None:
        bar.total = max(job["tiles_planned"], 1)
        bar.n = job["tiles_embedded"] + job["tiles_failed"]
        bar.set_postfix_str(
            f"{job['state']}: fetched {job['tiles_fetched']}, windows {job['windows_embedded']}"
        )
        bar.refresh()

    try:
        job = follow_job(api, job, timeout_s=timeout_s, poll_s=poll_s, on_update=progress, headers=headers)
    finally:
        bar.close()
    if job["state"] == "failed":
        raise RuntimeError(f"ingest job {job['id']} failed: {job['error']}")
    return job


def _default_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    data_dir = Path(env.get("CLIPRS_DATA_DIR", root / "var")).resolve()
    env.setdefault("CLIPRS_DATA_DIR", str(data_dir))
    if "CLIPRS_TILE_SOURCES" not in env:
        from cliprs_tools.landsat import LANDSAT_SOURCE, landsat_source_template

        sources = {
            "demo": f"file://{data_dir}/demo-tiles/{{z}}/{{x}}/{{y}}.png",
            # Rendered on demand from the band files by the tiler (no pyramid to write).
            LANDSAT_SOURCE: landsat_source_template(),
        }
        env["CLIPRS_TILE_SOURCES"] = json.dumps(sources)
    env.setdefault("CLIP_FALLBACK", "1")
    if "HF_HUB_OFFLINE" not in env and not hub_reachable():
        # Without this, every process spends ~30 s in retries before falling back.
        print("==> the Hugging Face Hub is not reachable: models load from the local cache only")
        env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("CLIP_FALLBACK_DIR", str(root / ".cache/models/fallback-clip"))
    # bootstrap.sh downloads the open_clip wheel (the real CLIP vocabulary) here: no network needed.
    env.setdefault("CLIP_VOCAB", str(root / ".cache/wheels"))
    return env


def up(root: Path, embed_workers: int) -> None:
    from cliprs.db.migrate import ensure_database, upgrade
    from cliprs.settings import CoreSettings

    env = _default_env(root)
    os.environ.update(env)
    core = CoreSettings()
    print(f"==> database {core.database_url.split('@')[-1]}: migrating")
    ensure_database(core.database_url)
    upgrade(core.database_url)
    demo = core.data_dir / "demo-tiles"
    print(f"==> demo tiles (Sentinel-2, Virginia Eastern Shore) in {demo}")
    subprocess.run(
        [sys.executable, "-m", "cliprs_tools.demo", "--out", str(demo), "--zooms", "10-14"], check=True
    )
    ports = Ports()
    stack = Stack(root / ".run", stack_env(ports, env), cwd=root)
    stack.stop_all()
    specs = service_specs(ports, embed_workers)
    for spec in specs:
        stack.start(spec)
    print(
        f"==> started {len(specs)} processes (logs in .run/logs); waiting until ready (the model may take a while)"
    )
    stack.wait_ready(specs, timeout_s=600)
    # From here on a service that exits is started again (as compose's restart policy does).
    write_supervised(stack.run_dir, stack.env, specs, root)
    stack.start(supervisor_spec(stack.run_dir))
    ready = httpx.get(f"http://127.0.0.1:{ports.search}/readyz", timeout=10).json()
    model = ready.get("model") or {}
    if model.get("fallback"):
        print(f"!!! WARNING: {model.get('requested')!r} could not be loaded ({model.get('reason')}).")
        print("!!! Running on a small GENERATED fallback CLIP: search results are NOT meaningful.")
        print(
            "!!! Put the model in the Hugging Face cache or set CLIP_MODEL to a local folder, then `make up` again."
        )
    from cliprs_tools.keys import local_admin_key

    key = local_admin_key(core.database_url, root / ".run" / "admin-key")
    headers = {"Authorization": f"Bearer {key}"}
    print("==> ingesting the demo area")
    job = ingest(f"http://127.0.0.1:{ports.search}", DEMO_AREA, headers=headers)
    print(f"==> demo area indexed: {job['windows_indexed']} windows from {job['tiles_embedded']} tiles")
    from cliprs_tools.landsat import LANDSAT_AREA

    print(f"==> ingesting the cloudy Landsat 8 area ({LANDSAT_AREA['name']})")
    job = ingest(f"http://127.0.0.1:{ports.search}", LANDSAT_AREA, headers=headers)
    print(f"==> Landsat area indexed: {job['windows_indexed']} windows from {job['tiles_embedded']} tiles")
    print(f"\nCLIP-RS is up:  http://127.0.0.1:{ports.web}/   (API: http://127.0.0.1:{ports.search}/docs)")
    print(f"Admin API key (read, write, admin; also in .run/admin-key): {key}")
    print("  the page asks for a key when you create or delete an area, label or run Detect")


def down(root: Path) -> None:
    stopped = Stack(root / ".run", {}).stop_all()
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


class Up(BaseModel):
    """Migrate, render the demo tiles, start every service, ingest the demo and Landsat areas."""

    root: Path = Field(Path("."), description="repository root")
    embed_workers: int = Field(1, ge=1, description="embedder worker processes")

    def cli_cmd(self) -> None:
        up(self.root.resolve(), self.embed_workers)


class Down(BaseModel):
    """Stop what `up` started (and nothing else)."""

    root: Path = Field(Path("."), description="repository root")

    def cli_cmd(self) -> None:
        down(self.root.resolve())


class Supervise(BaseModel):
    """Keep the services `up` started running (started by `up`; stopped by `down`)."""

    run_dir: Path = Field(Path(".run"), description="the stack's run folder (pid files, supervised.json)")
    poll_s: float = Field(1.0, gt=0, description="seconds between looks")

    def cli_cmd(self) -> None:
        supervise(self.run_dir.resolve(), self.poll_s)


class DevstackCli(BaseSettings):
    """Run the whole platform as local processes: `up` or `down` (`supervise`: what `up` leaves
    running)."""

    model_config = SettingsConfigDict(
        env_prefix="DEVSTACK_",
        extra="ignore",
        cli_kebab_case=True,
        cli_prog_name="python -m cliprs_tools.devstack",
    )

    up: CliSubCommand[Up]
    down: CliSubCommand[Down]
    supervise: CliSubCommand[Supervise]

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)


def main(argv: list[str] | None = None) -> int:
    try:
        CliApp.run(DevstackCli, cli_args=sys.argv[1:] if argv is None else argv)
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
