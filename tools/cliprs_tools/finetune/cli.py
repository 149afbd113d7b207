"""`python -m cliprs_tools.finetune`: fine-tune a CLIP on a captioned set; the result, ``OUT/best``, is
a Hugging Face folder to start the platform with (``CLIP_MODEL=OUT/best make up``).

Every option is also an environment variable (prefix ``FINETUNE_``); run with ``--help``.
"""

from __future__ import annotations

import logging
import sys

from cliprs.errors import ClipRSError
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_tools.cli import run_cli
from cliprs_tools.evaluation.datasets import load_captions, load_classification
from cliprs_tools.evaluation.sample import write_sample
from cliprs_tools.finetune.augment import load_hook
from cliprs_tools.finetune.settings import FinetuneSettings
from cliprs_tools.finetune.trainer import Trainer, TrainResult

SAMPLE_NOTICE = """\
!!! No --data given: fine-tuning on a small GENERATED sample ({path}) to show the tool works.
!!! For a real run put RSICD (or UCM-captions / Sydney-captions) in a folder as
!!!   DIR/dataset_rsicd.json + DIR/images/*.jpg
!!! and run: make finetune FINETUNE_ARGS="--data DIR/dataset_rsicd.json --model BASE_MODEL"
!!!      (or set FINETUNE_DATA; --help lists every option)"""


def run(settings: FinetuneSettings) -> TrainResult:
    model_defaults = ModelSettings()
    data, images_dir, classification_path = settings.data, settings.images_dir, settings.classification
    sample = data is None
    if sample:
        data, images_dir = write_sample(settings.sample_dir), None
        classification_path = classification_path or data  # its file names carry the categories
        print(SAMPLE_NOTICE.format(path=settings.sample_dir), flush=True)
    train_set = load_captions(data, images_dir, settings.train_split)
    eval_set = load_captions(data, images_dir, settings.eval_split)
    classification = (
        load_classification(classification_path, settings.categories, images_dir, settings.eval_split)
        if classification_path
        else None
    )
    try:
        hook = load_hook(settings.caption_augment) if settings.caption_augment else None
    except (ImportError, AttributeError, ValueError) as exc:
        raise ClipRSError(f"--caption-augment {settings.caption_augment!r}: {exc}") from exc
    encoder = load_encoder(
        model_defaults.model_copy(
            update={
                "model": settings.model or model_defaults.model,
                "device": settings.device or model_defaults.device,
                # Only the bundled sample may silently start from the generated CLIP.
                "fallback": model_defaults.fallback or sample,
            }
        )
    )
    if encoder.info.fallback:
        print("!!! base model could not be loaded: fine-tuning the GENERATED fallback CLIP", flush=True)
    print(
        f"==> fine-tuning {encoder.info.requested} on {encoder.info.device}: {len(train_set.items)} training "
        f"images, {len(eval_set.items)} evaluation images, output {settings.out}",
        flush=True,
    )
    result = Trainer(settings, encoder, train_set, eval_set, classification, hook).run()
    print(history_table(result.state.history))
    print(
        f"best ({settings.select_metric} {result.state.best_metric}) at step {result.state.best_step}: {result.best_dir}"
    )
    print(f"use it: CLIP_MODEL={result.best_dir.resolve()} make up")
    return result


def history_table(history: list[dict]) -> str:
    """Markdown table of the evaluation after each epoch (epoch 0: before training)."""
    lines = [
        "| epoch | step | train loss | T→I R@1 | I→T R@1 | mR | top-1 % |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for h in history:
        r = h.get("retrieval") or {}
        top1 = (h.get("classification") or {}).get("topk_accuracy", {}).get(1)
        cells = [
            h["epoch"],
            h["step"],
            "—" if h["train_loss"] is None else f"{h['train_loss']:.4f}",
            *(
                f"{v:.1f}" if v is not None else "—"
                for v in (
                    r.get("text_to_image", {}).get(1),
                    r.get("image_to_text", {}).get(1),
                    r.get("mR"),
                    top1,
                )
            ),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_cli(FinetuneSettings, run, argv)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
