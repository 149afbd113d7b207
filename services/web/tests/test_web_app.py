"""Tests of the web service: its config endpoint, health, readiness logic and static page."""

from __future__ import annotations

import logging
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from cliprs_web.app import STATIC_DIR, VENDOR_FILES, create_app
from cliprs_web.settings import WebSettings

TOKEN = "pk.eyJ1IjoidGVzdCJ9.NOT-A-REAL-TOKEN-5f3a9c"
PAGE_MODULES = (
    "analysis.js",
    "api.js",
    "area-form.js",
    "colors.js",
    "draw.js",
    "geo.js",
    "map-view.js",
    "projects.js",
    "results.js",
    "search.js",
    "tiles.js",
    "ui.js",
)


@dataclass
class RunningServer:
    """A real HTTP server on loopback for the duration of a test."""

    url: str
    server: uvicorn.Server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(app: FastAPI) -> Iterator[RunningServer]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields once, then stops it."""
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)  # off the main thread it installs no signal handlers
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(url=f"http://127.0.0.1:{port}", server=server)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def fake_search_api() -> Iterator[tuple[RunningServer, dict[str, int]]]:
    """A stand-in search-api whose /readyz answers with a status the test sets."""
    control = {"status": 200, "calls": 0}
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        control["calls"] += 1
        ready = control["status"] == 200
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "model": {"fallback": False}},
            status_code=control["status"],
        )

    for running in _serve(app):
        yield running, control


@pytest.fixture
def static_with_vendor(tmp_path: Path) -> Path:
    """A copy of the page's static files with a (fake) vendored MapLibre bundle."""
    static = tmp_path / "static"
    shutil.copytree(STATIC_DIR, static, ignore=shutil.ignore_patterns("vendor"))
    for name in VENDOR_FILES:
        (static / name).parent.mkdir(parents=True, exist_ok=True)
        (static / name).write_text("/* vendored */\n")
    return static


@pytest.fixture
def static_without_vendor(tmp_path: Path) -> Path:
    """A copy of the page's static files as if build.sh had not run."""
    static = tmp_path / "static-novendor"
    shutil.copytree(STATIC_DIR, static, ignore=shutil.ignore_patterns("vendor"))
    return static


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{_free_port()}"


# ---- config.json ----


def test_config_json_gives_public_urls_and_token() -> None:
    settings = WebSettings(
        search_api_url="https://search.example.org/",
        tiler_url="https://tiles.example.org",
        mapbox_token=TOKEN,
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/config.json")
    assert response.status_code == 200
    assert response.json() == {
        "searchApiUrl": "https://search.example.org",
        "tilerUrl": "https://tiles.example.org",
        "mapboxToken": TOKEN,
    }


def test_config_json_without_token_is_null() -> None:
    with TestClient(create_app(WebSettings(mapbox_token=None))) as client:
        body = client.get("/config.json").json()
    assert body == {
        "searchApiUrl": "http://127.0.0.1:8000",
        "tilerUrl": "http://127.0.0.1:8001",
        "mapboxToken": None,
    }


def test_settings_read_from_web_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_PORT", "9090")
    monkeypatch.setenv("WEB_SEARCH_API_URL", "http://search:8000")
    monkeypatch.setenv("WEB_MAPBOX_TOKEN", TOKEN)
    settings = WebSettings()
    assert settings.port == 9090
    assert settings.search_api_url == "http://search:8000"
    assert settings.mapbox_token is not None
    assert settings.mapbox_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)


# ---- health and readiness ----


def test_healthz() -> None:
    with TestClient(create_app(WebSettings())) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_ready_when_bundle_present_and_search_api_answers(
    fake_search_api: tuple[RunningServer, dict[str, int]], static_with_vendor: Path
) -> None:
    server, control = fake_search_api
    settings = WebSettings(search_api_url=server.url)
    with TestClient(create_app(settings, static_dir=static_with_vendor)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["vendor"]["ok"] is True
    assert body["checks"]["search_api"]["ok"] is True
    assert control["calls"] == 1


def test_readyz_uses_internal_url_when_set(
    fake_search_api: tuple[RunningServer, dict[str, int]], static_with_vendor: Path
) -> None:
    server, control = fake_search_api
    settings = WebSettings(search_api_url="http://public.invalid:1", search_api_internal_url=server.url)
    with TestClient(create_app(settings, static_dir=static_with_vendor)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert control["calls"] == 1


def test_readyz_unavailable_when_search_api_down(static_with_vendor: Path) -> None:
    settings = WebSettings(search_api_url=_closed_port_url())
    with TestClient(create_app(settings, static_dir=static_with_vendor)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["vendor"]["ok"] is True
    assert body["checks"]["search_api"]["ok"] is False
    assert "/readyz" in body["checks"]["search_api"]["detail"]


def test_readyz_unavailable_when_search_api_not_ready(
    fake_search_api: tuple[RunningServer, dict[str, int]], static_with_vendor: Path
) -> None:
    server, control = fake_search_api
    control["status"] = 503
    settings = WebSettings(search_api_url=server.url)
    with TestClient(create_app(settings, static_dir=static_with_vendor)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    check = response.json()["checks"]["search_api"]
    assert check["ok"] is False
    assert "HTTP 503" in check["detail"]


def test_readyz_unavailable_when_vendor_bundle_missing(
    fake_search_api: tuple[RunningServer, dict[str, int]], static_without_vendor: Path
) -> None:
    server, _ = fake_search_api
    settings = WebSettings(search_api_url=server.url)
    with TestClient(create_app(settings, static_dir=static_without_vendor)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["search_api"]["ok"] is True
    assert body["checks"]["vendor"]["ok"] is False
    assert "build.sh" in body["checks"]["vendor"]["detail"]


# ---- the page ----


def test_index_html_served_at_root(static_with_vendor: Path) -> None:
    with TestClient(create_app(WebSettings(), static_dir=static_with_vendor)) as client:
        response = client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        assert 'id="map"' in html
        assert '<label for="search-input"' in html
        assert 'src="vendor/maplibre-gl.js"' in html
        assert "https://" not in html  # offline: nothing from a CDN
        for asset in (
            "/app.js",
            "/app.css",
            *(f"/js/{name}" for name in PAGE_MODULES),
            "/vendor/maplibre-gl.js",
        ):
            assert client.get(asset).status_code == 200, asset
        assert "javascript" in client.get("/app.js").headers["content-type"]


def test_packaged_static_folder_has_the_page() -> None:
    for name in ("index.html", "app.js", "app.css", *(f"js/{module}" for module in PAGE_MODULES)):
        assert (STATIC_DIR / name).is_file(), name


def test_every_module_the_page_imports_exists() -> None:
    """A missing or misspelt ES module breaks the whole page in the browser: check the imports."""
    sources = [STATIC_DIR / "app.js", *sorted((STATIC_DIR / "js").glob("*.js"))]
    for path in sources:
        for target in re.findall(r'^import .* from "(\.[^"]+)";$', path.read_text(), flags=re.M):
            assert (path.parent / target).resolve().is_file(), f"{path.name} imports {target}"
    assert {p.name for p in (STATIC_DIR / "js").glob("*.js")} == set(PAGE_MODULES)


# ---- the token stays out of logs ----


def test_token_not_logged(
    caplog: pytest.LogCaptureFixture,
    fake_search_api: tuple[RunningServer, dict[str, int]],
    static_with_vendor: Path,
) -> None:
    server, _ = fake_search_api
    caplog.set_level(logging.DEBUG)
    settings = WebSettings(search_api_url=server.url, mapbox_token=TOKEN)
    app = create_app(settings, static_dir=static_with_vendor)
    logging.getLogger("test").info("settings: %s / %r", settings, settings)
    # Through a real uvicorn server, so its access and error logs are captured too.
    for web in _serve(app):
        with httpx.Client(base_url=web.url) as client:
            assert client.get("/config.json").json()["mapboxToken"] == TOKEN
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
            assert client.get("/").status_code == 200
    assert caplog.records, "expected some log records"
    assert "mapbox token configured" in caplog.text
    assert "GET /config.json" in caplog.text  # the access log was captured
    assert TOKEN not in caplog.text
