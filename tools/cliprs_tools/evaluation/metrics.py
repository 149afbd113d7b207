"""Metric functions over score matrices: plain numpy, no model, testable by hand.

Conventions: rows are queries, columns candidates, higher score is better. Ranks are 0-based
positions in a stable descending sort (ties keep column order), so a target at rank ``r`` is
"in the top k" exactly when ``r < k``. Accuracies and recalls are percentages; Hamming loss is
a fraction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLASSIFICATION_KS = (1, 3, 5, 10)
RETRIEVAL_KS = (1, 5, 10)


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Column indices of each row, best first (stable for ties)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")


def column_ranks(scores: np.ndarray) -> np.ndarray:
    """``ranks[i, j]``: 0-based rank of column ``j`` in row ``i``."""
    order = rank_order(scores)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :].repeat(order.shape[0], 0), axis=1)
    return ranks


def multi_hot(labels: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    """Boolean (n, n_classes) target matrix from per-row label lists."""
    target = np.zeros((len(labels), n_classes), dtype=bool)
    for i, row in enumerate(labels):
        target[i, list(row)] = True
    return target


def best_target_rank(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """For each row, the rank of its best-ranked true column."""
    ranks = column_ranks(scores)
    return np.where(target, ranks, np.iinfo(ranks.dtype).max).min(axis=1)


def topk_accuracy(scores: np.ndarray, target: np.ndarray, ks: Sequence[int] = CLASSIFICATION_KS) -> dict:
    """Percent of rows with a true label among their ``k`` best columns, for each ``k``."""
    best = best_target_rank(scores, target)
    return {int(k): float(100.0 * np.mean(best < k)) for k in ks}


def topk_predictions(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean (n, c): each row's ``k`` best columns predicted positive."""
    pred = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(pred, rank_order(scores)[:, :k], True, axis=1)
    return pred


def multilabel_metrics(scores: np.ndarray, target: np.ndarray, k: int) -> dict:
    """Macro precision, recall and F1 (percent) and Hamming loss with the top ``k`` predicted.

    Same definitions as scikit-learn's ``precision_recall_fscore_support(average="macro",
    zero_division=0)`` on indicator matrices: per category, then averaged over every category
    scored, a category with nothing predicted (or nothing true) counting 0.
    """
    pred = topk_predictions(scores, k)
    tp = (pred & target).sum(0).astype(np.float64)
    fp = (pred & ~target).sum(0)
    fn = (~pred & target).sum(0)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "precision": float(100.0 * precision.mean()),
        "recall": float(100.0 * recall.mean()),
        "f1": float(100.0 * f1.mean()),
        "hamming_loss": float(np.mean(pred != target)),
    }


def per_class_accuracy(scores: np.ndarray, target: np.ndarray, k: int = 1) -> np.ndarray:
    """Per category: percent of its images with it among their top ``k`` (NaN if it has none)."""
    hit = (column_ranks(scores) < k) & target
    counts = target.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, 100.0 * hit.sum(0) / counts, np.nan)


def retrieval_ranks(similarity: np.ndarray, text_owner: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the right answers in both directions.

    ``similarity`` is (n_images, n_texts); ``text_owner[j]`` is the image of caption ``j``.
    Text -> image: rank of the caption's image among all images. Image -> text: rank of the
    best-ranked of the image's own captions among all captions.
    """
    similarity = np.asarray(similarity)
    owner = np.asarray(text_owner)
    n_images, n_texts = similarity.shape
    t2i_target = np.zeros((n_texts, n_images), dtype=bool)
    t2i_target[np.arange(n_texts), owner] = True
    i2t_target = t2i_target.T
    return best_target_rank(similarity.T, t2i_target), best_target_rank(similarity, i2t_target)


def retrieval_metrics(
    similarity: np.ndarray, text_owner: Sequence[int], ks: Sequence[int] = RETRIEVAL_KS
) -> dict:
    """R@k (percent) text -> image and image -> text, and mR, their mean over both directions."""
    t2i, i2t = retrieval_ranks(similarity, text_owner)
    out = {"text_to_image": {int(k): float(100.0 * np.mean(t2i < k)) for k in ks}}
    out["image_to_text"] = {int(k): float(100.0 * np.mean(i2t < k)) for k in ks}
    out["mR"] = float(np.mean([*out["text_to_image"].values(), *out["image_to_text"].values()]))
    return out
