"""The tiny generated CLIP the tests and benchmarks run on (real vocabulary, random weights)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir(root: Path) -> Path:
    """Where generated models and downloaded vocabularies are kept: ``CLIPRS_CACHE_DIR`` or ``root/.cache``."""
    return Path(os.environ.get("CLIPRS_CACHE_DIR") or root / ".cache")


def tiny_clip(cache_dir: Path) -> Path:
    """The tiny CLIP's folder, built once under ``cache_dir``."""
    from cliprs_model.tiny import build_tiny_clip  # torch: only when a test or benchmark needs it

    return build_tiny_clip(cache_dir / "models/tiny-test", vocab_cache=cache_dir / "wheels")
