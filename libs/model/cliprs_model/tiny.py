"""A small generated CLIP with the real vocabulary: the offline fallback of `load_encoder`, and tests.

Same interfaces, input size (224 px, patch 32) and embedding size (512) as ViT-B/32, so every
code path (preprocessing, batching, FAISS dimensions) is exercised; the weights are random, so
its rankings mean nothing, which is why running on it is announced loudly.
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip import CLIPImageProcessorPil

from cliprs_model.vocab import VOCAB_SIZE, find_bpe_file, write_hf_vocab

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tiny_clip(out_dir: Path, seed: int = 0, vocab_cache: Path | None = None) -> Path:
    """Generate and save a tiny CLIP checkpoint (model, tokenizer, image processor) in
    ``out_dir`` unless one is already there; returns ``out_dir``.

    ``vocab_cache``: where the real CLIP vocabulary comes from (see `vocab.find_bpe_file`: the
    open_clip wheel, its ``.txt.gz``, or a folder for the wheel); default ``wheels/`` beside
    ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (API and workers) may start at once: one builds, the others wait.
    with open(out_dir.with_name(out_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out_dir / "config.json").exists():
            _build(out_dir, seed, vocab_cache)
    return out_dir


# Both towers: two layers of width 64 (what makes the model tiny).
TINY_TOWER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)


def _build(out_dir: Path, seed: int, vocab_cache: Path | None) -> None:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_hf_vocab(find_bpe_file(vocab_cache or out_dir.parent / "wheels"), tmp)
    config = CLIPConfig(
        text_config=dict(
            **TINY_TOWER,
            vocab_size=VOCAB_SIZE,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=dict(**TINY_TOWER, image_size=224, patch_size=32),
        projection_dim=512,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(tmp)
    tokenizer = CLIPTokenizer.from_pretrained(tmp, pad_token="<|endoftext|>", model_max_length=77)
    tokenizer.save_pretrained(tmp)
    CLIPImageProcessorPil(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ).save_pretrained(tmp)
    tmp.rename(out_dir)
