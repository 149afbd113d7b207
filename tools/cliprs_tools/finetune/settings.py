"""Fine-tuning settings: the CLI's options, also read from ``FINETUNE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from cliprs_tools.cli import cli_config

# Settings that decide which samples each step sees: a checkpoint only resumes under the same.
RESUME_KEYS = ("batch_size", "grad_accum", "seed", "epochs", "max_steps", "lr", "warmup_ratio", "augment")


class FinetuneSettings(BaseSettings):
    """Contrastive fine-tuning of a CLIP checkpoint on a captioned set (RSICD layout)."""

    model_config = cli_config("FINETUNE_", "python -m cliprs_tools.finetune")

    model: str | None = Field(
        None, description="base CLIP: Hugging Face id or local folder (default: CLIP_MODEL)"
    )
    data: Path | None = Field(
        None, description="captions JSON in the RSICD layout (default: the generated sample)"
    )
    images_dir: Path | None = Field(None, description="images of --data (default: images/ beside the JSON)")
    train_split: str = Field("train", description="split trained on")
    eval_split: str = Field("val", description="split evaluated after each epoch (retrieval R@k, mR)")
    classification: Path | None = Field(
        None, description="also evaluate zero-shot classification each epoch on this set (folder or JSON)"
    )
    categories: list[str] | None = Field(
        None, description="categories for --classification (default: RSICD's 30)"
    )
    out: Path = Field(
        Path("var/finetune"), description="run folder: checkpoints/, best/ (the HF model), history.json"
    )
    sample_dir: Path = Field(Path("var/eval-sample"), description="where the generated sample is written")
    device: str | None = Field(None, description="cpu, cuda, cuda:N (default: CLIP_DEVICE)")

    epochs: int = Field(5, gt=0)
    max_steps: int = Field(0, ge=0, description="stop after this many optimizer steps (0: run every epoch)")
    batch_size: int = Field(32, gt=1, description="images per forward pass (a micro-batch)")
    grad_accum: int = Field(
        1, gt=0, description="micro-batches per step, contrasted as one batch of batch-size x grad-accum"
    )
    lr: float = Field(5e-5, gt=0, description="peak learning rate (the source study used 5e-5)")
    weight_decay: float = Field(
        0.1, ge=0, description="AdamW decay (not on biases, norms, embeddings, logit scale)"
    )
    warmup_ratio: float = Field(
        0.1, ge=0, le=1, description="fraction of the steps spent warming up linearly"
    )
    max_grad_norm: float = Field(1.0, gt=0)
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="mixed precision on GPU (auto: bf16 if supported, else fp16)"
    )
    seed: int = 0
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes decoding images")

    augment: bool = Field(True, description="random resized crop, colour jitter, h/v flips")
    caption_augment: str | None = Field(
        None,
        description="caption hook, module:callable (text -> text) or module:factory(); e.g. back-translation",
    )
    caption_augment_p: float = Field(
        0.5, ge=0, le=1, description="probability a caption goes through the hook"
    )

    select_metric: Literal["mR", "top1"] = Field("mR", description="metric that picks the best checkpoint")
    save_every: int = Field(0, ge=0, description="also checkpoint every N steps (0: at each epoch end only)")
    keep_checkpoints: int = Field(2, gt=0)
    resume: bool = Field(True, description="continue from the latest checkpoint in --out when there is one")
    log_every: int = Field(10, gt=0)
