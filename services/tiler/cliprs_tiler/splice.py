"""The exact pixels of any box in a tile's pixel frame, spliced from the tiles it covers.

A window is stored as a pixel box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) in the frame of its
tile; the box may reach past the tile's edges (negative, or beyond the tile size), into the
neighbouring tiles of the same zoom. Columns wrap around the antimeridian; rows beyond the poles
and tiles the reader cannot supply are left black.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

Box = tuple[int, int, int, int]
TileReader = Callable[[int, int], Image.Image | None]  # (x, y) at the window's zoom -> image


def covering_tiles(z: int, x: int, y: int, box: Box, tile_size: int) -> list[tuple[int, int]]:
    """The (x, y) of every existing tile that the box overlaps, row by row."""
    x0, y0, x1, y1 = _checked(box)
    n = 1 << z
    out = []
    for dy in range(y0 // tile_size, (y1 - 1) // tile_size + 1):
        if not 0 <= y + dy < n:
            continue  # beyond the poles: there is no tile
        for dx in range(x0 // tile_size, (x1 - 1) // tile_size + 1):
            out.append(((x + dx) % n, y + dy))
    return out


def splice(z: int, x: int, y: int, box: Box, tile_size: int, read: TileReader) -> Image.Image:
    """The RGB pixels of ``box`` (in tile (z, x, y)'s pixel frame) assembled from the tiles under it.

    Tiles of another size than ``tile_size`` are resampled to it first, so a mixed cache still
    lines up; missing tiles leave their part black.
    """
    x0, y0, x1, y1 = _checked(box)
    n = 1 << z
    out = Image.new("RGB", (x1 - x0, y1 - y0))
    for dy in range(y0 // tile_size, (y1 - 1) // tile_size + 1):
        if not 0 <= y + dy < n:
            continue
        for dx in range(x0 // tile_size, (x1 - 1) // tile_size + 1):
            image = read((x + dx) % n, y + dy)
            if image is None:
                continue
            if image.size != (tile_size, tile_size):
                image = image.resize((tile_size, tile_size), Image.Resampling.BILINEAR)
            # The part of the box inside this tile, in the box's frame and in the tile's.
            left, top = max(x0, dx * tile_size), max(y0, dy * tile_size)
            right, bottom = min(x1, (dx + 1) * tile_size), min(y1, (dy + 1) * tile_size)
            ox, oy = dx * tile_size, dy * tile_size
            piece = image.convert("RGB").crop((left - ox, top - oy, right - ox, bottom - oy))
            out.paste(piece, (left - x0, top - y0))
    return out


def _checked(box: Box) -> Box:
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty pixel box {box}: need x0 < x1 and y0 < y1")
    return x0, y0, x1, y1
