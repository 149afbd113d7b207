"""Online embedding for queries: text and image in, one unit vector out per input."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cliprs.errors import InvalidInput, TooLarge, Unavailable
from cliprs_embedder.images import decode_image
from cliprs_embedder.settings import EmbedderSettings
from cliprs_http import install_error_handlers, readiness_response, run_checks
from cliprs_model import ClipEncoder, load_encoder
from cliprs_model.settings import ModelSettings


class TextRequest(BaseModel):
    texts: list[str] = Field(..., description="Texts to embed, e.g. ['boats near a pier']")


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


def create_app(
    settings: EmbedderSettings | None = None,
    model_settings: ModelSettings | None = None,
    encoder: ClipEncoder | None = None,
) -> FastAPI:
    settings = settings or EmbedderSettings()
    model_settings = model_settings or ModelSettings()
    state: dict = {"encoder": encoder, "error": None}
    # One model call at a time: torch already uses every core for one batch.
    lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if state["encoder"] is None:
            try:
                state["encoder"] = await asyncio.to_thread(load_encoder, model_settings)
            except Unavailable as exc:
                state["error"] = str(exc)  # stay up and say why in /readyz
        yield

    app = FastAPI(title="CLIP-RS embedder", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)

    def model() -> ClipEncoder:
        if state["encoder"] is None:
            raise Unavailable(state["error"] or "the model is still loading")
        return state["encoder"]

    def _answer(enc: ClipEncoder, vectors) -> dict:
        return {"model": enc.info.as_dict(), "dim": enc.dim, "vectors": vectors.tolist()}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ok, report = await run_checks({"model": lambda: model().info.as_dict()})
        info = state["encoder"].info.as_dict() if state["encoder"] else None
        return readiness_response(ok, report, model=info)

    @app.post("/v1/embed/text")
    async def embed_text(body: TextRequest) -> dict:
        """Unit vectors for up to `max_texts` texts (each truncated to the model's 77 tokens)."""
        texts = validate_texts(body.texts, settings)
        enc = model()
        async with lock:
            vectors = await asyncio.to_thread(enc.embed_texts, texts)
        result = _answer(enc, vectors)
        result["tokens"] = [enc.count_tokens(t) for t in texts]
        return result

    @app.post("/v1/embed/image")
    async def embed_image(
        request: Request, file: UploadFile = File(..., description="PNG, JPEG or WebP")
    ) -> dict:
        """The unit vector of one uploaded image."""
        data = await file.read(settings.max_image_bytes + 1)
        image = decode_image(data, settings.max_image_bytes, settings.max_image_side)
        enc = model()
        async with lock:
            vectors = await asyncio.to_thread(enc.embed_images, [image])
        return _answer(enc, vectors)

    return app
