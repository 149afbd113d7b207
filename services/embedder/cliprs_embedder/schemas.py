"""Request and response models of the embedder's HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, Field

from cliprs_http.schemas import Readiness


class TextRequest(BaseModel):
    texts: list[str] = Field(..., description="Texts to embed, e.g. ['boats near a pier']")


class ModelInfo(BaseModel):
    """Which CLIP answers: what was asked for, what runs, and why they differ."""

    requested: str
    loaded: str
    device: str
    dim: int
    fallback: bool = Field(False, description="True when a generated stand-in runs: rankings mean nothing")
    reason: str | None = Field(None, description="why the requested model is not the one running")


class EmbeddingResponse(BaseModel):
    """One L2-normalised float32 vector per input, in input order."""

    model: ModelInfo
    dim: int
    vectors: list[list[float]]


class TextEmbeddingResponse(EmbeddingResponse):
    tokens: list[int] = Field(
        ..., description="tokens each text needs, markers included; beyond the model's 77 it is truncated"
    )


class EmbedderReadiness(Readiness):
    """``/readyz``: the model check, and the model's details once it is loaded."""

    model: ModelInfo | None = None
