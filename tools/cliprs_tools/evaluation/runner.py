"""Run one model over the evaluation sets: embed with `ClipEncoder` (the embedder's own code
path), score, compute the metrics and list the queries it got wrong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cliprs_model import ClipEncoder
from cliprs_tools.evaluation import metrics
from cliprs_tools.evaluation.datasets import PROMPT, CaptionSet, ClassificationSet

TOP_SHOWN = 5  # candidates listed with each failure


@dataclass
class ModelReport:
    """Everything measured for one model; ``as_dict`` is what results.json holds."""

    model: str
    info: dict
    classification: dict | None = None
    retrieval: dict | None = None
    failures: dict[str, list[dict]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def embed_image_files(encoder: ClipEncoder, paths: Sequence[Path], batch_size: int = 0) -> np.ndarray:
    """Unit vectors of image files, decoded one batch at a time to bound memory (``batch_size``
    0: the encoder's own, i.e. ``CLIP_BATCH_SIZE``)."""
    batch_size = batch_size or encoder.batch_size
    parts = []
    for i in range(0, len(paths), batch_size):
        images = []
        for p in paths[i : i + batch_size]:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        parts.append(encoder.embed_images(images, batch_size=batch_size))
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)


def embed_texts(encoder: ClipEncoder, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    parts = [encoder.embed_texts(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)


def _display_path(path: Path, root: Path | None) -> str:
    try:
        return str(path.relative_to(root)) if root else str(path)
    except ValueError:
        return str(path)


def evaluate_classification(
    encoder: ClipEncoder,
    data: ClassificationSet,
    prompt: str = PROMPT,
    ks: Sequence[int] = metrics.CLASSIFICATION_KS,
    batch_size: int = 0,
    root: Path | None = None,
) -> tuple[dict, list[dict]]:
    """Zero-shot scene classification: each image against one prompt per category."""
    ks = [k for k in ks if k <= len(data.categories)]
    text_vecs = embed_texts(encoder, [prompt.format(category=c) for c in data.categories])
    scores = embed_image_files(encoder, data.paths, batch_size) @ text_vecs.T
    return classification_results(scores, data, ks, root)


def classification_results(
    scores: np.ndarray, data: ClassificationSet, ks: Sequence[int], root: Path | None = None
) -> tuple[dict, list[dict]]:
    target = metrics.multi_hot(data.labels, len(data.categories))
    per_class = metrics.per_class_accuracy(scores, target, 1)
    result = {
        "dataset": data.name,
        "images": len(data.paths),
        "categories": list(data.categories),
        "multilabel_dataset": data.multilabel,
        "topk_accuracy": metrics.topk_accuracy(scores, target, ks),
        "multilabel": {int(k): metrics.multilabel_metrics(scores, target, k) for k in ks},
        "per_class_top1": {
            c: (None if np.isnan(v) else float(v)) for c, v in zip(data.categories, per_class, strict=True)
        },
    }
    order = metrics.rank_order(scores)
    best = metrics.best_target_rank(scores, target)
    failures = [
        {
            "image": _display_path(data.paths[i], root),
            "labels": [data.categories[j] for j in data.labels[i]],
            "rank_of_label": int(best[i]) + 1,
            "predicted": [[data.categories[j], round(float(scores[i, j]), 4)] for j in order[i, :TOP_SHOWN]],
        }
        for i in np.argsort(-best, kind="stable")
        if best[i] > 0
    ]
    return result, failures


def evaluate_retrieval(
    encoder: ClipEncoder,
    data: CaptionSet,
    ks: Sequence[int] = metrics.RETRIEVAL_KS,
    batch_size: int = 0,
    root: Path | None = None,
) -> tuple[dict, dict[str, list[dict]]]:
    """Text -> image and image -> text retrieval over one captioned split."""
    image_vecs = embed_image_files(encoder, [it.path for it in data.items], batch_size)
    similarity = image_vecs @ embed_texts(encoder, data.texts).T
    return retrieval_results(similarity, data, ks, root)


def retrieval_results(
    similarity: np.ndarray, data: CaptionSet, ks: Sequence[int], root: Path | None = None
) -> tuple[dict, dict[str, list[dict]]]:
    texts, owner = data.texts, data.text_owner
    result = {"dataset": data.name, "images": len(data.items), "captions": len(texts)}
    result.update(metrics.retrieval_metrics(similarity, owner, ks))
    t2i, i2t = metrics.retrieval_ranks(similarity, owner)
    names = [_display_path(it.path, root) for it in data.items]
    image_order = metrics.rank_order(similarity.T)
    text_order = metrics.rank_order(similarity)
    t2i_fail = [
        {
            "query": texts[j],
            "expected": names[owner[j]],
            "rank": int(t2i[j]) + 1,
            "retrieved": [[names[i], round(float(similarity[i, j]), 4)] for i in image_order[j, :TOP_SHOWN]],
        }
        for j in np.argsort(-t2i, kind="stable")
        if t2i[j] > 0
    ]
    i2t_fail = [
        {
            "query": names[i],
            "expected": data.items[i].captions,
            "rank": int(i2t[i]) + 1,
            "retrieved": [[texts[j], round(float(similarity[i, j]), 4)] for j in text_order[i, :TOP_SHOWN]],
        }
        for i in np.argsort(-i2t, kind="stable")
        if i2t[i] > 0
    ]
    return result, {"text_to_image": t2i_fail, "image_to_text": i2t_fail}


def evaluate_model(
    encoder: ClipEncoder,
    name: str,
    classification: ClassificationSet | None = None,
    retrieval: CaptionSet | None = None,
    prompt: str = PROMPT,
    batch_size: int = 0,
    root: Path | None = None,
) -> ModelReport:
    """All the measurements for one loaded model."""
    report = ModelReport(model=name, info=encoder.info.as_dict())
    if classification is not None:
        report.classification, report.failures["classification"] = evaluate_classification(
            encoder, classification, prompt, batch_size=batch_size, root=root
        )
    if retrieval is not None:
        report.retrieval, fails = evaluate_retrieval(encoder, retrieval, batch_size=batch_size, root=root)
        report.failures.update(fails)
    return report
