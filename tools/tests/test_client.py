"""The command-line client's own logic: following a detection run, printing its counts,
streaming an export to a file, and how errors end (against a scripted API speaking the
contract of issue 15; the live search-api drives the other commands in tests/test_projects_api.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from cliprs_tools import client as cli

API = "http://api.test"


def scripted(states: list[str], export: bytes = b"", export_status: int = 200):
    """An API whose run goes through ``states`` one poll at a time; the requests it saw."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        run = {
            "id": 7,
            "project_id": 3,
            "threshold": 0.5,
            "windows_scored": 1000,
            "hits": 42,
            "estimate": {"precision": 0.95, "recall": 0.9, "held_out_positive": 4, "held_out_negative": 4},
            "error": "no negative labels" if states[0] == "failed" else None,
        }
        if request.method == "POST" and path == "/v1/projects/3/runs":
            return httpx.Response(202, json={**run, "state": "queued"})
        if path == "/v1/runs/7":
            return httpx.Response(200, json={**run, "state": states.pop(0) if len(states) > 1 else states[0]})
        if path == "/v1/runs/7/counts":
            ts = [float(t) for t in request.url.params.get_list("threshold")]
            return httpx.Response(
                200, json={"run_id": 7, "counts": [{"threshold": t, "count": int(100 * (1 - t))} for t in ts]}
            )
        if path.startswith("/v1/runs/7/export."):
            if export_status != 200:
                return httpx.Response(
                    export_status, json={"error": {"code": "conflict", "message": "run 7 is running"}}
                )
            return httpx.Response(200, content=export)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": f"no route {path}"}})

    return httpx.MockTransport(handle), seen


def test_detect_follows_the_run_and_prints_counts(capsys: pytest.CaptureFixture[str]) -> None:
    transport, seen = scripted(["queued", "running", "done"])
    argv = [
        "--api",
        API,
        "detect",
        "--project",
        "3",
        "--threshold",
        "0.5",
        "--thresholds",
        "0.2,0.6",
        "--poll-s",
        "0.01",
    ]
    assert cli.main(argv, transport) == 0
    out = capsys.readouterr()
    assert "run 7: done  threshold 0.5  42 hits of 1000 windows" in out.out
    assert "precision 0.950  recall 0.900" in out.out
    assert "score >= 0.200: 80 hits" in out.out and "score >= 0.600: 40 hits" in out.out
    assert "started run 7" in out.err and "run 7: running" in out.err
    assert json.loads(seen[0].content) == {"threshold": 0.5}
    assert seen[-1].url.params.get_list("threshold") == ["0.2", "0.6"]


def test_detect_json_and_a_failed_run(capsys: pytest.CaptureFixture[str]) -> None:
    transport, _ = scripted(["done"])
    assert cli.main(["--api", API, "--json", "detect", "--project", "3", "--poll-s", "0.01"], transport) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["run"]["state"] == "done" and [c["threshold"] for c in body["counts"]["counts"]] == [
        0.3,
        0.5,
        0.7,
        0.9,
    ]
    transport, _ = scripted(["failed"])
    assert cli.main(["--api", API, "detect", "--project", "3", "--poll-s", "0.01"], transport) == 1
    assert "run 7 failed: no negative labels" in capsys.readouterr().err


def test_export_streams_to_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = b"polygon_id,lon,lat\n" + b"1,-75.5,37.6\n" * 5000
    transport, seen = scripted(["done"], export=payload)
    out = tmp_path / "d.csv"
    argv = ["--api", API, "export", "--run", "7", "--format", "csv", "--rows", "windows", "--out", str(out)]
    assert cli.main(argv, transport) == 0
    assert out.read_bytes() == payload and not (tmp_path / "d.csv.part").exists()
    assert f"wrote {out} ({len(payload)} bytes)" in capsys.readouterr().out
    assert seen[-1].url.path == "/v1/runs/7/export.csv" and seen[-1].url.params["rows"] == "windows"


def test_a_refused_export_writes_nothing_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    transport, _ = scripted(["running"], export_status=409)
    out = tmp_path / "d.gpkg"
    assert (
        cli.main(["--api", API, "export", "--run", "7", "--format", "gpkg", "--out", str(out)], transport)
        == 2
    )
    assert "run 7 is running (HTTP 409)" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "d.gpkg.part").exists()


def test_bad_command_lines_and_an_unreachable_api(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--api", API]) == 2
    assert "subcommand is required" in capsys.readouterr().err
    assert cli.main(["--api", API, "export", "--run", "7", "--format", "shp"]) == 2
    assert "--export-format" in capsys.readouterr().err
    assert cli.main(["--api", "http://127.0.0.1:9", "projects", "list"]) == 1
    assert "cannot reach the search-api at http://127.0.0.1:9" in capsys.readouterr().err
