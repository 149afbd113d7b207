"""`ClipEncoder`: images and texts in, L2-normalised float32 vectors out.

One code path for the batch embedder and the online endpoints, so a window embedded during
ingestion and the same pixels sent as a query give the same vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image


@dataclass
class ModelInfo:
    """What was asked for and what actually runs (shown in /readyz and the web banner)."""

    requested: str
    loaded: str
    device: str
    dim: int
    fallback: bool = False
    reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class ClipEncoder:
    """A loaded CLIP: tokenizer, image preprocessing and the two towers on one device."""

    def __init__(self, model, tokenizer, image_processor, device: torch.device, info: ModelInfo):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = device
        self.info = info
        self.max_text_tokens = int(getattr(model.config.text_config, "max_position_embeddings", 77))

    @property
    def dim(self) -> int:
        return self.info.dim

    def _autocast(self):
        # fp16 on GPU halves memory traffic; CPU stays in fp32 (bf16 on CPU is slower here).
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda")

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize, crop and normalise exactly as the model's image processor says."""
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def embed_pixels(self, pixel_values: torch.Tensor) -> np.ndarray:
        with self._autocast():
            feats = self.model.get_image_features(pixel_values=pixel_values.to(self.device))
        return _normalise(feats)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """(n, dim) float32 unit vectors for ``images``."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self.embed_pixels(self.preprocess(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 unit vectors for ``texts`` (truncated to the model's context)."""
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        ).to(self.device)
        with self._autocast():
            feats = self.model.get_text_features(**tokens)
        return _normalise(feats)

    def count_tokens(self, text: str) -> int:
        """Tokens the text needs, start and end markers included."""
        return len(self.tokenizer(text)["input_ids"])


def _normalise(feats) -> np.ndarray:
    if not isinstance(feats, torch.Tensor):  # newer transformers may return a model output
        feats = feats.pooler_output
    feats = feats.float()
    feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return feats.cpu().numpy().astype(np.float32, copy=False)
