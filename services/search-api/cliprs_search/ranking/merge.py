"""Merging overlapping windows that hit the same object into one result (the best-scoring one).

Windows overlap by design (a stride of a quarter window, several scales, several zooms), so one
boat lights up a cluster of windows. Greedy in score order: a hit joins the first kept hit it
overlaps enough, otherwise it is kept itself. Footprints are lon/lat boxes, which is exact for
windows (axis-aligned in Web Mercator) and fine for comparing areas at one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Group:
    index: int  # position of the kept hit in the candidate list
    merged: list[int] = field(default_factory=list)  # positions of the hits merged into it


def merge_overlapping(
    boxes: np.ndarray, overlap: float = 0.5, max_area_ratio: float = 4.0, limit: int | None = None
) -> list[Group]:
    """Groups of ``boxes`` ((n, 4) min_lon, min_lat, max_lon, max_lat, best first).

    Two boxes merge when their intersection covers at least ``overlap`` of the smaller one and
    the larger is at most ``max_area_ratio`` times the smaller. Stops once ``limit`` groups exist
    (later hits can then only join groups, which does not change what is returned).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    areas = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-18)
    groups: list[Group] = []
    kept = np.empty((0, 4))
    kept_area = np.empty(0)
    for i, b in enumerate(boxes):
        if len(groups):
            iw = np.minimum(kept[:, 2], b[2]) - np.maximum(kept[:, 0], b[0])
            ih = np.minimum(kept[:, 3], b[3]) - np.maximum(kept[:, 1], b[1])
            inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
            small = np.minimum(kept_area, areas[i])
            ratio = np.maximum(kept_area, areas[i]) / small
            hit = np.flatnonzero((inter >= overlap * small) & (ratio <= max_area_ratio) & (inter > 0))
            if hit.size:
                groups[hit[0]].merged.append(i)
                continue
        if limit is not None and len(groups) >= limit:
            continue
        groups.append(Group(i))
        kept = np.vstack([kept, b])
        kept_area = np.append(kept_area, areas[i])
    return groups
