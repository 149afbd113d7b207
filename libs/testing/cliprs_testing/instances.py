"""Private PostgreSQL+PostGIS and Redis servers: own data directories, own loopback ports.

The fault tests and ``make soak`` stop, kill and restart the database and the broker in the
middle of an ingest; they must never touch the machine's own services. These classes start
servers of their own from the same binaries (the Debian PostgreSQL, ``redis-server``) and
remove everything they made when closed.

``PostgresInstance`` runs ``initdb`` (trust authentication, UTF8) into a data directory of its
own, starts ``postgres`` on a free loopback port with its unix socket in its own directory,
creates the database ``cliprs`` with PostGIS and applies the platform's migrations (the way
``make migrate`` does: `cliprs.db.migrate.ensure_database` and `upgrade`). PostgreSQL refuses
to run as root: as root, the server runs as the ``postgres`` OS user, in a directory that user
owns (inside ``root`` when that user can reach it, else a private temporary directory).

``RedisInstance`` runs ``redis-server`` without persistence (``--save "" --appendonly no``): a
restart loses every queued task, which is exactly the fault under test.

Both are context managers (``with PostgresInstance(tmp) as pg: ... pg.url``); ``start``,
``stop``, ``restart`` and ``kill`` drive the server; readiness is polled with a clear timeout.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from cliprs_testing.loopback import free_port

# How ``stop`` asks PostgreSQL to shut down (the signals pg_ctl sends for each mode).
PG_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}

# A test server favours speed over durability against a crash of the *machine*: fsync off
# still keeps every committed transaction across a crash of PostgreSQL itself (SIGKILL,
# immediate stop), which is what the fault tests do; synchronous commit stays on for that.
PG_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "300",  # every platform process keeps a pool
    "logging_collector": "off",
}


class InstanceError(RuntimeError):
    """A private server could not be set up, started or reached."""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def postgres_bindir() -> Path:
    """Where ``initdb`` and ``postgres`` live: ``CLIPRS_PG_BIN``, else the newest Debian
    ``/usr/lib/postgresql/<version>/bin``, else ``pg_config --bindir``, else ``PATH``."""
    if env := os.environ.get("CLIPRS_PG_BIN"):
        return Path(env)
    versions = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    numbered = [p for p in versions if re.fullmatch(r"\d+", p.parent.name)]
    if numbered:
        return max(numbered, key=lambda p: int(p.parent.name))
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    if initdb := shutil.which("initdb"):
        return Path(initdb).resolve().parent
    raise InstanceError("PostgreSQL's initdb was not found: install postgresql or set CLIPRS_PG_BIN")


def _reachable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether a process of ``uid``/``gid`` can traverse every directory down to ``path``."""
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


def _wait(condition, timeout_s: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise InstanceError(f"{what}: the server exited with {proc.returncode}\n{_tail(log)}")
        try:
            if condition():
                return
        except InstanceError as exc:  # another server holds the port
            _killpg(proc)
            raise InstanceError(f"{what}: {exc}\n{_tail(log)}") from None
        if time.monotonic() > deadline:
            raise InstanceError(f"{what}: not ready after {timeout_s:.0f} s\n{_tail(log)}")
        time.sleep(0.05)


def _end(proc: subprocess.Popen, sig: int, timeout_s: float) -> None:
    """Signal the server, wait for it; SIGKILL its process group if it does not exit in time."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _killpg(proc)
    _killpg(proc)  # children the server left behind (none when it shut down cleanly)


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the server leads its own process group
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


class _ServerProcess:
    """What both servers share: the process, whether it runs, SIGKILL of its group, and use as
    a context manager (started on entry, closed on exit, closed too when starting fails)."""

    proc: subprocess.Popen | None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self.proc.pid if self.running else None

    def kill(self) -> None:
        """SIGKILL the server and its process group: a crash."""
        if self.proc is not None:
            _killpg(self.proc)

    def _spawn(self, argv: list[str], log_path: Path, **popen: Any) -> None:
        """Start the server in a session of its own (so `kill` reaches its children), its output
        appended to ``log_path``."""
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **popen,
            )

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *_: object) -> None:
        self.close()


class PostgresInstance(_ServerProcess):
    """A PostgreSQL+PostGIS server of its own on loopback, with the platform's schema.

    ``url`` is ``postgresql://postgres@127.0.0.1:PORT/cliprs``; the port stays the same across
    restarts, so the platform's processes reconnect to the same URL.
    """

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        *,
        database: str = "cliprs",
        migrate: bool = True,
        ready_timeout_s: float = 30,
    ):
        self.root = Path(root)
        self.port = port or free_port()
        self.database = database
        self.migrate = migrate
        self.ready_timeout_s = ready_timeout_s
        self.bindir = postgres_bindir()
        self.proc: subprocess.Popen | None = None
        self._home: Path | None = None  # the directory the server user owns
        self._own_tmp = False  # the home is a temporary directory outside root: remove it too
        self._prepared = False  # the database exists and is migrated
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise InstanceError(
                    "running as root, but there is no 'postgres' user to run PostgreSQL"
                ) from None
            self.user: str | None = user.pw_name
            self.uid, self.gid = user.pw_uid, user.pw_gid
        else:
            self.user, self.uid, self.gid = None, os.geteuid(), os.getegid()

    # -- where things are ------------------------------------------------------------------

    @property
    def home(self) -> Path:
        if self._home is None:
            self._home = self._make_home()
        return self._home

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "socket"

    @property
    def log_path(self) -> Path:
        return self.home / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def admin_url(self) -> str:
        """The maintenance database (``postgres``) of the same server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _make_home(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        if _reachable_by(self.root, self.uid, self.gid):
            home = Path(tempfile.mkdtemp(prefix="postgres-", dir=self.root))
        else:
            # e.g. pytest's tmp dirs (mode 0700, root's): the server user cannot enter them.
            home = Path(tempfile.mkdtemp(prefix="cliprs-postgres-"))
            self._own_tmp = True
            (self.root / "postgres-home").write_text(f"{home}\n")  # a pointer for whoever debugs
        os.chown(home, self.uid, self.gid)
        os.chmod(home, 0o700)
        return home

    # -- running -----------------------------------------------------------------------------

    def _as_server_user(self) -> dict:
        if self.user is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def _initdb(self) -> None:
        for d in (self.socket_dir,):
            d.mkdir(exist_ok=True)
            os.chown(d, self.uid, self.gid)
        out = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            cwd=self.home,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
            **self._as_server_user(),
        )
        if out.returncode != 0:
            raise InstanceError(f"initdb failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")

    def start(self) -> PostgresInstance:
        """Start the server (initdb the first time), wait until it accepts connections; the first
        start also creates the database with PostGIS and migrates it."""
        if self.running:
            return self
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        argv += ["-k", str(self.socket_dir)]
        for key, value in PG_SETTINGS.items():
            argv += ["-c", f"{key}={value}"]
        self._spawn(
            argv, self.log_path, cwd=self.home, env={**os.environ, "LC_ALL": "C"}, **self._as_server_user()
        )
        _wait(
            self._accepts, self.ready_timeout_s, f"PostgreSQL on port {self.port}", self.proc, self.log_path
        )
        if not self._prepared:
            self._prepare()
        return self

    def _accepts(self) -> bool:
        """Our server answers (not another one that holds the port: its data directory is ours)."""
        import psycopg

        try:
            with psycopg.connect(self.admin_url, connect_timeout=1) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.Error:
            return False
        if row is None or Path(row[0]).resolve() != self.data_dir.resolve():
            raise InstanceError(f"port {self.port} is held by another PostgreSQL ({row and row[0]})")
        return True

    def _prepare(self) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        from cliprs.db.engine import sync_url
        from cliprs.db.migrate import ensure_database, upgrade

        ensure_database(self.url)
        engine = create_engine(sync_url(self.url), poolclass=NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS postgis"))
        finally:
            engine.dispose()
        if self.migrate:
            upgrade(self.url)
        self._prepared = True

    def stop(self, mode: str = "fast", timeout_s: float = 30) -> None:
        """Shut down: ``fast`` (roll back open transactions, disconnect everyone, checkpoint),
        ``immediate`` (abort at once; crash recovery at the next start) or ``smart``."""
        if mode not in PG_STOP_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(PG_STOP_SIGNALS)}, not {mode!r}")
        if self.proc is not None:
            _end(self.proc, PG_STOP_SIGNALS[mode], timeout_s)

    # kill(): the postmaster's process group, its backends included: orphaned ones would hold
    # the shared memory and the next start would refuse to run until they noticed and exited.

    def restart(self, mode: str = "fast") -> PostgresInstance:
        """Stop (``mode``) and start again on the same port; committed data is kept."""
        self.stop(mode)
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its data, socket and log."""
        if self.proc is not None:
            _end(self.proc, signal.SIGINT, 30)
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            if self._own_tmp:
                (self.root / "postgres-home").unlink(missing_ok=True)
            self._home = None
        self._prepared = False


class RedisInstance(_ServerProcess):
    """A ``redis-server`` of its own on loopback, without persistence: ``restart`` (and
    ``kill`` then ``start``) comes back empty, every queued task lost."""

    def __init__(self, root: Path, port: int | None = None, *, ready_timeout_s: float = 15):
        self.root = Path(root)
        self.port = port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self.dir = self.root / f"redis-{self.port}"
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        binary = shutil.which("redis-server")
        if binary is None:
            raise InstanceError("redis-server was not found: install it (Debian package redis-server)")
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisInstance:
        if self.running:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        for leftover in ("dump.rdb", "appendonly.aof", "appendonlydir"):  # never restore anything
            path = self.dir / leftover
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"]
        self._spawn(argv, self.log_path)
        _wait(self._pong, self.ready_timeout_s, f"Redis on port {self.port}", self.proc, self.log_path)
        return self

    def _pong(self) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            pid = client.info("server")["process_id"]
        except redis.RedisError:
            return False
        finally:
            client.close()
        if self.proc is None or pid != self.proc.pid:
            raise InstanceError(f"port {self.port} is held by another Redis (pid {pid})")
        return True

    def stop(self, timeout_s: float = 15) -> None:
        """Shut down (SIGTERM; nothing is saved)."""
        if self.proc is not None:
            _end(self.proc, signal.SIGTERM, timeout_s)

    def restart(self) -> RedisInstance:
        """Stop and start again on the same port, empty: every key and queued task is gone."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
