"""Servers on loopback for tests: a free port to start one on, and waiting until a condition
holds (a server answers, a row appears) instead of sleeping."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


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
