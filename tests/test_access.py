"""Access control on the search-api, in-process against the real PostgreSQL and Redis: the
permission matrix (every endpoint x no key, read, write, admin, revoked; generated from the app's
routes), revocation seen at once by a second app instance, rate limits under a burst, the daily
tile budget, the audit trail of writes, and the admin command line."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cliprs.keys import prefix_of
from cliprs.settings import CoreSettings
from cliprs_http.routing import api_routes
from cliprs_search.access import access_of
from cliprs_search.app import create_app
from cliprs_search.settings import SearchSettings
from cliprs_testing.keys import TestKey
from cliprs_testing.synthetic import delete_seeded
from cliprs_tools import keys as keys_cli

# Routes anyone may call: liveness, readiness and metrics (scraped without credentials).
PUBLIC = {"/healthz", "/readyz", "/metrics"}
REMOTE = "https://tiles.example.test/{z}/{x}/{y}.png"
# A small box in Virginia's Eastern Shore: 4 tiles at z14, 9 at z15.
BOX = [-75.60, 37.66, -75.56, 37.70]


def make_core(pg_url: str, redis_url: str, tmp_path: Path) -> CoreSettings:
    return CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        redis_namespace=f"access-{uuid.uuid4().hex[:6]}",
        tile_sources={"local": f"file://{tmp_path}/tiles/{{z}}/{{x}}/{{y}}.png", "remote": REMOTE},
    )


def make_settings(**overrides) -> SearchSettings:
    base = dict(
        auth="on", geocoder="none", search_burst=1000, upload_burst=1000, embedder_url="http://127.0.0.1:9"
    )
    return SearchSettings(**{**base, **overrides})


@pytest.fixture
def core(pg_url: str, redis_url: str, tmp_path: Path) -> CoreSettings:
    return make_core(pg_url, redis_url, tmp_path)


@pytest.fixture
def client(core: CoreSettings) -> Iterator[TestClient]:
    with TestClient(create_app(core, make_settings())) as c:
        yield c


@pytest.fixture
def areas_made(pg_url: str) -> Iterator[list[int]]:
    made: list[int] = []
    yield made
    if made:
        delete_seeded(pg_url, made)


def filled(path: str) -> str:
    """A concrete URL for a route path: ids that do not exist, a plausible tile."""
    values = {"source": "local", "z": "3", "x": "1", "y": "1"}
    return re.sub(r"{(\w+)}", lambda m: values.get(m.group(1), "987654321"), path)


def test_every_endpoint_declares_who_may_call_it() -> None:
    app = create_app(CoreSettings(), make_settings())
    undeclared = [
        f"{','.join(sorted(r.methods))} {r.path}"
        for r in api_routes(app.routes)
        if access_of(r) is None and r.path not in PUBLIC
    ]
    assert not undeclared, f"routes without an access rule (cliprs_search.auth): {undeclared}"


def expected(scope: str, who: str) -> int | None:
    """401/403 when ``who`` may not call a ``scope`` endpoint (default settings), else None."""
    if who == "revoked":
        return 401
    if who == "none":
        return None if scope == "read" else 401
    order = ["read", "write", "admin"]
    return None if order.index(who) >= order.index(scope) else 403


def test_permission_matrix(client: TestClient, api_keys: dict[str, TestKey]) -> None:
    problems = []
    routes = [r for r in api_routes(client.app.routes) if r.path not in PUBLIC]
    assert len(routes) >= 35
    for route in routes:
        scope = access_of(route).scope
        for method in sorted(route.methods):
            for who in ("none", "read", "write", "admin", "revoked"):
                headers = {} if who == "none" else api_keys[who].headers
                if who == "read":  # the other header works as well
                    headers = {"X-API-Key": api_keys[who].secret}
                body = {"json": {}} if method in ("POST", "PATCH", "PUT") else {}
                resp = client.request(method, filled(route.path), headers=headers, **body)
                want = expected(scope, who)
                ok = resp.status_code not in (401, 403) if want is None else resp.status_code == want
                if not ok:
                    problems.append(
                        f"{method} {route.path} as {who}: {resp.status_code} (want {want or 'allowed'})"
                    )
                if resp.status_code in (401, 403):
                    err = resp.json()["error"]
                    assert err["code"] in ("unauthorized", "forbidden") and err["message"]
    assert not problems, "\n".join(problems)


def test_reads_can_require_a_key(core: CoreSettings, api_keys: dict[str, TestKey]) -> None:
    with TestClient(create_app(core, make_settings(require_key_for_reads=True))) as c:
        resp = c.get("/v1/areas")
        assert resp.status_code == 401 and "X-API-Key" in resp.json()["error"]["message"]
        assert c.get("/v1/areas", headers=api_keys["read"].headers).status_code == 200
        assert c.get("/healthz").status_code == 200  # liveness stays public
        bad = c.get("/v1/areas", headers={"Authorization": "Basic abc"})
        assert bad.status_code == 401 and "Bearer" in bad.json()["error"]["message"]


def test_a_revoked_key_is_refused_at_once_by_another_instance(
    core: CoreSettings, api_keys: dict[str, TestKey]
) -> None:
    settings = make_settings(require_key_for_reads=True)
    with TestClient(create_app(core, settings)) as a, TestClient(create_app(core, settings)) as b:
        admin = api_keys["admin"].headers
        made = a.post("/v1/admin/keys", json={"name": "field team", "scopes": ["read"]}, headers=admin)
        assert made.status_code == 201, made.text
        secret, key = made.json()["secret"], made.json()["key"]
        assert secret.startswith(key["prefix"] + "_") and "secret" not in key
        mine = {"X-API-Key": secret}
        assert b.get("/v1/areas", headers=mine).status_code == 200
        listed = a.get("/v1/admin/keys", headers=admin).json()
        assert any(k["id"] == key["id"] for k in listed) and secret not in str(listed)
        assert a.delete(f"/v1/admin/keys/{key['id']}", headers=admin).json()["revoked_at"]
        refused = b.get("/v1/areas", headers=mine)
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]


def test_rate_limit_under_a_burst(core: CoreSettings, api_keys: dict[str, TestKey]) -> None:
    settings = make_settings(search_burst=3, search_rate_per_s=0.2)
    with TestClient(create_app(core, settings)) as c:
        statuses = [
            c.get("/v1/search", params={"q": "a pier"}, headers=api_keys["read"].headers) for _ in range(6)
        ]
        codes = [r.status_code for r in statuses]
        assert all(code != 429 for code in codes[:3]) and all(code == 429 for code in codes[3:]), codes
        limited = statuses[3]
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        assert api_keys["read"].prefix in limited.json()["error"]["message"]
        # Another key has a bucket of its own.
        assert (
            c.get("/v1/search", params={"q": "a pier"}, headers=api_keys["write"].headers).status_code != 429
        )


def test_daily_tile_budget_refuses_an_area_with_the_count(
    core: CoreSettings, api_keys: dict[str, TestKey], areas_made: list[int]
) -> None:
    with TestClient(create_app(core, make_settings(daily_tile_budget=10))) as c:
        w = api_keys["write"].headers
        first = c.post(
            "/v1/areas",
            json={"name": "remote z14", "bbox": BOX, "zooms": [14], "source": "remote"},
            headers=w,
        )
        assert first.status_code == 202, first.text
        areas_made.append(first.json()["area"]["id"])
        planned = first.json()["job"]["tiles_planned"]
        assert 0 < planned < 10
        second = c.post(
            "/v1/areas",
            json={"name": "remote z15", "bbox": BOX, "zooms": [15], "source": "remote"},
            headers=w,
        )
        assert second.status_code == 429, second.text
        message = second.json()["error"]["message"]
        assert second.json()["error"]["code"] == "tile_budget_exceeded"
        assert f"has {10 - planned} of its 10 left" in message and re.search(r"needs \d+ tiles", message)
        assert int(second.headers["Retry-After"]) >= 1
        # Local sources do not count.
        local = c.post(
            "/v1/areas", json={"name": "local z15", "bbox": BOX, "zooms": [15], "source": "local"}, headers=w
        )
        assert local.status_code == 202, local.text
        areas_made.append(local.json()["area"]["id"])


def test_every_write_leaves_an_audit_row(
    core: CoreSettings, api_keys: dict[str, TestKey], areas_made: list[int]
) -> None:
    with TestClient(create_app(core, make_settings())) as c:
        w, admin = api_keys["write"], api_keys["admin"].headers
        area = c.post(
            "/v1/areas",
            json={"name": "audited", "bbox": BOX, "zooms": [14], "source": "local"},
            headers=w.headers,
        )
        assert area.status_code == 202, area.text
        area_id = area.json()["area"]["id"]
        areas_made.append(area_id)
        project = c.post(
            "/v1/projects", json={"name": "audit me", "area_ids": [area_id]}, headers=w.headers
        ).json()
        assert (
            c.patch(f"/v1/projects/{project['id']}", json={"query": "a pier"}, headers=w.headers).status_code
            == 200
        )
        assert c.delete(f"/v1/projects/{project['id']}", headers=w.headers).status_code == 200
        assert c.delete(f"/v1/areas/{area_id}?force=true", headers=w.headers).status_code == 202
        # A refused write leaves no row.
        assert (
            c.post("/v1/projects", json={"name": "x", "area_ids": [987654321]}, headers=w.headers).status_code
            == 404
        )

        page = c.get("/v1/admin/audit", params={"key_id": w.id}, headers=admin).json()
        rows = {(e["action"], e["target"]): e for e in page["entries"]}
        assert set(rows) == {
            ("area.create", f"area:{area_id}"),
            ("project.create", f"project:{project['id']}"),
            ("project.update", f"project:{project['id']}"),
            ("project.delete", f"project:{project['id']}"),
            ("area.delete", f"area:{area_id}"),
        }, sorted(rows)
        for e in page["entries"]:
            assert e["key_prefix"] == w.prefix and e["at"] and e["status"] in (200, 201, 202)
        assert rows[("project.update", f"project:{project['id']}")]["changes"]["request"] == {
            "query": "a pier"
        }
        assert rows[("area.delete", f"area:{area_id}")]["changes"]["query"] == "force=true"

        made = c.post("/v1/admin/keys", json={"name": "temp", "scopes": ["read"]}, headers=admin).json()
        c.delete(f"/v1/admin/keys/{made['key']['id']}", headers=admin)
        keys_page = c.get(
            "/v1/admin/audit", params={"target": f"key:{made['key']['id']}"}, headers=admin
        ).json()
        assert [e["action"] for e in keys_page["entries"]] == ["key.revoke", "key.create"]
        assert made["secret"] not in str(keys_page)
        # Paging, newest first.
        first = c.get("/v1/admin/audit", params={"key_id": w.id, "limit": 2}, headers=admin).json()
        assert len(first["entries"]) == 2 and first["next_before_id"] == first["entries"][-1]["id"]
        rest = c.get(
            "/v1/admin/audit", params={"key_id": w.id, "before_id": first["next_before_id"]}, headers=admin
        ).json()
        assert len(rest["entries"]) == 3 and rest["next_before_id"] is None


def test_admin_command_line(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("CLIPRS_DATABASE_URL", pg_url)
    assert (
        keys_cli.main(["create", "--name", "cli test", "--scope", "write", "--daily-tile-budget", "50"]) == 0
    )
    out = capsys.readouterr().out
    secret = re.search(r"^(ck_[0-9a-f]{8}_\S+)$", out, re.M).group(1)
    prefix = prefix_of(secret)
    assert keys_cli.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert prefix in listing and secret not in listing
    assert keys_cli.main(["revoke", prefix]) == 0
    assert "revoked" in capsys.readouterr().out
    assert keys_cli.main(["revoke", "ck_00000000"]) == 1
    assert not keys_cli.key_is_active(pg_url, secret)


def test_the_local_stack_keeps_one_admin_key(pg_url: str, tmp_path: Path) -> None:
    path = tmp_path / ".run" / "admin-key"
    key = keys_cli.local_admin_key(pg_url, path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys_cli.local_admin_key(pg_url, path) == key  # reused while valid
    assert keys_cli.revoke_key(pg_url, prefix_of(key))
    assert keys_cli.local_admin_key(pg_url, path) != key  # a revoked one is replaced
