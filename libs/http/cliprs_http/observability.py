"""Metrics, request ids and access logs for every HTTP service: one ``install_observability``.

- ``GET /metrics``: Prometheus text format. ``cliprs_http_requests_total{service,method,route,status}``
  and ``cliprs_http_request_duration_seconds{service,method,route}`` (route = the route template,
  e.g. ``/v1/areas/{area_id}``, never the raw path), plus what the service adds (collectors) and
  the process-wide metrics (search stages, process CPU and memory).
- ``X-Request-ID``: taken from the request when it is a sane token, else made; answered on every
  response and put in every log line of the request (`cliprs.logs`).
- JSON access lines (``CLIPRS_LOG_FORMAT=json``): method, route, path (no query string: it may
  carry secrets), status, ms, request id.
- URLs longer than ``CLIPRS_MAX_URL_BYTES`` (default 8192; path plus query) answer 414 with the
  one error shape; so do requests that uvicorn's HTTP parser itself refuses (400), instead of its
  plain-text ``Invalid HTTP request received.``
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.registry import Collector

from cliprs.logs import REQUEST_ID, accept_request_id, configure_logging, log_format
from cliprs.metrics import connect_request_id_publishing
from cliprs_http.errors import error_body

__all__ = [
    "DEFAULT_MAX_URL_BYTES",
    "forward_request_id",
    "install_observability",
    "observe_search_timings",
]

log = logging.getLogger("cliprs.access")

DEFAULT_MAX_URL_BYTES = 8192

# Process-wide: the search service records its stages here whichever app instance serves it.
SEARCH_STAGE_SECONDS = Histogram(
    "cliprs_search_stage_seconds",
    "Time spent in each stage of a search (embed, faiss, db, geocode)",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def observe_search_timings(timings_ms: Mapping[str, float]) -> None:
    """Record a search's stage timings (milliseconds, as `SearchResults.timings_ms` holds them)."""
    for stage, ms in timings_ms.items():
        if ms is not None:
            SEARCH_STAGE_SECONDS.labels(stage).observe(max(0.0, float(ms)) / 1000.0)


async def forward_request_id(request) -> None:
    """An httpx request hook: calls to other services carry the current request id."""
    rid = REQUEST_ID.get()
    if rid and "x-request-id" not in request.headers:
        request.headers["X-Request-ID"] = rid


def max_url_bytes() -> int:
    """``CLIPRS_MAX_URL_BYTES`` (core settings)."""
    from cliprs.settings import CoreSettings

    return CoreSettings().max_url_bytes


def _route_of(scope: dict) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return "<unmatched>"
    return path or "/"


class ObservabilityMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): request id, URL cap, metrics, access log."""

    def __init__(self, app, service: str, requests: Counter, latency: Histogram, max_url: int):
        self.app = app
        self.service = service
        self.requests = requests
        self.latency = latency
        self.max_url = max_url

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            # uvicorn configures its loggers after the app is built: switch to JSON now.
            configure_logging(self.service)
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = accept_request_id(_header(scope, b"x-request-id"))
        token = REQUEST_ID.set(rid)
        started = time.perf_counter()
        status = {"code": 500}
        rid_bytes = rid.encode()

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid_bytes))
                message = {**message, "headers": headers}
            await send(message)

        try:
            url_bytes = len(scope.get("raw_path") or scope["path"].encode()) + len(
                scope.get("query_string", b"")
            )
            if url_bytes > self.max_url:
                await _json_answer(
                    send_with_id,
                    414,
                    "too_large",
                    f"the URL is {url_bytes} bytes; the limit is {self.max_url}. Send long queries and "
                    "polygons in a POST body (e.g. POST /v1/search)",
                )
                scope["route"] = None
                return
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_of(scope)
            method = scope.get("method", "GET")
            self.requests.labels(self.service, method, route, str(status["code"])).inc()
            self.latency.labels(self.service, method, route).observe(elapsed)
            if log_format() == "json":
                log.info(
                    "%s %s %s",
                    method,
                    route,
                    status["code"],
                    extra={
                        "method": method,
                        "route": route,
                        "path": scope.get("path"),
                        "status": status["code"],
                        "ms": round(elapsed * 1000, 1),
                    },
                )
            REQUEST_ID.reset(token)


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            try:
                return value.decode("latin-1")
            except Exception:
                return None
    return None


async def _json_answer(send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _json_parser_errors() -> None:
    """Make uvicorn answer requests its HTTP parser refuses (a URL or headers over its buffer,
    malformed lines) in the one error shape instead of plain text. Process-wide, once."""
    body = json.dumps(
        error_body(
            "invalid_request",
            "the server could not read this HTTP request: is the URL or a header too long (over "
            "about 64 KiB)? Send long queries and polygons in a POST body",
        )
    ).encode()
    for module_name in ("uvicorn.protocols.http.h11_impl", "uvicorn.protocols.http.httptools_impl"):
        try:
            module = __import__(module_name, fromlist=["x"])
        except Exception:
            continue
        cls = getattr(module, "H11Protocol", None) or getattr(module, "HttpToolsProtocol", None)
        if cls is None or getattr(cls, "_cliprs_json_400", False):
            continue
        if cls.__name__ == "H11Protocol":

            def send_400(self, msg: str) -> None:
                import h11

                event = h11.Response(
                    status_code=400,
                    headers=[
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                    reason=b"Bad Request",
                )
                self.transport.write(self.conn.send(event))
                self.transport.write(self.conn.send(h11.Data(data=body)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
                self.transport.close()

        else:

            def send_400(self, msg: str) -> None:
                content = [
                    b"HTTP/1.1 400 Bad Request\r\n",
                    b"content-type: application/json\r\n",
                    f"content-length: {len(body)}\r\n".encode(),
                    b"connection: close\r\n",
                    b"\r\n",
                    body,
                ]
                self.transport.write(b"".join(content))
                self.transport.close()

        cls.send_400_response = send_400
        cls._cliprs_json_400 = True


def install_observability(
    app: FastAPI,
    service: str,
    collectors: Iterable[Collector] = (),
    *,
    max_url: int | None = None,
) -> CollectorRegistry:
    """``/metrics``, request ids, access logs and the URL cap for ``app``; ``collectors`` add the
    service's own gauges (index, queues, GPU). Call after the app's other middleware (it must be
    the outermost). Returns the app's registry."""
    registry = CollectorRegistry(auto_describe=True)
    requests = Counter(
        "cliprs_http_requests",
        "HTTP requests by route template and status",
        ["service", "method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "cliprs_http_request_duration_seconds",
        "HTTP request latency by route template",
        ["service", "method", "route"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )
    for collector in collectors:
        registry.register(collector)
    app.state.metrics_registry = registry
    _json_parser_errors()
    connect_request_id_publishing()  # Celery tasks sent while serving a request carry its id

    def metrics() -> Response:
        """Prometheus metrics of this process (text exposition format)."""
        return Response(generate_latest(registry) + generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        response_class=Response,
        tags=["health"],
        summary="Prometheus metrics",
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    # First, so a catch-all mount (the web page's static files at "/") does not shadow it.
    app.router.routes.insert(0, app.router.routes.pop())
    app.add_middleware(
        ObservabilityMiddleware,
        service=service,
        requests=requests,
        latency=latency,
        max_url=max_url if max_url is not None else max_url_bytes(),
    )
    return registry
