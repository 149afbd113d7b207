"""The local stack's process bookkeeping and command line (no services are started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cliprs_tools import devstack
from cliprs_tools.devstack import ServiceSpec, Stack, process_start_time

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
