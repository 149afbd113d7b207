"""Side-by-side reports of several models: Markdown, JSON, PNG plots and failure lists."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from cliprs.fsutil import atomic_write_bytes
from cliprs_tools.evaluation.runner import ModelReport

FAILURES_SHOWN = 10  # per model and task in the Markdown report; all of them are in failures/


def _label(report: ModelReport) -> str:
    return report.model + (" **(fallback: generated random CLIP)**" if report.info.get("fallback") else "")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def markdown(reports: Sequence[ModelReport]) -> str:
    """The comparison tables and the worst failures of each model."""
    lines = ["# CLIP evaluation", ""]
    lines += _classification_tables([r for r in reports if r.classification])
    lines += _retrieval_table([r for r in reports if r.retrieval])
    lines += _failure_lists(reports)
    return "\n".join(lines)


def _table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table: a ``model`` column, then ``columns`` aligned right (they hold numbers)."""
    return [_row(["model", *columns]), "|---|" + "---:|" * len(columns), *map(_row, rows)]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _classification_tables(cls: Sequence[ModelReport]) -> list[str]:
    if not cls:
        return []
    c0 = cls[0].classification
    ks = list(c0["topk_accuracy"])
    topk = [[_label(r), *(f"{r.classification['topk_accuracy'][k]:.1f}" for k in ks)] for r in cls]
    multilabel = [
        [
            _label(r),
            f"{k}",
            f"{m['precision']:.1f}",
            f"{m['recall']:.1f}",
            f"{m['f1']:.1f}",
            f"{m['hamming_loss']:.4f}",
        ]
        for r in cls
        for k, m in r.classification["multilabel"].items()
    ]
    return [
        f"## Zero-shot scene classification ({c0['dataset']}: {c0['images']} images, "
        f"{len(c0['categories'])} categories)",
        "",
        *_table([f"top-{k} %" for k in ks], topk),
        "",
        "Multilabel, the top k categories predicted (macro over categories):",
        "",
        *_table(["k", "precision %", "recall %", "F1 %", "Hamming loss"], multilabel),
        "",
    ]


def _retrieval_table(ret: Sequence[ModelReport]) -> list[str]:
    if not ret:
        return []
    r0 = ret[0].retrieval
    ks = list(r0["text_to_image"])
    columns = [*(f"T→I R@{k}" for k in ks), *(f"I→T R@{k}" for k in ks), "mR"]
    rows = []
    for r in ret:
        t2i, i2t = r.retrieval["text_to_image"], r.retrieval["image_to_text"]
        cells = [f"{t2i[k]:.1f}" for k in ks] + [f"{i2t[k]:.1f}" for k in ks] + [f"{r.retrieval['mR']:.1f}"]
        rows.append([_label(r), *cells])
    return [
        f"## Cross-modal retrieval ({r0['dataset']}: {r0['images']} images, {r0['captions']} captions)",
        "",
        *_table(columns, rows),
        "",
    ]


def _failure_lists(reports: Sequence[ModelReport]) -> list[str]:
    lines = ["## Failures (worst first; every one is in failures/)", ""]
    for r in reports:
        for task, items in r.failures.items():
            lines.append(f"### {r.model}: {task.replace('_', ' ')} ({len(items)} failed)")
            lines.append("")
            for f in items[:FAILURES_SHOWN]:
                top = ", ".join(f"{c} ({s:.3f})" for c, s in _top(f))
                want = f.get("labels") or f.get("expected")
                query = f.get("image") or f.get("query")
                rank = f.get("rank_of_label") or f.get("rank")
                lines.append(f"- `{query}`: wanted {_short(want)} (rank {rank}); got {top}")
            lines.append("")
    return lines


def _top(failure: dict) -> list:
    return (failure.get("predicted") or failure.get("retrieved") or [])[:3]


def _short(value) -> str:
    if isinstance(value, list):
        return "; ".join(f"`{v}`" for v in value[:2]) + (" …" if len(value) > 2 else "")
    return f"`{value}`"


def plot_topk(reports: Sequence[ModelReport], path: Path) -> Path | None:
    """Top-k accuracy against k, one line per model (and retrieval R@k when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (
            "Zero-shot classification: top-k accuracy",
            lambda r: r.classification["topk_accuracy"],
            "classification",
        ),
        ("Text → image R@k", lambda r: r.retrieval["text_to_image"], "retrieval"),
        ("Image → text R@k", lambda r: r.retrieval["image_to_text"], "retrieval"),
    ]
    panels = [p for p in panels if any(getattr(r, p[2]) for r in reports)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, get, attr) in zip(axes[0], panels, strict=True):
        for r in reports:
            if getattr(r, attr):
                series = get(r)
                ax.plot([int(k) for k in series], list(series.values()), marker="o", label=r.model)
        ax.set_title(title)
        ax.set_xlabel("k")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_class(reports: Sequence[ModelReport], path: Path) -> Path | None:
    """Top-1 accuracy per category, one bar per model (categories with test images only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cls = [r for r in reports if r.classification]
    if not cls:
        return None
    cats = [c for c, v in cls[0].classification["per_class_top1"].items() if v is not None]
    height = 0.8 / len(cls)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.32 * len(cats) * max(1, len(cls) / 2) + 1)))
    y = np.arange(len(cats))
    for i, r in enumerate(cls):
        values = [r.classification["per_class_top1"].get(c) or 0.0 for c in cats]
        ax.barh(y + i * height, values, height=height, label=r.model)
    ax.set_yticks(y + height * (len(cls) - 1) / 2, cats)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("top-1 accuracy %")
    ax.set_title("Per-category zero-shot accuracy")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(reports: Sequence[ModelReport], out_dir: Path) -> dict[str, Path]:
    """results.json, results.md, topk.png, per_class.png and failures/{model}.json in ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "failures").mkdir(parents=True, exist_ok=True)
    written = {}
    summary = [{k: v for k, v in r.as_dict().items() if k != "failures"} for r in reports]
    written["json"] = out_dir / "results.json"
    atomic_write_bytes(written["json"], json.dumps({"models": summary}, indent=2).encode())
    written["markdown"] = out_dir / "results.md"
    atomic_write_bytes(written["markdown"], markdown(reports).encode())
    for r in reports:
        path = out_dir / "failures" / f"{slug(r.model)}.json"
        atomic_write_bytes(path, json.dumps(r.failures, indent=1).encode())
    for key, fn in (("topk_plot", plot_topk), ("per_class_plot", plot_per_class)):
        path = fn(reports, out_dir / f"{key.removesuffix('_plot')}.png")
        if path:
            written[key] = path
    return written
