"""Servers on loopback for tests: a free port to start one on, an ASGI app served on one in a
thread, and waiting until a condition holds (a server answers, a row appears) instead of sleeping."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    condition: Callable[[], object],
    timeout_s: float,
    what: str,
    poll_s: float = 0.05,
    details: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` until it is true; raise TimeoutError naming ``what`` (and, when given,
    what ``details`` says then, e.g. log tails) if it never is."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}" + (f"\n{details()}" if details else ""))
        time.sleep(poll_s)


@contextmanager
def serving(app: Any, timeout_s: float = 60, **config: Any) -> Iterator[int]:
    """Serve the ASGI ``app`` with uvicorn on a free loopback port in a thread (off the main
    thread it installs no signal handlers; ``log_config=None`` leaves the process's logging as it
    is); yields the port once the server has started, and stops it afterwards. ``config``: more
    `uvicorn.Config` options (``http="httptools"``, ``lifespan="off"``...)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), timeout_s, f"uvicorn on port {port}")
    if not server.started:
        raise RuntimeError(f"the server on port {port} did not start")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)
