"""The local stack's process bookkeeping and command line (no services are started)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cliprs_tools import devstack
from cliprs_tools.devstack import ServiceSpec, Stack, process_alive, process_start_time

SLEEPER = ServiceSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])


def test_pid_file_records_pid_and_start_time_and_stop_all_stops_it(tmp_path: Path) -> None:
    stack = Stack(tmp_path, {})
    proc = stack.start(SLEEPER)
    pid, started = (int(v) for v in (tmp_path / "sleeper.pid").read_text().split())
    assert pid == proc.pid and started == process_start_time(proc.pid)
    assert stack.stop_all() == ["sleeper"]
    assert proc.poll() is not None and not (tmp_path / "sleeper.pid").exists()


def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    # A pid file whose start time is not the process's: the number was reused by the system.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (tmp_path / "web.pid").write_text(f"{other.pid} {process_start_time(other.pid) - 1}")
        (tmp_path / "old.pid").write_text(str(other.pid))  # no start time: never signalled either
        assert Stack(tmp_path, {}).stop_all() == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_process_start_time_of_a_process_that_is_gone(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert process_start_time(proc.pid) is None


def test_the_command_line_runs_up_and_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []
    monkeypatch.setattr(devstack, "up", lambda root, workers: calls.append(("up", root, workers)))
    monkeypatch.setattr(devstack, "down", lambda root: calls.append(("down", root)))
    assert devstack.main(["up", "--root", str(tmp_path), "--embed-workers", "2"]) == 0
    assert devstack.main(["down", "--root", str(tmp_path)]) == 0
    assert calls == [("up", tmp_path.resolve(), 2), ("down", tmp_path.resolve())]


def test_a_failure_is_one_line_and_exit_status_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(root: Path) -> None:
        raise RuntimeError("search-api exited with 1")

    monkeypatch.setattr(devstack, "down", broken)
    assert devstack.main(["down"]) == 1
    assert capsys.readouterr().err == "error: search-api exited with 1\n"


def _pid_of(pid_file: Path) -> int | None:
    """The live process a pid file names (None: no file, or its process is gone)."""
    try:
        pid, started = (int(v) for v in pid_file.read_text().split())
    except (OSError, ValueError):
        return None
    return pid if process_alive(pid, started) else None


def _new_pid(pid_file: Path, *old: int) -> int | None:
    """The live process of a pid file, unless it is one of ``old``."""
    pid = _pid_of(pid_file)
    return pid if pid is not None and pid not in old else None


def _logged(log: Path, line: str) -> bool | None:
    return True if log.exists() and line in log.read_text() else None


def _wait_for(check, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while (value := check()) is None:
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_the_supervisor_starts_a_crashed_service_again_and_logs_it(tmp_path: Path) -> None:
    # What `make up` leaves behind: the services (here one, started before the supervisor, as
    # `up` does) and the supervisor, which adopts them from their pid files.
    stack = Stack(tmp_path, {})
    first = stack.start(SLEEPER).pid
    devstack.write_supervised(tmp_path, {}, [SLEEPER], cwd=None)
    stack.start(devstack.supervisor_spec(tmp_path, poll_s=0.1))
    try:
        log = tmp_path / "logs" / "supervisor.log"
        _wait_for(lambda: _logged(log, "watching sleeper"))
        assert _pid_of(tmp_path / "sleeper.pid") == first  # adopted, not started twice
        os.killpg(first, signal.SIGKILL)  # the worker dies (e.g. Redis restarted under it)
        stack.procs.pop("sleeper").wait()
        second = _wait_for(lambda: _new_pid(tmp_path / "sleeper.pid", first))
        assert second != first
        assert _wait_for(
            lambda: _logged(log, f"sleeper (pid {first}) is gone; started again as pid {second}")
        )
        # It dies again at once: the next start waits longer (backoff), and is logged too.
        os.killpg(second, signal.SIGKILL)
        third = _wait_for(lambda: _new_pid(tmp_path / "sleeper.pid", first, second))
        assert _wait_for(
            lambda: _logged(log, f"sleeper (pid {second}) is gone; started again as pid {third}")
        )
    finally:
        stopped = stack.stop_all()
    # `down` stops the supervisor first (nothing is started again behind it), then the services.
    assert stopped[0] == "supervisor" and "sleeper" in stopped
    assert _pid_of(tmp_path / "sleeper.pid") is None and not list(tmp_path.glob("*.pid"))


def test_restarts_back_off_while_a_service_keeps_crashing() -> None:
    delays = [devstack.restart_delay(n) for n in range(10)]
    assert delays[0] == 1 and delays == sorted(delays) and delays[-1] == devstack.MAX_RESTART_DELAY_S
