"""A real HTTP tile server on loopback that serves deterministic imagery and injects faults.

Used by the tiler's tests and by ``make bench-tiler``. It serves PNG tiles for
``/.../{z}/{x}/{y}.png`` and can be told, per path, to answer 429 with ``Retry-After: 1``, 500,
403 or 404, to send half the PNG (with a matching Content-Length, so only decoding can notice),
to drop the connection without a response, or to answer later than the client's timeout; each
fault either always or for its first N requests. ``latency_s`` delays every answer (a distant
CDN). Every request is recorded (time, address, full target) so tests can count what really went
over the wire.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from cliprs_testing.loopback import free_port

TILE_SIZE = 256


def make_tile(z: int, x: int, y: int, size: int = TILE_SIZE, fmt: str = "PNG") -> bytes:
    """A textured RGB tile, the same bytes for the same (z, x, y) every time."""
    rng = np.random.default_rng(z * 1_000_003 + x * 7919 + y)
    coarse = rng.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
    im = Image.fromarray(coarse, "RGB").resize((size, size), Image.Resampling.BILINEAR)
    noise = rng.integers(-12, 13, size=(size, size, 3))
    im = Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


@dataclass(frozen=True)
class Fault:
    kind: str  # "429", "500", "403", "404", "truncate", "reset", "slow"
    times: int | None = None  # the first N requests of the path; None: every request
    delay: float = 2.0  # for "slow"


@dataclass(frozen=True)
class Hit:
    t: float  # time.monotonic() when the request line arrived
    host: str  # the server address that received it
    path: str  # without the query
    target: str  # as sent, query included


class TileServer:
    """A threaded HTTP/1.1 tile server on one or more loopback addresses (one port)."""

    def __init__(
        self,
        hosts: tuple[str, ...] = ("127.0.0.1",),
        provider: Callable[[int, int, int], bytes | None] = make_tile,
        latency_s: float = 0.0,
    ):
        """``provider`` makes a tile's bytes (None: no tile there, a 404), e.g. real imagery from
        `cliprs_tiler.sources.RasterSource.render`; ``latency_s`` delays every answer."""
        self.port = free_port()
        self.hosts = hosts
        self.provider = provider
        self.latency_s = latency_s
        self.faults: dict[str, Fault] = {}
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        self._tiles: dict[tuple[int, int, int], bytes] = {}
        self.stopping = threading.Event()
        self._servers: list[_Server] = []

    @property
    def base(self) -> str:
        return f"http://{self.hosts[0]}:{self.port}"

    def start(self) -> TileServer:
        for host in self.hosts:
            server = _Server((host, self.port), _Handler)
            server.tiles = self  # type: ignore[attr-defined]
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        self.stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def tile(self, z: int, x: int, y: int) -> bytes | None:
        with self._lock:
            data = self._tiles.get((z, x, y))
        if data is None:  # rendered outside the lock, so recording hits never waits on it
            data = self.provider(z, x, y) or b""
            with self._lock:
                data = self._tiles.setdefault((z, x, y), data)
        return data or None

    def record(self, host: str, target: str) -> tuple[str, int]:
        path = urlsplit(target).path
        with self._lock:
            self.hits.append(Hit(time.monotonic(), host, path, target))
            return path, sum(1 for h in self.hits if h.path == path)

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for h in self.hits if h.path == path)

    def counts(self) -> Counter:
        with self._lock:
            return Counter(h.path for h in self.hits)


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default (5) drops bursts of connects, delaying them by a SYN retry
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # clients hanging up are expected
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        return None

    def _send(self, status: int, body: bytes, content_type: str = "text/plain", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        srv: TileServer = self.server.tiles  # type: ignore[attr-defined]
        path, n = srv.record(self.server.server_address[0], self.path)
        fault = srv.faults.get(path)
        kind = fault.kind if fault and (fault.times is None or n <= fault.times) else None
        full_url = f"http://{self.headers.get('Host')}{self.path}"
        try:
            z, x, y = (int(p) for p in path.removesuffix(".png").split("/")[-3:])
        except ValueError:
            self._send(404, b"not a tile path")
            return
        if kind == "reset":  # drop the connection, no response at all (RST)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if kind == "slow":
            if srv.stopping.wait(fault.delay):
                return
        elif srv.latency_s and srv.stopping.wait(srv.latency_s):
            return
        if kind in ("404", "403"):
            self._send(int(kind), f"no such tile: {full_url}".encode())
        elif kind == "500":
            self._send(500, f"internal error while rendering {full_url}".encode())
        elif kind == "429":
            self._send(429, b"slow down", headers={"Retry-After": "1"})
        elif (data := srv.tile(z, x, y)) is None:
            self._send(404, f"no such tile: {full_url}".encode())
        elif kind == "truncate":
            self._send(200, data[: len(data) // 2], "image/png")
        else:
            try:
                self._send(200, data, "image/png")
            except OSError:  # the client gave up (timeout) before we answered
                self.close_connection = True
