"""Image to text (zero-shot classification) and "where in this tile is X" (heat map): the plain
computations behind ``POST /v1/classify`` and ``GET /v1/tiles/{source}/{z}/{x}/{y}/heatmap``."""

from __future__ import annotations

import numpy as np

from cliprs.errors import InvalidInput, TooLarge

# The 30 scene categories of the RSICD/UCM evaluation: the labels used when none are given.
DEFAULT_LABELS = [
    "stadium", "railwaystation", "mediumresidential", "sparseresidential", "viaduct", "center",
    "airport", "playground", "church", "square", "beach", "school", "mountain", "bareland",
    "resort", "baseballfield", "denseresidential", "river", "forest", "desert", "bridge",
    "storagetanks", "port", "commercial", "parking", "industrial", "meadow", "park", "pond",
    "farmland",
]  # fmt: skip


def prompts_for(
    labels: list[str], template: str, max_labels: int, max_chars: int
) -> tuple[list[str], list[str]]:
    """(cleaned labels, prompts): each label put into ``template`` at ``{label}``."""
    if "{label}" not in template:
        raise InvalidInput("the template must contain {label}, e.g. 'An aerial photograph of {label}'")
    cleaned = [label.strip() for label in labels]
    if len(cleaned) < 2:
        raise InvalidInput("give at least two labels to rank (or none, for the 30 standard scene categories)")
    if len(cleaned) > max_labels:
        raise TooLarge(f"{len(cleaned)} labels; the limit is {max_labels}")
    for i, label in enumerate(cleaned):
        if not label:
            raise InvalidInput(f"label {i} is empty")
        if len(label) > max_chars:
            raise TooLarge(f"label {i} has {len(label)} characters; the limit is {max_chars}")
    if len(set(cleaned)) != len(cleaned):
        raise InvalidInput("the labels repeat; give each label once")
    return cleaned, [template.replace("{label}", label) for label in cleaned]


def rank_labels(
    image: np.ndarray, texts: np.ndarray, labels: list[str], prompts: list[str], logit_scale: float
) -> list[dict]:
    """Labels best first, with their cosine to the image and CLIP's softmax probability."""
    scores = texts @ np.asarray(image, dtype=np.float32).reshape(-1)
    logits = logit_scale * (scores - scores.max())
    probs = np.exp(logits) / np.exp(logits).sum()
    order = np.argsort(-scores, kind="stable")
    return [
        {
            "label": labels[i],
            "prompt": prompts[i],
            "score": round(float(scores[i]), 6),
            "probability": round(float(probs[i]), 6),
            "rank": r + 1,
        }
        for r, i in enumerate(order.tolist())
    ]


def heat_grid(boxes: np.ndarray, scores: np.ndarray, tile_size: int, cells: int) -> list[list[float | None]]:
    """A ``cells`` x ``cells`` grid over the tile (rows top to bottom): each cell the mean score
    of the windows (pixel boxes x0, y0, x1, y1) that cover the cell's centre, None if none do.
    Smaller windows cover fewer cells, so they sharpen the map where they score high."""
    centres = (np.arange(cells) + 0.5) * tile_size / cells
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx = (centres[None, :] >= boxes[:, 0:1]) & (centres[None, :] < boxes[:, 2:3])  # (n, cells)
    cy = (centres[None, :] >= boxes[:, 1:2]) & (centres[None, :] < boxes[:, 3:4])
    cover = cy[:, :, None] & cx[:, None, :]  # (n, rows, cols)
    counts = cover.sum(axis=0)
    sums = np.tensordot(np.asarray(scores, dtype=np.float64), cover, axes=1)
    grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in grid]
