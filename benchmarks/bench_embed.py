"""Embedder throughput: windows per second end to end and for the encoder alone.

    make bench-embed            (or: .venv/bin/python benchmarks/bench_embed.py --tiles 16)

Two models: the tiny generated CLIP the tests use, and a randomly initialised CLIP with
ViT-B/32's architecture (`transformers.CLIPConfig` defaults; random weights cost the same as
trained ones), so the figures compare with the study's ~200 windows/s on one RTX 3090 and the
target of >= 3,000 windows/s end to end on one datacentre GPU. The device is picked as in
production (``CLIP_DEVICE``, default auto: the GPU when there is one), so the same command
measures a GPU host.

- encoder alone: windows already resized to 224 px (uint8) through `ClipEncoder.embed_groups`:
  staging, host-to-device copy, normalisation, the image tower, L2 normalisation, copy back.
- end to end: `cliprs_embedder.pipeline.embed_tiles` over real Sentinel-2 tiles in the tile
  cache and a throwaway PostGIS database: read and decode each tile, cut its windows, resize
  them, encode, write the vector chunk, the window rows and the tile status. Tasks of
  ``--tiles-per-task`` tiles, as the tiler queues them (``TILER_EMBED_BATCH``).
- preprocessing alone: decode, cut, resize on the preprocessing threads, against
  `transformers`' image processor on the same crops (what the embedder used before).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Literal

import mercantile
import numpy as np
import torch
from PIL import Image
from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip import CLIPImageProcessorPil

from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings
from cliprs.tilecache import tile_path
from cliprs_embedder.pipeline import cut_tile, embed_tiles
from cliprs_embedder.settings import EmbedderSettings
from cliprs_model import ClipEncoder, ImageTransform, ModelInfo, load_encoder
from cliprs_model.encoder import available_cpus
from cliprs_model.loader import resolve_device
from cliprs_model.settings import ModelSettings
from cliprs_testing.db import throwaway_database
from cliprs_testing.factories import make_area, make_tile
from cliprs_testing.model import default_cache_dir, tiny_clip
from cliprs_tiler.render import render_tile, scene_stretch
from cliprs_tools.cli import cli_config, run_cli
from cliprs_tools.demo import demo_band_paths

ROOT = Path(__file__).resolve().parents[1]
HELP = __doc__  # the whole module docstring is the --help text
STUDY_3090 = 200  # windows/s, the source study on one RTX 3090
GPU_TARGET = 3000  # windows/s end to end, one modern datacentre GPU


def machine(device: torch.device) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        gpu = f", GPU {torch.cuda.get_device_name(device)} ({total / 2**30:.0f} GiB, {free / 2**30:.0f} free)"
    return (
        f"{cpu}, {available_cpus()} CPUs available, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, device {device}{gpu}"
    )


def demo_tiles(n: int, size: int) -> list[tuple[tuple[int, int, int], Image.Image]]:
    """``n`` tile keys over the demo scene; the pixels of up to 24 real tiles, reused."""
    z = 14 if size == 256 else 15  # about the scene's 10 m pixels either way
    bands = demo_band_paths()
    stretch = scene_stretch(bands)
    centre = mercantile.tile(-75.62, 37.67, z)
    distinct: list[Image.Image] = []
    for dx in range(-3, 3):
        for dy in range(-2, 2):
            im = render_tile(bands, z, centre.x + dx, centre.y + dy, size, stretch=stretch)
            if im is not None:
                distinct.append(im)
    side = int(np.ceil(n**0.5))
    keys = [(z, centre.x + i % side, centre.y + i // side) for i in range(n)]
    return [(k, distinct[i % len(distinct)]) for i, k in enumerate(keys)]


def vit_b32_random(device: torch.device, tiny_dir: Path) -> ClipEncoder:
    """ViT-B/32's architecture with random weights (and the real vocabulary)."""
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig())  # the defaults are openai/clip-vit-base-patch32's shapes
    info = ModelInfo("ViT-B/32 (random weights)", "vit-b-32-random", str(device), 512)
    return ClipEncoder(model, CLIPTokenizer.from_pretrained(tiny_dir), CLIPImageProcessorPil(), device, info)


def seed(core: CoreSettings, tiles: list[tuple[tuple[int, int, int], Image.Image]]) -> list[int]:
    """Cache the tiles as PNG and record them as fetched; returns their ids."""
    source = f"bench-{uuid.uuid4().hex[:6]}"
    ids = []
    with sync_engine(core.database_url).begin() as conn:
        area = make_area(conn, name="bench", bbox=(-75.7, 37.6, -75.5, 37.8), zooms=[14], source=source)
        for (z, x, y), image in tiles:
            path = tile_path(core.tile_cache_dir, source, z, x, y, "png")
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            ids.append(make_tile(conn, area, z, x, y, source=source, status="fetched"))
    return ids


def encoder_rate(encoder: ClipEncoder, pixels: np.ndarray, windows: int) -> float:
    """Windows/s of the encoder over ``windows`` prepared windows (cycled from ``pixels``)."""
    encoder.embed_pixels(pixels[: min(len(pixels), 8)])  # warm-up (kernels, allocator)
    reps = int(np.ceil(windows / len(pixels)))
    groups = ((i, pixels) for i in range(reps))
    start = time.perf_counter()
    n = sum(len(v) for _, v in encoder.embed_groups(groups))
    return n / (time.perf_counter() - start)


def end_to_end_rate(
    encoder: ClipEncoder, tiles: list, db_url: str, settings: EmbedderSettings, per_task: int
) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        core = CoreSettings(database_url=db_url, data_dir=Path(tmp))
        ids = seed(core, tiles)
        embed_tiles(seed(core, tiles[:1]), encoder, core, settings)  # warm-up
        start = time.perf_counter()
        windows = 0
        for i in range(0, len(ids), per_task):
            windows += embed_tiles(ids[i : i + per_task], encoder, core, settings)["windows"]
        return windows / (time.perf_counter() - start)


def preprocessing_rates(tiles: list, settings: EmbedderSettings, workers: int) -> tuple[float, float, int]:
    """(fast path: decode + cut + resize on the threads, transformers' processor on the crops,
    threads): what the embedder does now, and what it did per image before."""
    processor = CLIPImageProcessorPil()  # ViT-B/32's configuration, the tiny model's too
    transform = ImageTransform.from_processor(processor)
    threads = workers or available_cpus()
    with tempfile.TemporaryDirectory(prefix="bench-prep-") as tmp:
        pngs = []
        for i, (_, image) in enumerate(tiles):
            pngs.append(Path(tmp) / f"{i}.png")
            image.save(pngs[-1])

        def prepare(path: Path) -> int:
            with Image.open(path) as im:
                _, crops = cut_tile(im, settings.window_scales, settings.stride_ratio)
            return len(transform.prepare(crops))

        with ThreadPoolExecutor(threads) as pool:
            start = time.perf_counter()
            windows = sum(pool.map(prepare, pngs))
            fast = windows / (time.perf_counter() - start)
    crops = [c for _, im in tiles[:4] for c in cut_tile(im, settings.window_scales, settings.stride_ratio)[1]]
    start = time.perf_counter()
    processor(images=crops, return_tensors="pt")
    slow = len(crops) / (time.perf_counter() - start)
    return fast, slow, threads


def _digits_to_int(value: object) -> object:
    """``"512"`` (from the command line or the environment) as 512, for the tile-size choice."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


class EmbedBenchSettings(BaseSettings):
    """Embedder throughput: windows per second end to end and for the encoder alone."""

    model_config = cli_config(
        "BENCH_EMBED_", "python benchmarks/bench_embed.py", json_schema_extra={"description": HELP}
    )

    tiles: int = Field(0, ge=0, description="tiles end to end (default 8 on CPU, 400 on GPU)")
    tile_size: Annotated[Literal[256, 512], BeforeValidator(_digits_to_int)] = Field(
        512, description="512 = the study's @2x"
    )
    tiles_per_task: int = Field(0, ge=0, description="default 8 on CPU, 64 on GPU")
    windows: int = Field(0, ge=0, description="encoder-alone windows (default 128 / 16384)")
    models: str = "tiny,vit-b-32"
    precisions: str = Field("", description="e.g. fp32,bf16 (default: the device's auto)")


def run(options: EmbedBenchSettings) -> None:
    """Measure preprocessing, then each model's encoder and end-to-end rates, and print them."""
    model_settings = ModelSettings()
    device = resolve_device(model_settings.device)
    gpu = device.type == "cuda"
    n_tiles = options.tiles or (400 if gpu else 8)
    per_task = options.tiles_per_task or (64 if gpu else 8)
    n_windows = options.windows or (16384 if gpu else 128)
    tiny_dir = tiny_clip(default_cache_dir(ROOT))
    settings = EmbedderSettings()
    print(f"machine: {machine(device)}")
    print(f"rendering {n_tiles} Sentinel-2 demo tiles of {options.tile_size} px ...", flush=True)
    tiles = demo_tiles(n_tiles, options.tile_size)
    per_tile = len(cut_tile(tiles[0][1], settings.window_scales, settings.stride_ratio)[0])
    print(
        f"windows: scales {settings.window_scales}, stride {settings.stride_ratio} -> {per_tile} per tile; "
        f"end to end: {n_tiles} tiles in tasks of {per_task}; encoder alone: {n_windows} windows\n"
    )
    fast, slow, threads = preprocessing_rates(tiles[:16], settings, model_settings.preprocess_workers)
    print(
        f"preprocessing alone (decode, cut, resize on {threads} threads): {fast:.0f} windows/s; "
        f"transformers' image processor on the same crops: {slow:.0f} windows/s ({fast / slow:.1f}x)\n"
    )
    header = (
        f"{'model':<26}{'precision':<10}{'batch':>6}{'encoder w/s':>13}{'end-to-end w/s':>16}{'e2e/enc':>9}"
    )
    print(header)
    print("-" * len(header))
    admin_url = os.environ.get("CLIPRS_TEST_DATABASE_URL", CoreSettings().database_url)
    results: dict[str, float] = {}
    with ExitStack() as stack:
        try:
            db_url = stack.enter_context(throwaway_database(admin_url))
        except Exception as exc:  # no PostgreSQL on this host: still measure the encoder
            print(f"(end to end skipped: no database at {admin_url.split('@')[-1]}: {type(exc).__name__})")
            db_url = None
        for name in options.models.split(","):
            if name == "tiny":
                encoder = load_encoder(ModelSettings(model=str(tiny_dir)))
            else:
                encoder = vit_b32_random(device, tiny_dir)
            for precision in options.precisions.split(",") if options.precisions else ["auto"]:
                encoder.configure(
                    batch_size=model_settings.batch_size,
                    precision=precision,
                    preprocess_workers=model_settings.preprocess_workers,
                )
                crops = cut_tile(tiles[0][1], settings.window_scales, settings.stride_ratio)[1]
                enc = encoder_rate(encoder, encoder.prepare(crops), n_windows)
                e2e = end_to_end_rate(encoder, tiles, db_url, settings, per_task) if db_url else float("nan")
                label = str(encoder.precision or torch.float32).replace("torch.", "")
                title = "tiny generated CLIP" if name == "tiny" else encoder.info.requested
                print(
                    f"{title:<26}{label:<10}{encoder.batch_size:>6}{enc:>13.1f}{e2e:>16.1f}{e2e / enc:>9.2f}",
                    flush=True,
                )
                if name != "tiny":
                    results[label] = e2e
            encoder.close()
    if results and not np.isnan(max(results.values())):
        best = max(results.values())
        print(
            f"\nViT-B/32 end to end: {best:.1f} windows/s = {best / STUDY_3090:.3f}x the study's "
            f"~{STUDY_3090}/s on one RTX 3090 and {best / GPU_TARGET:.4f}x the {GPU_TARGET}/s GPU target"
            + ("" if gpu else " (a CPU run: both references are GPU figures)")
        )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; bad options are reported as one ``error: ...`` line (exit 2)."""
    return run_cli(EmbedBenchSettings, run, argv)


if __name__ == "__main__":
    sys.exit(main())
