"""The one readiness builder: sync and async checks, failures named, 503 with Retry-After."""

from __future__ import annotations

import json

from cliprs_http import readiness


def _down() -> None:
    raise ConnectionRefusedError(111, "Connection refused")


async def _index() -> dict:
    return {"version": 3}


async def test_ready_when_every_check_passes() -> None:
    resp = await readiness({"index": _index, "cache": lambda: {"path": "/data"}}, model={"id": "tiny"})
    body = json.loads(resp.body)
    assert resp.status_code == 200 and body["status"] == "ready"
    assert body["checks"]["index"]["version"] == 3 and body["checks"]["cache"]["path"] == "/data"
    assert body["model"] == {"id": "tiny"}


async def test_a_failing_check_makes_it_unavailable_and_says_which() -> None:
    resp = await readiness({"index": _index, "database": _down})
    body = json.loads(resp.body)
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    assert body["status"] == "unavailable"
    assert body["checks"]["index"]["ok"] is True
    assert body["checks"]["database"]["ok"] is False
    assert "ConnectionRefusedError" in body["checks"]["database"]["error"]
