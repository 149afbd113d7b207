"""Fine-tuning and evaluation: training throughput, what accumulation and mixed precision cost or
save, evaluation throughput, and what a short fine-tuning run does to retrieval.

    make bench-finetune        (or: .venv/bin/python benchmarks/bench_finetune.py --sizes tiny,vit-b-32)

On a CPU only the tiny model is timed unless ``--sizes`` asks for more (ViT-B/32 trains at
about one image per second on two cores).

Models: ``tiny`` is the generated test CLIP; ``vit-b-32`` has ViT-B/32's shapes (the platform's
model, clip-rsicd-v2) with random weights, since no weights can be downloaded here: its speed
is the real model's, its accuracy is not. Data: the generated sample (procedural textures in the
RSICD layout). Training figures time optimizer steps through `Trainer` itself (data loading,
augmentation and tokenisation included) after one warm-up step; "accum 4 x 8" is the same
32 images per step in micro-batches of 8, still contrasted as one batch of 32 (gradient caching:
an extra forward pass buys the memory of a batch of 8). On a GPU fp32 is compared with AMP (bf16).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from machine_info import finish, non_default, run_info
from pydantic import Field
from pydantic_settings import BaseSettings
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip import CLIPImageProcessorPil

from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_testing.model import default_cache_dir, tiny_clip
from cliprs_tools.cli import cli_config, run_cli
from cliprs_tools.evaluation.datasets import load_captions, load_classification
from cliprs_tools.evaluation.runner import evaluate_model
from cliprs_tools.evaluation.sample import write_sample
from cliprs_tools.finetune.settings import FinetuneSettings
from cliprs_tools.finetune.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def vit_b_32(tiny: Path, out: Path) -> Path:
    """A random CLIP with ViT-B/32's shapes (CLIPConfig's defaults), tokenizer from ``tiny``."""
    if not (out / "config.json").exists():
        config = CLIPConfig(
            text_config=dict(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
            projection_dim=512,
        )
        CLIPModel(config).save_pretrained(out)
        CLIPTokenizer.from_pretrained(tiny).save_pretrained(out)
        CLIPImageProcessorPil.from_pretrained(tiny).save_pretrained(out)
    return out


def train_rate(
    model_dir: Path, data: Path, device: str, out: Path, steps: int, batch: int, accum: int, amp: str
) -> float:
    """Images per second over ``steps`` optimizer steps after a warm-up step."""
    encoder = load_encoder(ModelSettings(model=str(model_dir), device=device))
    train = load_captions(data, split="train")
    stamps: list[float] = []
    settings = FinetuneSettings(
        out=out,
        batch_size=batch // accum,
        grad_accum=accum,
        max_steps=steps + 1,
        epochs=100,
        amp=amp,
        resume=False,
        log_every=10_000,
        device=device,
        num_workers=2,
    )
    Trainer(settings, encoder, train, on_step=lambda state, loss: stamps.append(time.perf_counter())).run()
    shutil.rmtree(out, ignore_errors=True)
    return steps * batch / (stamps[-1] - stamps[0])


class FinetuneBenchSettings(BaseSettings):
    """Fine-tuning and evaluation throughput, and what a short fine-tuning run does to retrieval."""

    model_config = cli_config("BENCH_FINETUNE_", "python benchmarks/bench_finetune.py")

    sizes: str | None = Field(
        None, description="comma list of tiny, vit-b-32 (default: both on a GPU, tiny on a CPU)"
    )
    steps: int = Field(12, gt=0, description="timed optimizer steps per figure (one epoch at most)")
    batch: int = Field(32, gt=0, description="images per optimizer step")
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    out: Path = Field(ROOT / "benchmarks/results/finetune.json", description="where the JSON results go")


def run(options: FinetuneBenchSettings) -> None:
    """Time training and evaluation for each size, then a short fine-tuning run; print the figures
    and write them to ``--out``."""
    info = run_info(options, torch=torch.__version__, torch_threads=torch.get_num_threads())
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    cache = default_cache_dir(ROOT)
    tiny = tiny_clip(cache)
    # 12 categories x 64 images: 480 train (15 steps of 32: timing stays inside one epoch and
    # outlasts the loader's prefetched batches), 96 val, 192 test.
    data = write_sample(work / "sample", per_category=64)
    device = options.device
    # ViT-B/32 trains at about 1 image/s on two CPU cores: opt in there with --sizes.
    sizes = (options.sizes or ("tiny,vit-b-32" if device.startswith("cuda") else "tiny")).split(",")
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else f'{torch.get_num_threads()} CPU threads'})"
    )
    figures: dict[str, dict] = {}
    for size in sizes:
        model_dir = tiny if size == "tiny" else vit_b_32(tiny, cache / "models/vit-b-32-random")
        row = {}
        row["train_img_s"] = train_rate(
            model_dir, data, device, work / "run", options.steps, options.batch, 1, "off"
        )
        row["train_accum4_img_s"] = train_rate(
            model_dir, data, device, work / "run", options.steps, options.batch, 4, "off"
        )
        if device.startswith("cuda"):
            row["train_amp_img_s"] = train_rate(
                model_dir, data, device, work / "run", options.steps, options.batch, 1, "bf16"
            )
        encoder = load_encoder(ModelSettings(model=str(model_dir), device=device))
        test = load_captions(data, split="test")
        classes = load_classification(data, split="test")
        evaluate_model(encoder, size, classes, test)  # warm-up
        started = time.perf_counter()
        evaluate_model(encoder, size, classes, test)
        # Each test image is embedded twice (classification and retrieval), plus the texts.
        row["eval_img_s"] = 2 * len(test.items) / (time.perf_counter() - started)
        figures[size] = row
        line = (
            f"{size:9s} train {row['train_img_s']:7.1f} img/s | accum 4 x {options.batch // 4}: "
            f"{row['train_accum4_img_s']:7.1f} img/s ({row['train_accum4_img_s'] / row['train_img_s']:.2f}x)"
        )
        if "train_amp_img_s" in row:
            line += f" | AMP bf16: {row['train_amp_img_s']:7.1f} img/s ({row['train_amp_img_s'] / row['train_img_s']:.2f}x)"
        print(line + f" | evaluation {row['eval_img_s']:7.1f} img/s", flush=True)

    # Quality: the tiny CLIP fine-tuned on the sample's train split, retrieval on its val split.
    encoder = load_encoder(ModelSettings(model=str(tiny), device=device))
    train, val = load_captions(data, split="train"), load_captions(data, split="val")
    settings = FinetuneSettings(
        out=work / "quality", epochs=4, batch_size=16, lr=5e-4, log_every=10_000, device=device
    )
    history = Trainer(settings, encoder, train, val).run().state.history
    before, after = history[0]["retrieval"], max((h["retrieval"] for h in history[1:]), key=lambda r: r["mR"])
    print(
        f"tiny CLIP fine-tuned {history[-1]['step']} steps on the sample: val mR {before['mR']:.1f} -> {after['mR']:.1f} "
        f"({after['mR'] / before['mR']:.2f}x), T->I R@1 {before['text_to_image'][1]:.1f} -> {after['text_to_image'][1]:.1f}, "
        f"train loss {history[1]['train_loss']:.3f} -> {history[-1]['train_loss']:.3f}"
    )
    figures["quality"] = {
        "steps": history[-1]["step"],
        "before": before,
        "after": after,
        "train_loss_first": history[1]["train_loss"],
        "train_loss_last": history[-1]["train_loss"],
        # The fine-tuning settings that differ from the tool's defaults (a short run on a toy set).
        "non_default_settings": non_default(settings),
    }
    print(json.dumps(figures, default=str))
    shutil.rmtree(work, ignore_errors=True)
    result = {**finish(info), "device": device, "sizes": sizes, "figures": figures}
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"results: {options.out}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; bad options are reported as one ``error: ...`` line (exit 2)."""
    return run_cli(FinetuneBenchSettings, run, argv)


if __name__ == "__main__":
    sys.exit(main())
