"""Online embedding of queries: texts or one image in, unit vectors out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, UploadFile

from cliprs_embedder import service
from cliprs_embedder.routes.deps import Settings, Slot, require_service_token
from cliprs_embedder.schemas import EmbeddingResponse, TextEmbeddingResponse, TextRequest
from cliprs_http.schemas import ERROR_RESPONSES

router = APIRouter(
    prefix="/v1/embed",
    tags=["embed"],
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_service_token)],
)


@router.post("/text", response_model=TextEmbeddingResponse)
async def embed_text(body: TextRequest, settings: Settings, slot: Slot) -> TextEmbeddingResponse:
    """Unit vectors for up to `max_texts` texts (each truncated to the model's 77 tokens)."""
    return await service.embed_texts(slot, body.texts, settings)


@router.post("/image", response_model=EmbeddingResponse)
async def embed_image(
    settings: Settings, slot: Slot, file: UploadFile = File(..., description="PNG, JPEG or WebP")
) -> EmbeddingResponse:
    """The unit vector of one uploaded image."""
    # One byte over the limit is enough to refuse it, without reading a huge upload whole.
    data = await file.read(settings.max_image_bytes + 1)
    return await service.embed_image(slot, data, settings)
