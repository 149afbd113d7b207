"""The embedder's online logic: one model shared by the requests, input limits, the answers.

No web framework here: the routes parse the request and call these functions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from cliprs.errors import InvalidInput, TooLarge, Unavailable
from cliprs_embedder.images import decode_image
from cliprs_embedder.schemas import EmbeddingResponse, ModelInfo, TextEmbeddingResponse
from cliprs_embedder.settings import EmbedderSettings
from cliprs_model import ClipEncoder, load_encoder
from cliprs_model.settings import ModelSettings

log = logging.getLogger("cliprs.embedder")


class ModelSlot:
    """The process's one CLIP: given, or loaded at start-up; until then, why it is missing."""

    def __init__(self, model_settings: ModelSettings, encoder: ClipEncoder | None = None):
        self.model_settings = model_settings
        self.encoder = encoder
        self.error: str | None = None
        # One model call at a time: torch already uses every core (or the GPU) for one batch.
        self.lock = asyncio.Lock()

    async def load(self) -> None:
        """Load the configured model unless one was given; a failure is kept, not raised, so the
        service stays up and `/readyz` says why."""
        if self.encoder is not None:
            return
        try:
            self.encoder = await asyncio.to_thread(load_encoder, self.model_settings)
        except Unavailable as exc:
            self.error = str(exc)
            log.error("the embedder runs without a model: %s", exc)

    def get(self) -> ClipEncoder:
        """The loaded model, or `Unavailable` saying why there is none."""
        if self.encoder is None:
            raise Unavailable(self.error or "the model is still loading")
        return self.encoder

    def info(self) -> ModelInfo | None:
        return ModelInfo(**self.encoder.info.as_dict()) if self.encoder is not None else None


def validate_texts(texts: list[str], settings: EmbedderSettings) -> list[str]:
    """Strip the texts and check them against the limits."""
    if not texts:
        raise InvalidInput("give at least one text")
    if len(texts) > settings.max_texts:
        raise TooLarge(f"{len(texts)} texts in one request; the limit is {settings.max_texts}")
    cleaned = [t.strip() for t in texts]
    for i, t in enumerate(cleaned):
        if not t:
            raise InvalidInput(f"text {i} is empty; describe what to look for, e.g. 'boats near a pier'")
        if len(t) > settings.max_text_chars:
            raise TooLarge(f"text {i} has {len(t)} characters; the limit is {settings.max_text_chars}")
    return cleaned


def _answer(encoder: ClipEncoder, vectors: np.ndarray) -> dict:
    return {"model": encoder.info.as_dict(), "dim": encoder.dim, "vectors": vectors.tolist()}


async def embed_texts(slot: ModelSlot, texts: list[str], settings: EmbedderSettings) -> TextEmbeddingResponse:
    """Unit vectors of up to ``max_texts`` texts (each truncated to the model's context)."""
    cleaned = validate_texts(texts, settings)
    encoder = slot.get()
    async with slot.lock:
        vectors = await asyncio.to_thread(encoder.embed_texts, cleaned)
    tokens = [encoder.count_tokens(t) for t in cleaned]
    return TextEmbeddingResponse(**_answer(encoder, vectors), tokens=tokens)


async def embed_image(slot: ModelSlot, data: bytes, settings: EmbedderSettings) -> EmbeddingResponse:
    """The unit vector of one uploaded image (``data`` may be one byte over the limit: refused)."""
    image = decode_image(data, settings.max_image_bytes, settings.max_image_side)
    encoder = slot.get()
    async with slot.lock:
        vectors = await asyncio.to_thread(encoder.embed_images, [image])
    return EmbeddingResponse(**_answer(encoder, vectors))


def readiness_checks(slot: ModelSlot) -> dict[str, Callable[[], dict]]:
    """`/readyz` checks: the model is loaded (its details, or why not)."""
    return {"model": lambda: slot.get().info.as_dict()}
