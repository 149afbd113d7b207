"""Make ``cliprs_tiler`` importable when the package is not pip-installed (editable or not)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("cliprs_tiler") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
