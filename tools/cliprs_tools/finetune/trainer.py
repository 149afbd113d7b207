"""Contrastive fine-tuning loop: symmetric InfoNCE, AdamW with linear warm-up and decay, AMP on
GPU, gradient accumulation that still contrasts the whole effective batch (gradient caching),
checkpoints that resume to the same state, evaluation each epoch and the best model kept as a
Hugging Face folder that `CLIP_MODEL` can point at."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from cliprs.errors import InvalidInput
from cliprs.fsutil import atomic_path, atomic_write_bytes
from cliprs_model import ClipEncoder
from cliprs_tools.evaluation.datasets import CaptionSet, ClassificationSet
from cliprs_tools.evaluation.runner import evaluate_classification, evaluate_retrieval
from cliprs_tools.finetune.augment import CaptionHook, ImageAugment
from cliprs_tools.finetune.data import CaptionTrainSet, Collate, batch_loader, epoch_batches
from cliprs_tools.finetune.settings import RESUME_KEYS, FinetuneSettings

log = logging.getLogger("cliprs_tools.finetune")

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its temperature so logits stay below 100


def info_nce(logits_per_image: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: image i's caption is the i-th text, and the other way round."""
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)) / 2


@dataclass
class TrainState:
    """Where training stands; with the model, optimizer, scheduler and RNG it is a checkpoint."""

    step: int = 0
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # micro-batches of the current epoch already trained on
    epoch_loss_sum: float = 0.0  # over the current epoch's steps, so a resume reports the same mean
    epoch_steps: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)


@dataclass
class TrainResult:
    state: TrainState
    best_dir: Path
    losses: list[float]  # loss of each optimizer step run by this call


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # As in CLIP: no decay on gains, biases, embeddings and the temperature.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "embedding" in name or "logit_scale" in name or "norm" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _amp_dtype(settings: FinetuneSettings, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or settings.amp == "off":
        return None
    if settings.amp == "fp16" or (settings.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """One fine-tuning run in ``settings.out``; `run` trains (resuming when it can)."""

    def __init__(
        self,
        settings: FinetuneSettings,
        encoder: ClipEncoder,
        train_set: CaptionSet,
        eval_set: CaptionSet | None = None,
        classification: ClassificationSet | None = None,
        caption_hook: CaptionHook | None = None,
        on_step: Callable[[TrainState, float], None] | None = None,
    ):
        self.settings, self.encoder = settings, encoder
        self.model, self.device = encoder.model, encoder.device
        self.train_set, self.eval_set, self.classification = train_set, eval_set, classification
        self.on_step = on_step
        self.out = Path(settings.out)
        self.checkpoint_dir = self.out / "checkpoints"
        self.best_dir = self.out / "best"
        if settings.select_metric == "top1" and classification is None:
            raise InvalidInput(
                "--select-metric top1 needs --classification; use mR or give a classification set"
            )

        torch.manual_seed(settings.seed)
        random.seed(settings.seed)
        np.random.seed(settings.seed)
        # Crops come out at the model's input size, so the transform's resize is then a no-op.
        augment = ImageAugment(size=min(encoder.transform.output_size)) if settings.augment else None
        self.dataset = CaptionTrainSet(
            train_set.items,
            encoder.transform,
            augment,
            caption_hook,
            settings.caption_augment_p,
            settings.seed,
        )
        self.collate = Collate(encoder.tokenizer, encoder.max_text_tokens)
        self.batches_per_epoch = len(epoch_batches(len(self.dataset), settings.batch_size, settings.seed, 0))
        steps_per_epoch = math.ceil(self.batches_per_epoch / settings.grad_accum)
        # The schedule decays to zero at the last step actually run.
        full = settings.epochs * steps_per_epoch
        self.total_steps = min(settings.max_steps, full) if settings.max_steps else full
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.98), eps=1e-6
        )
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, round(settings.warmup_ratio * self.total_steps), self.total_steps
        )
        self.amp_dtype = _amp_dtype(settings, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = TrainState()

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        return sorted(self.checkpoint_dir.glob("step-*.pt"))

    def save_checkpoint(self) -> Path:
        """Everything needed to continue exactly here, written atomically; old ones pruned."""
        path = self.checkpoint_dir / f"step-{self.state.step:08d}.pt"
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "state": asdict(self.state),
            "settings": {k: getattr(self.settings, k) for k in RESUME_KEYS},
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        for old in self.checkpoints()[: -self.settings.keep_checkpoints]:
            old.unlink(missing_ok=True)
        log.info("checkpoint %s", path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        changed = {
            k: (v, getattr(self.settings, k))
            for k, v in payload["settings"].items()
            if getattr(self.settings, k) != v
        }
        if changed:
            raise InvalidInput(
                f"checkpoint {path} was made with other settings ({changed}: saved, now); "
                "run with the same ones, or pass --no-resume (or another --out) to start afresh"
            )
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        _set_rng_state(payload["rng"])
        self.state = TrainState(**payload["state"])
        log.info("resumed from %s (step %d, epoch %d)", path, self.state.step, self.state.epoch)

    def save_model(self, target: Path, metadata: dict) -> Path:
        """A Hugging Face folder (model, tokenizer, image processor) swapped in atomically."""
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        self.encoder.tokenizer.save_pretrained(tmp)
        self.encoder.image_processor.save_pretrained(tmp)
        (tmp / "cliprs_finetune.json").write_text(json.dumps(metadata, indent=1))
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        return target

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self) -> dict:
        """Retrieval (and classification) on the evaluation sets with the model as it is now."""
        # The encoder wraps the very model being trained: this is the embedder's code path.
        self.model.eval()
        result = {}
        try:
            if self.eval_set is not None:
                result["retrieval"], _ = evaluate_retrieval(self.encoder, self.eval_set)
            if self.classification is not None:
                cls, _ = evaluate_classification(self.encoder, self.classification)
                result["classification"] = {k: cls[k] for k in ("topk_accuracy", "multilabel")}
        finally:
            self.model.train()
        return result

    def _metric(self, evaluation: dict) -> float | None:
        if self.settings.select_metric == "top1":
            return evaluation.get("classification", {}).get("topk_accuracy", {}).get(1)
        return evaluation.get("retrieval", {}).get("mR")

    def _end_epoch(self, train_loss: float | None) -> None:
        evaluation = self.evaluate()
        entry = {"epoch": self.state.epoch, "step": self.state.step, "train_loss": train_loss, **evaluation}
        self.state.history.append(entry)
        metric = self._metric(evaluation)
        log.info(
            "epoch %d: train loss %s, %s %s",
            self.state.epoch,
            train_loss,
            self.settings.select_metric,
            metric,
        )
        better = metric is not None and (self.state.best_metric is None or metric > self.state.best_metric)
        if better or (metric is None and self.state.epoch > 0):
            self.state.best_metric, self.state.best_step = metric, self.state.step
            self.save_model(self.best_dir, {"step": self.state.step, "epoch": self.state.epoch, **entry})
        atomic_write_bytes(self.out / "history.json", json.dumps(self.state.history, indent=1).encode())

    # -- training ------------------------------------------------------------------------------

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit image and text vectors of a batch, in float32 for the loss."""
        out = self.model(**batch)
        return out.image_embeds.float(), out.text_embeds.float()

    def _contrast(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return info_nce(self.model.logit_scale.exp() * image @ text.T)

    def _backward(self, group: list[dict[str, torch.Tensor]]) -> float:
        """Gradients of the InfoNCE loss over all the micro-batches of ``group`` as ONE batch.

        Accumulating per-micro-batch losses would contrast each image with its own micro-batch
        only; contrastive learning gains from every negative, so the micro-batches are contrasted
        together with gradient caching (Gao et al., 2021): embed all without graphs, take the
        loss and its gradients with respect to the embeddings, then re-embed each micro-batch
        with a graph and push those gradients through it. Memory stays that of one micro-batch,
        for one extra forward pass. (CLIP has no dropout, so both passes see the same network.)
        """
        if len(group) == 1:
            with self._autocast():
                image, text = self._embed(group[0])
            loss = self._contrast(image, text)  # in float32, outside autocast
            self.scaler.scale(loss).backward()
            return loss.item()
        with torch.no_grad(), self._autocast():
            parts = [self._embed(b) for b in group]
        image = torch.cat([p[0] for p in parts]).requires_grad_()
        text = torch.cat([p[1] for p in parts]).requires_grad_()
        loss = self._contrast(image, text)
        self.scaler.scale(loss).backward()  # also the temperature's gradient
        offset = 0
        for batch in group:
            with self._autocast():
                img, txt = self._embed(batch)
            n = len(img)
            torch.autograd.backward(
                [img, txt], [image.grad[offset : offset + n], text.grad[offset : offset + n]]
            )
            offset += n
        return loss.item()

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def run(self) -> TrainResult:
        """Train to the end (resuming from the latest checkpoint when allowed); Ctrl-C saves a
        checkpoint first, so the next run continues from there."""
        self.out.mkdir(parents=True, exist_ok=True)
        existing = self.checkpoints()
        if self.settings.resume and existing:
            self.load_checkpoint(existing[-1])
        else:
            if existing:
                log.warning(
                    "not resuming: removing the %d old checkpoints in %s", len(existing), self.checkpoint_dir
                )
                shutil.rmtree(self.checkpoint_dir)
            self._end_epoch(None)  # the baseline: the model before any step
        losses: list[float] = []
        try:
            self._train(losses)
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: saving a checkpoint to resume from", self.state.step)
            self.save_checkpoint()
            raise
        return TrainResult(self.state, self.best_dir, losses)

    def _train(self, losses: list[float]) -> None:
        s, accum = self.settings, self.settings.grad_accum
        self.model.train()
        while self.state.step < self.total_steps and self.state.epoch < s.epochs:
            plan = epoch_batches(len(self.dataset), s.batch_size, s.seed, self.state.epoch)
            start = self.state.batch_in_epoch
            loader = batch_loader(self.dataset, plan[start:], self.collate, s.num_workers)
            group: list[dict[str, torch.Tensor]] = []
            started = time.perf_counter()
            for i, batch in enumerate(loader, start=start):
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                batch["pixel_values"] = self.encoder.transform.normalise(batch.pop("pixels"))
                group.append(batch)
                if len(group) < min(accum, len(plan) - (i // accum) * accum):
                    continue
                loss = self._backward(group)
                self._optimizer_step()
                self.state.step += 1
                self.state.batch_in_epoch = i + 1
                self.state.epoch_loss_sum += loss
                self.state.epoch_steps += 1
                losses.append(loss)
                if self.state.step % s.log_every == 0 or self.state.step == 1:
                    rate = sum(len(b["pixel_values"]) for b in group) / (time.perf_counter() - started)
                    log.info(
                        "step %d/%d epoch %d loss %.4f lr %.2e %.1f img/s",
                        self.state.step,
                        self.total_steps,
                        self.state.epoch + 1,
                        loss,
                        self.scheduler.get_last_lr()[0],
                        rate,
                    )
                if self.on_step is not None:
                    self.on_step(self.state, loss)
                group, started = [], time.perf_counter()
                if s.save_every and self.state.step % s.save_every == 0:
                    self.save_checkpoint()
                if self.state.step >= self.total_steps:
                    break
            if self.state.batch_in_epoch >= len(plan) or self.state.step >= self.total_steps:
                mean_loss = self.state.epoch_loss_sum / max(1, self.state.epoch_steps)
                self.state.epoch += 1
                self.state.batch_in_epoch, self.state.epoch_loss_sum, self.state.epoch_steps = 0, 0.0, 0
                self._end_epoch(mean_loss)
                self.save_checkpoint()
