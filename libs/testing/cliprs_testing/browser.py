"""Headless Chromium for the browser tests and the web benchmark: Debian's package, never a
browser that Playwright downloads."""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("CLIPRS_CHROMIUM", "/usr/bin/chromium")
# No sandbox (root in a container), no GPU (WebGL on the CPU), nothing that reaches the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
