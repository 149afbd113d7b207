"""Embedder throughput: the worker's whole pipeline end to end, the encoder alone, preprocessing per core.

    make bench-embed            (or: .venv/bin/python benchmarks/bench_embed.py --tiles 16)

Two models: the tiny generated CLIP the tests use, and a randomly initialised CLIP with
ViT-B/32's architecture (`transformers.CLIPConfig` defaults; random weights cost the same as
trained ones), the shape issue 12's goals are stated for. The device is picked as in
production (``CLIP_DEVICE``, default auto: the GPU when there is one), so the same command
measures a GPU host; the defaults are sized per device (CPU: 16 tiles, a few minutes on two
cores; GPU: 2,000 tiles).

Per model (and precision), one result object, printed and stored in
``benchmarks/results/embed.json`` (a list of runs; a new run replaces the one with the same
device, model and precision):

- ``windows_per_s``, end to end: `cliprs_embedder.pipeline.Embedder.drain` over ``--tiles``
  fetched tiles of a job in a throwaway PostGIS database, cached as JPEG (quality 90, as the
  study's Mapbox tiles are) or PNG: lease, decode in the process pool, resize/cut/normalise on
  the model's device, encode, write the vector chunks, the window rows (COPY), the statuses and
  the job's counters. A small job is drained first (every decoding process started, model
  warm); then up to three timed drains of fresh jobs (``--repeats``; auto stops once 20 s are
  measured): the rate is their median, the other figures the median drain's.
  ``device_busy_fraction`` is the job's ``stage_seconds`` resize + encode over the drain's wall
  time; ``cpu_cores_used`` is the CPU time of this process and its children (the decoding pool)
  over the same wall time.
- ``encoder_windows_per_s``: `ClipEncoder.embed_inputs` over model inputs already on the device
  (``--windows`` at least, and 3 s at least).
- ``preprocess_windows_per_s_per_core``: one thread (``torch.set_num_threads(1)``) decoding the
  cached files and running `ImageTransform.windows_input` (on the model's device:
  ``preprocess_device``); ``baseline_preprocess_windows_per_s_per_core``: the Pillow path the
  embedder ran before, on the same files and thread: decode, crop each window, Pillow bicubic to
  224 px (`ImageTransform.prepare`), `normalise`.
- ``cosine_min`` / ``cosine_median``: the vectors of the device preprocessing against those of
  `transformers`' image processor on the same windows of the bench tiles.
- ``goals``: issue 12's, for the device (GPU: >= 20,000 windows/s end to end, busy >= 0.8, at
  most 4 cores, stated for ViT-B/32; CPU: preprocessing >= 2x per core against the Pillow path,
  both measured in the same run). Issue 12's other CPU goal, end to end no slower than before,
  needs the old code to measure and is not judged here.
- ``commit``, ``dirty``, ``date``, ``load_average_start`` / ``load_average_end`` and
  ``non_default_settings`` (`machine_info.run_info`): what was measured, when, and how loaded
  the machine was.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Literal

import mercantile
import numpy as np
import torch
from machine_info import finish, run_info
from PIL import Image
from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings
from sqlalchemy import text
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip import CLIPImageProcessorPil

from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings
from cliprs.tilecache import tile_path
from cliprs.windows import window_plan
from cliprs_embedder.decode import Decoded, decode_tile, default_decode_workers
from cliprs_embedder.pipeline import Embedder
from cliprs_embedder.settings import EmbedderSettings
from cliprs_model import ClipEncoder, ModelInfo, load_encoder
from cliprs_model.encoder import available_cpus
from cliprs_model.loader import resolve_device
from cliprs_model.settings import ModelSettings
from cliprs_raster.render import render_tile, scene_stretch
from cliprs_raster.samples import demo_band_paths
from cliprs_testing.db import throwaway_database
from cliprs_testing.factories import make_area, make_job, make_tile
from cliprs_testing.model import default_cache_dir, tiny_clip
from cliprs_tools.cli import cli_config, run_cli

try:
    import psutil
except ImportError:  # not a declared dependency: fall back to /proc
    psutil = None

ROOT = Path(__file__).resolve().parents[1]
HELP = __doc__  # the whole module docstring is the --help text
STUDY_3090 = 200  # windows/s, the source study on one RTX 3090

GPU_GOALS = {"windows_per_s": 20_000, "device_busy_fraction": 0.8, "cpu_cores_used": 4}
CPU_PREPROCESS_SPEEDUP_GOAL = 2.0


# -- the machine -------------------------------------------------------------------------------


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict = {
        "cpu": cpu,
        "cores": available_cpus(),
        "logical_cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
    }
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = round(total / 2**30, 1)
        info["gpu_free_gb"] = round(free / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def short_path(name: str) -> str:
    """A path inside the repository as a relative one (results do not depend on the checkout)."""
    try:
        return str(Path(name).resolve().relative_to(ROOT))
    except ValueError:
        return name


# -- tiles -------------------------------------------------------------------------------------


def demo_images(size: int) -> list[Image.Image]:
    """Up to 24 distinct real tiles of the demo Sentinel-2 scene (about its 10 m pixels)."""
    z = 14 if size == 256 else 15
    bands = demo_band_paths()
    stretch = scene_stretch(bands)
    centre = mercantile.tile(-75.62, 37.67, z)
    images = []
    for dx in range(-3, 3):
        for dy in range(-2, 2):
            im = render_tile(bands, z, centre.x + dx, centre.y + dy, size, stretch=stretch)
            if im is not None:
                images.append(im.convert("RGB"))
    if not images:
        raise RuntimeError("the demo scene rendered no tiles")
    return images


def encode_image(image: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def tile_keys(n: int, z: int) -> list[tuple[int, int, int]]:
    """``n`` distinct tile keys at zoom ``z``, a square block over the demo scene."""
    centre = mercantile.tile(-75.62, 37.67, z)
    side = math.ceil(n**0.5)
    return [(z, centre.x + i % side, centre.y + i // side) for i in range(n)]


def seed_job(core: CoreSettings, keys: list[tuple[int, int, int]], files: list[bytes], ext: str) -> int:
    """An area whose tiles are fetched and cached (the distinct files reused in turn) and a job
    in the embedding state; returns the job's id."""
    source = f"bench-{uuid.uuid4().hex[:8]}"
    with sync_engine(core.database_url).begin() as conn:
        area = make_area(
            conn,
            name="bench-embed",
            bbox=(-75.7, 37.6, -75.5, 37.8),
            zooms=sorted({k[0] for k in keys}),
            source=source,
        )
        job = make_job(conn, area, state="embedding")
        for i, (z, x, y) in enumerate(keys):
            path = tile_path(core.tile_cache_dir, source, z, x, y, ext)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[i % len(files)])
            make_tile(conn, area, z, x, y, source=source, status="fetched")
    return job


# -- measurements ------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode(path: Path) -> Decoded:
    """A bench tile decoded as the pipeline decodes it (pixels and its windows' quality)."""
    s = EmbedderSettings()
    return decode_tile(path, tuple(s.window_scales), s.stride_ratio)


def preprocess_rates(encoder: ClipEncoder, paths: list[Path], boxes: np.ndarray, rounds: int = 2) -> dict:
    """Windows/s of one thread: the device path (decode, `windows_input`) and the Pillow path the
    embedder ran before (decode, crop, Pillow resize, normalise), over the same files."""
    transform, device = encoder.transform, encoder.device
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:

        def new_path(path: Path) -> tuple[int, float]:
            t0 = time.perf_counter()
            decoded = decode(path)
            decoded_at = time.perf_counter()
            assert decoded.pixels is not None, decoded.error
            with torch.inference_mode():
                n = len(transform.windows_input(encoder.upload(decoded.pixels), boxes))
            return n, decoded_at - t0

        def old_path(path: Path) -> int:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
            crops = [rgb.crop(tuple(b)) for b in boxes.tolist()]
            with torch.inference_mode():
                return len(transform.normalise(torch.from_numpy(transform.prepare(crops))))

        new_path(paths[0]), old_path(paths[0])  # warm-up (kernels, allocator, pinned memory)
        synchronize(device)
        # Two rounds each, alternating, so a change in the machine's load hits both paths alike.
        windows = old_windows = 0
        decode_s = new_s = new_cpu = old_s = 0.0
        for _ in range(rounds):
            cpu0, start = time.process_time(), time.perf_counter()
            for path in paths:
                n, d = new_path(path)
                windows, decode_s = windows + n, decode_s + d
            synchronize(device)
            new_s, new_cpu = new_s + time.perf_counter() - start, new_cpu + time.process_time() - cpu0
            start = time.perf_counter()
            old_windows += sum(old_path(p) for p in paths)
            old_s += time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    new, old = windows / new_s, old_windows / old_s
    return {
        "preprocess_windows_per_s_per_core": round(new, 1),
        "preprocess_device": device.type,
        "preprocess_windows_per_cpu_s": round(windows / new_cpu, 1) if new_cpu else None,
        "preprocess_decode_share": round(decode_s / new_s, 3),
        "baseline_preprocess_windows_per_s_per_core": round(old, 1),
        "preprocess_speedup": round(new / old, 2),
        "preprocess_tiles": len(paths),
    }


def cosine_to_processor(encoder: ClipEncoder, paths: list[Path], boxes: np.ndarray) -> dict:
    """Per-window cosine between the vectors of the device preprocessing and those of the
    `transformers` image processor, on the windows of the decoded bench tiles."""
    tiles = [decode(p).pixels for p in paths]
    ours = np.concatenate([v for _, v, _ in encoder.embed_tiles((i, t, boxes) for i, t in enumerate(tiles))])
    crops = [Image.fromarray(t).crop(tuple(b)) for t in tiles for b in boxes.tolist()]
    reference = encoder.image_processor(images=crops, return_tensors="pt")["pixel_values"].to(encoder.device)
    theirs = np.concatenate([v for _, v in encoder.embed_inputs([(0, reference)])])
    cos = np.sum(ours * theirs, axis=1)
    return {
        "cosine_min": round(float(cos.min()), 6),
        "cosine_median": round(float(np.median(cos)), 6),
        "cosine_windows": len(cos),
    }


def encoder_rate(
    encoder: ClipEncoder, path: Path, boxes: np.ndarray, windows: int, min_seconds: float = 3.0
) -> float:
    """Windows/s of `embed_inputs` over model inputs already on the device (one tile's windows,
    cycled; batches span the groups as in the pipeline): at least ``windows`` windows and at
    least ``min_seconds``, so a fast model is not timed over a fraction of a second."""
    pixels = decode(path).pixels
    with torch.inference_mode():
        inputs = encoder.transform.windows_input(encoder.upload(pixels), boxes)
    if encoder.device.type == "cuda":  # two full batches: kernels chosen, allocator sized
        warm = [(i, inputs) for i in range(math.ceil(2 * encoder.batch_size / len(inputs)))]
    else:
        warm = [(0, inputs[:8])]
    for _ in encoder.embed_inputs(warm):
        pass
    reps = max(1, math.ceil(windows / len(inputs)))
    n, start = 0, time.perf_counter()
    while n < windows or time.perf_counter() - start < min_seconds:
        n += sum(len(v) for _, v in encoder.embed_inputs((i, inputs) for i in range(reps)))
    return n / (time.perf_counter() - start)


def _proc_cpu_seconds(pid: int) -> float:
    """User + system seconds of one process from /proc (without its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(embedder: Embedder) -> dict[int, float]:
    """CPU seconds so far per process: this one, its children (the forkserver and the decoding
    pool, alive: rusage would not count them yet)."""
    me = os.getpid()
    out: dict[int, float] = {}
    if psutil is not None:
        procs = [psutil.Process(me), *psutil.Process(me).children(recursive=True)]
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:  # exited meanwhile
                pass
        return out
    pids = [me, *(embedder._pool._processes if embedder._pool is not None else {})]
    for pid in pids:
        try:
            out[pid] = _proc_cpu_seconds(pid)
        except OSError:
            pass
    return out


def drain_once(embedder: Embedder, core: CoreSettings, job: int) -> dict:
    """One timed `Embedder.drain` of a seeded job, with what the job and the processes recorded."""
    encoder = embedder.encoder
    encoder.clock.take()  # nothing of an earlier drain counts
    before = cpu_seconds(embedder)
    start = time.perf_counter()
    stats = embedder.drain(job)
    wall = time.perf_counter() - start
    after = cpu_seconds(embedder)
    with sync_engine(core.database_url).connect() as conn:
        job_row = (
            conn.execute(
                text("SELECT tiles_embedded, windows_embedded, stage_seconds FROM ingest_jobs WHERE id = :j"),
                {"j": job},
            )
            .mappings()
            .one()
        )
        rows = conn.execute(
            text(
                "SELECT count(*) FROM windows w JOIN area_tiles at ON at.tile_id = w.tile_id "
                "JOIN ingest_jobs j ON j.area_id = at.area_id WHERE j.id = :j"
            ),
            {"j": job},
        ).scalar_one()
    me = os.getpid()
    used = {pid: t - before.get(pid, 0.0) for pid, t in after.items()}
    stage = {k: round(float(v), 3) for k, v in sorted((job_row["stage_seconds"] or {}).items())}
    busy = stage.get("resize", 0.0) + stage.get("encode", 0.0)
    return {
        "windows_per_s": round(stats["windows"] / wall, 1),
        "e2e_seconds": round(wall, 2),
        "e2e_stats": {k: v for k, v in stats.items() if k != "windows_per_s"},
        "window_rows": rows,
        "job_counters": {
            "tiles_embedded": job_row["tiles_embedded"],
            "windows_embedded": job_row["windows_embedded"],
        },
        "stage_seconds": stage,
        "device_busy_fraction": round(busy / wall, 3),
        "cpu_cores_used": round(sum(used.values()) / wall, 2),
        "cpu_cores_used_main": round(used.get(me, 0.0) / wall, 2),
        "cpu_cores_used_children": round(sum(v for p, v in used.items() if p != me) / wall, 2),
    }


def end_to_end(
    encoder: ClipEncoder,
    db_url: str,
    settings: EmbedderSettings,
    keys: list[tuple[int, int, int]],
    files: list[bytes],
    ext: str,
    windows_per_tile: int,
    repeats: int,
    min_seconds: float = 20.0,
) -> dict:
    """Windows/s of `Embedder.drain` over a job of ``keys`` fetched tiles, after a warm-up drain.

    ``repeats`` drains of fresh jobs (0: up to 3, stopping once ``min_seconds`` are measured);
    the rate is their median, and the other figures are the median drain's."""
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        core = CoreSettings(database_url=db_url, data_dir=Path(tmp))
        embedder = Embedder(encoder, core, settings)
        try:
            # Warm-up: enough tiles to start every decoding process (each imports this script's
            # modules when it starts) and, on a GPU, to run two full batches.
            warm = max(1, embedder.decode_workers)
            if encoder.device.type == "cuda":
                warm = max(warm, math.ceil(2 * encoder.batch_size / windows_per_tile))
            embedder.drain(seed_job(core, tile_keys(warm, keys[0][0]), files, ext))
            runs: list[dict] = []
            while not runs or (
                len(runs) < repeats
                if repeats
                else len(runs) < 3 and sum(r["e2e_seconds"] for r in runs) < min_seconds
            ):
                runs.append(drain_once(embedder, core, seed_job(core, keys, files, ext)))
        finally:
            embedder.close()
    median = sorted(runs, key=lambda r: r["windows_per_s"])[(len(runs) - 1) // 2]
    return {
        **median,
        "windows_per_s": round(statistics.median(r["windows_per_s"] for r in runs), 1),
        "windows_per_s_runs": [r["windows_per_s"] for r in runs],
        "warmup_tiles": warm,
        "cpu_measured_with": "psutil" if psutil is not None else "/proc",
        "decode_workers": embedder.decode_workers,
    }


def goals(r: dict) -> dict:
    """Issue 12's goals for this run's device: each with its target, value and whether it is met."""

    def check(value: float | None, target: float, at_least: bool) -> dict:
        met = (
            None if value is None or math.isnan(value) else (value >= target if at_least else value <= target)
        )
        return {"target": ("≥ " if at_least else "≤ ") + f"{target:g}", "value": value, "met": met}

    if r["device"] == "cuda":
        out = {
            "windows_per_s": check(r.get("windows_per_s"), GPU_GOALS["windows_per_s"], True),
            "device_busy_fraction": check(
                r.get("device_busy_fraction"), GPU_GOALS["device_busy_fraction"], True
            ),
            "cpu_cores_used": check(r.get("cpu_cores_used"), GPU_GOALS["cpu_cores_used"], False),
        }
        out["note"] = "stated for ViT-B/32 on one H100/H200-class GPU"
        return out
    return {
        "preprocess_speedup": check(r.get("preprocess_speedup"), CPU_PREPROCESS_SPEEDUP_GOAL, True),
    }


# -- results -----------------------------------------------------------------------------------


def run_key(r: dict) -> tuple:
    return r.get("device"), r.get("model"), r.get("precision")


def store(path: Path, result: dict) -> None:
    """Add ``result`` to the list in ``path``, replacing a run with the same device, model and
    precision; written atomically."""
    runs: list[dict] = []
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            runs = loaded if isinstance(loaded, list) else []
        except json.JSONDecodeError:
            print(f"({path} was not valid JSON: replaced)")
    runs = [r for r in runs if run_key(r) != run_key(result)] + [result]
    runs.sort(key=lambda r: tuple(str(v) for v in run_key(r)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs, indent=2, ensure_ascii=False, default=float) + "\n")
    tmp.replace(path)


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


COLUMNS = [  # (title, width, key, format)
    ("model", 10, "model", ""),
    ("prec", 9, "precision", ""),
    ("batch", 6, "batch_size", "d"),
    ("prep w/s/core", 14, "preprocess_windows_per_s_per_core", ".1f"),
    ("PIL w/s/core", 13, "baseline_preprocess_windows_per_s_per_core", ".1f"),
    ("prep x", 7, "preprocess_speedup", ".2f"),
    ("encoder w/s", 12, "encoder_windows_per_s", ".1f"),
    ("e2e w/s", 10, "windows_per_s", ".1f"),
    ("busy", 6, "device_busy_fraction", ".2f"),
    ("cores", 6, "cpu_cores_used", ".2f"),
    ("cos min", 9, "cosine_min", ".4f"),
    ("cos med", 9, "cosine_median", ".4f"),
]


def header() -> str:
    return "".join(f"{t:<{w}}" if i < 2 else f"{t:>{w}}" for i, (t, w, _, _) in enumerate(COLUMNS))


def row(r: dict) -> str:
    cells = []
    for i, (_, w, key, spec) in enumerate(COLUMNS):
        v = r.get(key)
        cells.append(f"{v!s:<{w}}" if i < 2 else f"{fmt(v, spec):>{w}}")
    return "".join(cells)


# -- the command line --------------------------------------------------------------------------


def _digits_to_int(value: object) -> object:
    """``"512"`` (from the command line or the environment) as 512, for the tile-size choice."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


class EmbedBenchSettings(BaseSettings):
    """Embedder throughput: the whole pipeline end to end, the encoder alone, preprocessing per core."""

    model_config = cli_config(
        "BENCH_EMBED_", "python benchmarks/bench_embed.py", json_schema_extra={"description": HELP}
    )

    tiles: int = Field(0, ge=0, description="tiles end to end (default 16 on CPU, 2000 on GPU)")
    tile_size: Annotated[Literal[256, 512], BeforeValidator(_digits_to_int)] = Field(
        512, description="512 = the study's @2x"
    )
    tile_format: Literal["jpeg", "png"] = Field("jpeg", description="how the tiles are cached")
    jpeg_quality: int = Field(90, ge=1, le=100)
    fine: bool = Field(
        False, description="tiles at EMBEDDER_FINE_MIN_ZOOM, so the fine window scales are cut too"
    )
    windows: int = Field(
        0,
        ge=0,
        description="encoder-alone windows, at least (default 128 on CPU, 65536 on GPU; 3 s at least)",
    )
    preprocess_tiles: int = Field(0, ge=0, description="tiles for the per-core preprocessing (16 / 64)")
    cosine_tiles: int = Field(0, ge=0, description="tiles for the cosine to transformers (2 / 24)")
    models: str = "tiny,vit-b-32"
    precisions: str = Field("", description="e.g. fp32,bf16 (default: the device's auto)")
    batch_size: int = Field(0, ge=0, description="images per forward pass (0: CLIP_BATCH_SIZE / auto)")
    decode_workers: int = Field(0, ge=0, description="decoding processes (0: the embedder's default)")
    lease_tiles: int = Field(0, ge=0, description="tiles per work unit (0: EMBEDDER_LEASE_TILES)")
    repeats: int = Field(
        0, ge=0, description="timed drains end to end (0: up to 3, stopping once 20 s are measured)"
    )
    out: Path = Field(ROOT / "benchmarks/results/embed.json", description="where the JSON results go")


def build_encoder(
    name: str, device: torch.device, tiny_dir: Path, model_settings: ModelSettings
) -> ClipEncoder:
    if name == "tiny":
        return load_encoder(model_settings.model_copy(update={"model": str(tiny_dir), "fallback": False}))
    if name == "vit-b-32":
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig())  # the defaults are openai/clip-vit-base-patch32's shapes
        info = ModelInfo("ViT-B/32 (random weights)", "vit-b-32-random", str(device), 512)
        return ClipEncoder(
            model, CLIPTokenizer.from_pretrained(tiny_dir), CLIPImageProcessorPil(), device, info
        )
    raise ValueError(f"unknown model {name!r}: tiny or vit-b-32")


def run(options: EmbedBenchSettings) -> None:
    """Measure each model (and precision) and print a table; store each run as it completes."""
    model_settings = ModelSettings()
    device = resolve_device(model_settings.device)
    gpu = device.type == "cuda"
    torch.set_num_threads(model_settings.torch_threads or available_cpus())
    n_tiles = options.tiles or (2000 if gpu else 16)
    n_windows = options.windows or (65536 if gpu else 128)
    overrides = {
        k: v
        for k, v in (("decode_workers", options.decode_workers), ("lease_tiles", options.lease_tiles))
        if v
    }
    settings = EmbedderSettings().model_copy(update=overrides)
    z = settings.fine_min_zoom if options.fine else (14 if options.tile_size == 256 else 15)
    keys = tile_keys(n_tiles, z)
    boxes, _ = window_plan(options.tile_size, tuple(settings.scales_for_zoom(z)), settings.stride_ratio)
    ext = "jpg" if options.tile_format == "jpeg" else "png"
    tiny_dir = tiny_clip(default_cache_dir(ROOT))

    print(f"rendering the demo scene's tiles of {options.tile_size} px ...", flush=True)
    images = demo_images(options.tile_size)
    files = [encode_image(im, options.tile_format, options.jpeg_quality) for im in images]
    info = machine(device)
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, load {info['load_average']}, torch {info['torch']} "
        f"({info['torch_threads']} threads), device {device}"
        + (f", GPU {info['gpu']}" if info["gpu"] else "")
    )
    print(
        f"tiles: {n_tiles} at z{z}, {options.tile_format}"
        + (f" q{options.jpeg_quality}" if options.tile_format == "jpeg" else "")
        + f" ({len(files)} distinct, {sum(map(len, files)) / len(files) / 1024:.0f} KiB each on average); "
        f"windows: scales {settings.scales_for_zoom(z)}, stride {settings.stride_ratio} -> {len(boxes)} per tile; "
        f"work units of {settings.lease_tiles} tiles; encoder alone: {n_windows} windows\n",
        flush=True,
    )
    admin_url = os.environ.get("CLIPRS_TEST_DATABASE_URL", CoreSettings().database_url)
    results: list[dict] = []
    with ExitStack() as stack:
        try:
            db_url: str | None = stack.enter_context(throwaway_database(admin_url))
        except Exception as exc:  # no PostgreSQL on this host: still measure the rest
            print(f"(end to end skipped: no database at {admin_url.split('@')[-1]}: {type(exc).__name__})")
            db_url = None
        bench_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-embed-files-")))
        paths = []
        for i, data in enumerate(files):
            paths.append(bench_dir / f"{i}.{ext}")
            paths[-1].write_bytes(data)
        prep_paths = [
            paths[i % len(paths)] for i in range(options.preprocess_tiles or min(n_tiles, 64 if gpu else 16))
        ]
        cos_paths = paths[: options.cosine_tiles or (24 if gpu else 2)]

        print(header())
        print("-" * len(header()), flush=True)
        for name in options.models.split(","):
            encoder = build_encoder(name.strip(), device, tiny_dir, model_settings)
            for precision in (
                options.precisions.split(",") if options.precisions else [model_settings.precision]
            ):
                encoder.configure(
                    batch_size=options.batch_size or model_settings.batch_size,
                    precision=precision,
                    compile=model_settings.compile,
                )
                r: dict = {
                    **run_info(
                        options, product=model_settings.model_dump(mode="json", exclude_defaults=True)
                    ),
                    "device": device.type,
                    "machine": machine(device),
                    "model": name.strip(),
                    "model_name": short_path(encoder.info.requested),
                    "precision": str(encoder.precision or torch.float32).replace("torch.", ""),
                    "attention": getattr(encoder.model.config, "_attn_implementation", None),
                    "compiled": encoder.compiled,
                    "batch_size": encoder.batch_size,
                    "tiles": n_tiles,
                    "tile_size": options.tile_size,
                    "tile_format": options.tile_format,
                    "tile_zoom": z,
                    "windows_per_tile": len(boxes),
                    "windows": n_tiles * len(boxes),
                    "window_scales": settings.scales_for_zoom(z),
                    "stride_ratio": settings.stride_ratio,
                    "lease_tiles": settings.lease_tiles,
                }
                if options.tile_format == "jpeg":
                    r["jpeg_quality"] = options.jpeg_quality
                r.update(preprocess_rates(encoder, prep_paths, boxes))
                r.update(cosine_to_processor(encoder, cos_paths, boxes))
                r["encoder_windows_per_s"] = round(encoder_rate(encoder, paths[0], boxes, n_windows), 1)
                r["encoder_windows"] = n_windows
                if db_url:
                    r.update(
                        end_to_end(encoder, db_url, settings, keys, files, ext, len(boxes), options.repeats)
                    )
                else:
                    r["windows_per_s"] = None
                    r["decode_workers"] = settings.decode_workers or default_decode_workers(device.type)
                e2e = r.get("windows_per_s")
                r["e2e_over_encoder"] = round(e2e / r["encoder_windows_per_s"], 3) if e2e else None
                r = finish(r)
                r["goals"] = goals(r)
                r["settings"] = {**options.model_dump(mode="json"), "out": short_path(str(options.out))}
                store(options.out, r)
                results.append(r)
                print(row(r), flush=True)
    summary(results, options.out)


def summary(results: list[dict], out: Path) -> None:
    for r in results:
        unmet = [k for k, g in r["goals"].items() if isinstance(g, dict) and g["met"] is False]
        met = [k for k, g in r["goals"].items() if isinstance(g, dict) and g["met"]]
        print(
            f"\n{r['model']} ({r['precision']}): stage seconds {r.get('stage_seconds', {})} over "
            f"{fmt(r.get('e2e_seconds'), '.2f')} s; cores: main {fmt(r.get('cpu_cores_used_main'), '.2f')}, "
            f"decoding pool ({r.get('decode_workers')} workers) {fmt(r.get('cpu_cores_used_children'), '.2f')}; "
            f"load {r['machine']['load_average']} -> {r['load_average_end']}\n"
            f"  goals met: {', '.join(met) or 'none'}; not met: {', '.join(unmet) or 'none'}"
        )
        if r["model"] == "vit-b-32" and r.get("windows_per_s"):
            print(
                f"  ViT-B/32 end to end = {r['windows_per_s'] / STUDY_3090:.3f}x the study's ~{STUDY_3090}/s on one RTX 3090"
            )
    print(f"\nresults: {out}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; bad options are reported as one ``error: ...`` line (exit 2)."""
    return run_cli(EmbedBenchSettings, run, argv)


if __name__ == "__main__":
    sys.exit(main())
