"""A small generated sample in the RSICD layout, so `make eval` and `make finetune` run out of the box.

The images are procedural textures (sand against sea for "beach", blue ellipses on grass for
"pond", ...), not photographs: figures measured on them only show that the tools work. Real
RSICD / UCM-captions data must be placed in a folder (see the README).

Layout written (the same as RSICD's): ``root/dataset_rsicd.json`` and ``root/images/{category}_{i}.png``,
with train / val / test splits; as a classification set each image's label is its name prefix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cliprs.fsutil import atomic_write_bytes

SIZE = 96

Painter = Callable[[np.random.Generator], Image.Image]


def _noise(rng: np.random.Generator, colour, amount: float = 18, blur: float = 1.0) -> Image.Image:
    base = np.array(colour, dtype=np.float32)[None, None, :] + rng.normal(0, amount, (SIZE, SIZE, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    return img.filter(ImageFilter.GaussianBlur(blur)) if blur else img


def _jitter(rng: np.random.Generator, colour, spread: int = 20) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in colour)


def _beach(rng):
    img = _noise(rng, _jitter(rng, (30, 90, 160)))
    sand = _noise(rng, _jitter(rng, (232, 212, 170)), 10)
    mask = Image.new("L", (SIZE, SIZE))
    edge = int(rng.integers(35, 60))
    ImageDraw.Draw(mask).polygon(
        [(0, 0)] + [(edge + int(8 * np.sin(y / 9)), y) for y in range(0, SIZE + 4, 4)] + [(0, SIZE)],
        fill=255,
    )
    img.paste(sand, mask=mask)
    return img


def _forest(rng):
    return _noise(rng, _jitter(rng, (35, 80, 35)), 30, 2.0)


def _meadow(rng):
    return _noise(rng, _jitter(rng, (125, 175, 80)), 10, 0.5)


def _bareland(rng):
    return _noise(rng, _jitter(rng, (150, 120, 90)), 22, 1.5)


def _desert(rng):
    yy = np.arange(SIZE)[:, None] + np.zeros((1, SIZE))
    phase = rng.uniform(0, 6.28)
    dunes = 18 * np.sin(yy / rng.uniform(5, 9) + phase + np.arange(SIZE)[None, :] / 20)
    base = np.array(_jitter(rng, (215, 185, 125)), dtype=np.float32) + dunes[..., None]
    return Image.fromarray(np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8))


def _farmland(rng):
    img = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(img)
    step = int(rng.integers(16, 32))
    for x in range(0, SIZE, step):
        for y in range(0, SIZE, step):
            colour = [(90, 150, 60), (170, 140, 80), (120, 170, 70), (190, 170, 100)][int(rng.integers(4))]
            draw.rectangle([x, y, x + step - 2, y + step - 2], fill=_jitter(rng, colour, 10))
    return img


def _river(rng):
    img = _meadow(rng)
    draw = ImageDraw.Draw(img)
    offset, amp = rng.uniform(30, 60), rng.uniform(5, 15)
    pts = [(x, offset + amp * np.sin(x / 12)) for x in range(-5, SIZE + 6, 3)]
    draw.line(pts, fill=_jitter(rng, (40, 90, 150)), width=int(rng.integers(10, 18)))
    return img


def _pond(rng):
    img = _meadow(rng)
    cx, cy, r = rng.integers(35, 60), rng.integers(35, 60), rng.integers(18, 30)
    ImageDraw.Draw(img).ellipse(
        [cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], fill=_jitter(rng, (40, 85, 120))
    )
    return img


def _parking(rng):
    img = _noise(rng, _jitter(rng, (105, 105, 105), 10), 6, 0)
    draw = ImageDraw.Draw(img)
    for y in range(8, SIZE - 8, 20):
        for x in range(4, SIZE - 8, 9):
            if rng.random() < 0.8:
                colour = tuple(int(c) for c in rng.integers(30, 255, 3))
                draw.rectangle([x, y, x + 5, y + 10], fill=colour)
    return img


def _houses(rng, count: int, ground):
    img = _noise(rng, ground, 10, 0.5)
    draw = ImageDraw.Draw(img)
    for _ in range(count):
        x, y = rng.integers(0, SIZE - 10, 2)
        roof = [(170, 70, 60), (120, 120, 130), (200, 190, 180)][int(rng.integers(3))]
        draw.rectangle([x, y, x + rng.integers(6, 11), y + rng.integers(6, 11)], fill=_jitter(rng, roof, 15))
    return img


def _denseresidential(rng):
    return _houses(rng, 70, (110, 110, 110))


def _sparseresidential(rng):
    return _houses(rng, 6, (110, 160, 80))


def _storagetanks(rng):
    img = _noise(rng, _jitter(rng, (150, 150, 140), 10), 8, 0.5)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        x, y, r = *rng.integers(12, SIZE - 12, 2), rng.integers(6, 12)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(235, 235, 230), outline=(90, 90, 90))
    return img


# category -> (painter, caption phrases); categories use RSICD's names.
CATEGORIES: dict[str, tuple[Painter, list[str]]] = {
    "beach": (
        _beach,
        ["a sandy beach next to the blue sea", "yellow sand along the sea shore", "a beach and water"],
    ),
    "forest": (_forest, ["a dense dark green forest", "many trees in a forest", "thick woods"]),
    "meadow": (_meadow, ["a light green meadow", "a large grassland", "an open field of grass"]),
    "bareland": (_bareland, ["brown bare land", "a piece of bare brown soil", "empty bare ground"]),
    "desert": (_desert, ["a yellow desert with dunes", "sand dunes in a desert", "a dry desert"]),
    "farmland": (
        _farmland,
        ["farmland divided into square fields", "many rectangular fields", "crop fields"],
    ),
    "river": (
        _river,
        ["a blue river winding through green land", "a river across the grass", "a curved river"],
    ),
    "pond": (_pond, ["a pond surrounded by green grass", "a small round pond", "blue water of a pond"]),
    "parking": (
        _parking,
        ["many cars in a parking lot", "a grey parking lot full of cars", "parked cars in rows"],
    ),
    "denseresidential": (
        _denseresidential,
        ["many houses close to each other", "a dense residential area", "crowded buildings"],
    ),
    "sparseresidential": (
        _sparseresidential,
        ["a few houses on green land", "a sparse residential area", "scattered houses"],
    ),
    "storagetanks": (
        _storagetanks,
        ["white round storage tanks", "several storage tanks", "round white tanks"],
    ),
}

# Five distinct sentences per image, as RSICD gives (its duplicates aside).
FRAMES = ("{}", "there is {}", "an aerial view of {}", "this image shows {}", "{} seen from above")

SPLITS = ("train",) * 5 + ("val", "test", "test")  # per category, in image order


def write_sample(root: Path, per_category: int = len(SPLITS), seed: int = 0) -> Path:
    """Write the sample under ``root`` (once; kept if already there); returns the JSON path."""
    root = Path(root)
    json_path = root / "dataset_rsicd.json"
    if json_path.exists():
        return json_path
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for category, (paint, phrases) in CATEGORIES.items():
        for i in range(per_category):
            name = f"{category}_{i + 1}.png"
            paint(rng).save(root / "images" / name)
            sentences = [
                frame.format(phrases[(i + j) % len(phrases)]) + " ." for j, frame in enumerate(FRAMES)
            ]
            entries.append(
                {
                    "filename": name,
                    "split": SPLITS[i % len(SPLITS)],
                    "sentences": [{"raw": s} for s in sentences],
                }
            )
    atomic_write_bytes(
        json_path, json.dumps({"dataset": "cliprs-sample", "images": entries}, indent=1).encode()
    )
    return json_path
