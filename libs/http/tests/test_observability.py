"""`install_observability`: /metrics, request ids, the URL cap, JSON logs, and uvicorn's own
parser errors in the one error shape (a real uvicorn server on a loopback port)."""

from __future__ import annotations

import json
import logging
import socket

import httpx
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cliprs.logs import REQUEST_ID, JsonFormatter
from cliprs_http import install_error_handlers
from cliprs_http.observability import forward_request_id, install_observability
from cliprs_testing.loopback import serving


def make_app(**kwargs) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_observability(app, "unit", **kwargs)

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict:
        return {"id": item_id, "request_id": REQUEST_ID.get()}

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("bug")

    return app


def samples(text: str, name: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_count_requests_by_route_template_and_status() -> None:
    client = TestClient(make_app(), raise_server_exceptions=False)
    for i in range(3):
        assert client.get(f"/items/{i}").status_code == 200
    assert client.get("/items/x").status_code == 422
    assert client.get("/boom").status_code == 500
    assert client.get("/nowhere").status_code == 404
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    counts = samples(resp.text, "cliprs_http_requests_total")

    def count(route: str, status: str) -> float:
        key = (("method", "GET"), ("route", route), ("service", "unit"), ("status", status))
        return counts.get(key, 0)

    assert count("/items/{item_id}", "200") == 3  # the template, never /items/0, /items/1 ...
    assert count("/items/{item_id}", "422") == 1
    assert count("/boom", "500") == 1
    assert count("<unmatched>", "404") == 1
    buckets = samples(resp.text, "cliprs_http_request_duration_seconds_count")
    assert buckets[(("method", "GET"), ("route", "/items/{item_id}"), ("service", "unit"))] == 4


def test_metrics_route_is_not_shadowed_by_a_static_mount(tmp_path) -> None:
    (tmp_path / "index.html").write_text("<html></html>")
    app = FastAPI()
    install_observability(app, "unit-web")
    app.mount("/", StaticFiles(directory=tmp_path, html=True), name="static")
    client = TestClient(app)
    assert client.get("/").status_code == 200  # the page, from the mount
    resp = client.get("/metrics")
    assert resp.headers["content-type"].startswith("text/plain")
    assert samples(resp.text, "cliprs_http_requests_total")


def test_request_id_is_kept_or_made_and_answered() -> None:
    client = TestClient(make_app())
    resp = client.get("/items/1", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123" and resp.json()["request_id"] == "abc-123"
    made = client.get("/items/1")
    assert (
        len(made.headers["x-request-id"]) == 32 and made.json()["request_id"] == made.headers["x-request-id"]
    )
    # A value that could forge log lines is replaced, not echoed.
    bad = client.get("/items/1", headers={"X-Request-ID": 'x" injected=1'})
    assert bad.headers["x-request-id"] != 'x" injected=1' and len(bad.headers["x-request-id"]) == 32
    # Errors carry it too.
    assert client.get("/nowhere", headers={"X-Request-ID": "r-404"}).headers["x-request-id"] == "r-404"


async def test_forward_request_id_hook_sends_the_current_id() -> None:
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["rid"] = request.headers.get("x-request-id")
        return httpx.Response(200)

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(handler), event_hooks={"request": [forward_request_id]}
    ) as client:
        token = REQUEST_ID.set("up-42")
        try:
            await client.get("http://peer/x")
        finally:
            REQUEST_ID.reset(token)
    assert seen["rid"] == "up-42"


def test_a_url_over_the_cap_answers_414_in_the_error_shape() -> None:
    client = TestClient(make_app(max_url=1000))
    resp = client.get("/items/1", params={"q": "a" * 2000})
    assert resp.status_code == 414
    body = resp.json()
    assert body["error"]["code"] == "too_large" and "POST" in body["error"]["message"]
    assert resp.headers["x-request-id"]
    assert client.get("/items/1", params={"q": "a" * 500}).status_code == 200


def test_json_formatter_writes_one_object_with_the_request_id() -> None:
    record = logging.LogRecord("cliprs.x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.route = "/v1/search"
    token = REQUEST_ID.set("rid-7")
    try:
        line = JsonFormatter("search-api").format(record)
    finally:
        REQUEST_ID.reset(token)
    out = json.loads(line)
    assert out["msg"] == "hello world" and out["request_id"] == "rid-7"
    assert out["service"] == "search-api" and out["route"] == "/v1/search" and out["level"] == "info"


def test_uvicorn_parser_errors_answer_json() -> None:
    """A URL beyond what uvicorn's parser buffers (~64 KiB with httptools, what uvicorn picks
    when installed) never reaches the app; its 400 is JSON in the one error shape, and a URL
    between the app cap and that limit answers 414."""
    # cliprs_testing's `serving` passes log_config=None: uvicorn must not reconfigure the
    # process's logging (its dictConfig stops uvicorn.access propagating, which later tests read
    # through the root logger).
    with serving(make_app(), http="httptools") as port:

        def raw_get(target: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data

        huge = raw_get(b"/items/1?q=" + b"a" * 200_000)
        head, _, body = huge.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head.lower()
        assert json.loads(body)["error"]["code"] == "invalid_request"
        long = raw_get(b"/items/1?q=" + b"a" * 20_000)
        head, _, body = long.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 414"), head


def test_h11_parser_errors_answer_json_too() -> None:
    """The pure-Python parser (``--http h11``) answers the same body (checked on a fake
    transport: a real socket may reset before the client reads the answer)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    make_app()  # installs the JSON answer

    class Transport:
        def __init__(self) -> None:
            self.data = b""

        def write(self, data: bytes) -> None:
            self.data += data

        def close(self) -> None:
            pass

    proto = H11Protocol.__new__(H11Protocol)
    proto.conn = h11.Connection(h11.SERVER)
    proto.conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    proto.conn.next_event()
    proto.transport = Transport()
    proto.send_400_response("Invalid HTTP request received.")
    head, _, body = proto.transport.data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["error"]["code"] == "invalid_request"


def test_gpu_collector_reports_memory_and_utilisation_of_torch_devices(monkeypatch) -> None:
    """Read from torch when the process loaded it with CUDA (faked here: no GPU on CI)."""
    import sys
    import types

    from prometheus_client import CollectorRegistry, generate_latest

    from cliprs.metrics import GpuCollector

    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        memory_allocated=lambda i: 1000 * (i + 1),
        memory_reserved=lambda i: 2000 * (i + 1),
        mem_get_info=lambda i: (7000, 10000),
        utilization=lambda i: 50,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    registry = CollectorRegistry()
    registry.register(GpuCollector())
    text = generate_latest(registry).decode()
    mem = samples(text, "cliprs_gpu_memory_bytes")
    assert mem[(("device", "1"), ("kind", "allocated"))] == 2000
    assert mem[(("device", "0"), ("kind", "used"))] == 3000
    assert samples(text, "cliprs_gpu_utilization_ratio")[(("device", "0"),)] == 0.5
    # No CUDA: no GPU samples, and the scrape still works.
    monkeypatch.setitem(
        sys.modules, "torch", types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False))
    )
    assert "cliprs_gpu" not in generate_latest(registry).decode()
