"""Requests at the edges of the search-api's input and quotas (in-process, real PostgreSQL and
Redis): a polygon form field nested beyond any GeoJSON, a classification of an uploaded image
(an upload, not a search), and who owns the quota of requests without a key behind a reverse
proxy (X-Forwarded-For, believed only from trusted proxies)."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cliprs.settings import CoreSettings
from cliprs_search.app import create_app
from cliprs_search.settings import SearchSettings

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def make_core(pg_url: str, redis_url: str, tmp_path: Path) -> CoreSettings:
    return CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        redis_namespace=f"edges-{uuid.uuid4().hex[:6]}",
    )


def settings(**overrides) -> SearchSettings:
    base = dict(
        auth="on", geocoder="none", embedder_url="http://127.0.0.1:9", search_burst=1000, upload_burst=1000
    )
    return SearchSettings(**{**base, **overrides})


def test_a_polygon_nested_100k_deep_answers_400(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    core = make_core(pg_url, redis_url, tmp_path)
    with TestClient(create_app(core, settings()), raise_server_exceptions=False) as c:
        resp = c.post(
            "/v1/search/image",
            files={"file": ("a.png", PNG, "image/png")},
            data={"polygon": "[" * 100_000 + "]" * 100_000},
        )
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["code"] == "invalid_input" and "nested too deeply" in error["message"]
        # A cursor made of the same is malformed, not a crash.
        token = base64.urlsafe_b64encode(b"[" * 3000).decode()
        cursor = c.get("/v1/search", params={"q": "a pier", "cursor": token})
        assert cursor.status_code == 400 and "cursor is malformed" in cursor.text, cursor.text


def test_classifying_an_uploaded_image_spends_the_upload_bucket(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    core = make_core(pg_url, redis_url, tmp_path)
    with TestClient(create_app(core, settings(upload_burst=1, upload_rate_per_s=0.01))) as c:
        first = c.post("/v1/classify", files={"file": ("a.png", PNG, "image/png")})
        assert first.status_code != 429, first.text  # the embedder is not there: 503
        second = c.post("/v1/classify", files={"file": ("a.png", PNG, "image/png")})
        assert second.status_code == 429, second.text
        assert "too many upload requests" in second.json()["error"]["message"]
        # An indexed window instead of a file is a search: the search bucket, still full.
        by_window = c.post("/v1/classify", data={"window_id": "1"})
        assert by_window.status_code != 429, by_window.text
    with TestClient(create_app(core, settings(search_burst=1, search_rate_per_s=0.01))) as c:
        assert c.post("/v1/classify", data={"window_id": "1"}).status_code != 429
        again = c.post("/v1/classify", data={"window_id": "1"})
        assert again.status_code == 429 and "too many search requests" in again.json()["error"]["message"]


def _statuses(app, peer: str, forwarded: list[str | None]) -> list[int]:
    """A search from ``peer`` for each X-Forwarded-For value (None: no header), in order."""
    with TestClient(app, client=(peer, 40000)) as c:
        return [
            c.get("/v1/windows/1/similar", headers={"X-Forwarded-For": xff} if xff else {}).status_code
            for xff in forwarded
        ]


def test_behind_a_trusted_proxy_each_client_has_its_own_quota(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    limited = dict(search_burst=1, search_rate_per_s=0.01)
    proxied = create_app(
        make_core(pg_url, redis_url, tmp_path), settings(trusted_proxies=["10.1.0.0/16"], **limited)
    )
    # Two users behind the proxy: each has its own bucket (the proxy appends the address it saw;
    # whatever a client wrote before it is not believed).
    statuses = _statuses(proxied, "10.1.0.5", ["203.0.113.7", "203.0.113.7", "1.2.3.4, 198.51.100.9"])
    assert statuses[0] != 429 and statuses[1] == 429 and statuses[2] != 429, statuses
    # Default: no proxy is trusted, and a client cannot pick its quota owner with the header.
    direct = create_app(make_core(pg_url, redis_url, tmp_path), settings(**limited))
    statuses = _statuses(direct, "10.1.0.5", ["203.0.113.7", "198.51.100.9"])
    assert statuses[0] != 429 and statuses[1] == 429, statuses


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("10.0.0.2", ["203.0.113.7"], [], "10.0.0.2"),  # no proxy trusted: the peer
        ("192.0.2.1", ["203.0.113.7"], ["10.0.0.0/8"], "192.0.2.1"),  # peer not a trusted proxy
        ("10.0.0.2", ["203.0.113.7"], ["10.0.0.0/8"], "203.0.113.7"),
        (
            "10.0.0.2",
            ["6.6.6.6, 203.0.113.7, 10.0.0.9"],
            ["10.0.0.0/8"],
            "203.0.113.7",
        ),  # right-most untrusted
        ("10.0.0.2", ["6.6.6.6", "203.0.113.7"], ["10.0.0.2"], "203.0.113.7"),  # two headers: one list
        ("10.0.0.2", ["10.0.0.7, 10.0.0.8"], ["10.0.0.0/8"], "10.0.0.7"),  # all trusted: the first
        ("10.0.0.2", [], ["10.0.0.0/8"], "10.0.0.2"),  # no header: the peer
        ("::1", ["2001:db8::5"], ["::1"], "2001:db8::5"),
    ],
)
def test_client_address(peer: str, forwarded: list[str], trusted: list[str], client: str) -> None:
    from cliprs_search.access.principal import client_address

    assert client_address(peer, forwarded, trusted) == client
