"""Image to text (zero-shot labels for an image or a window) and "where in this tile is X"."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Path, Query, UploadFile

from cliprs_http.schemas import ERROR_RESPONSES
from cliprs_search.auth import SEARCH
from cliprs_search.context import Context
from cliprs_search.routes.deps import get_context, read_upload
from cliprs_search.schemas import Classification, Heatmap
from cliprs_search.service import analysis

router = APIRouter(tags=["analysis"], responses=ERROR_RESPONSES)


@router.post("/v1/classify", dependencies=[Depends(SEARCH)])
async def classify(
    file: UploadFile | None = File(None, description="A PNG, JPEG or WebP image (or give window_id)"),
    window_id: int | None = Form(None, description="An indexed window to label (instead of a file)"),
    labels: list[str] | None = Form(
        None,
        description="Labels or captions to rank (repeat the field); default: the 30 RSICD scene categories",
    ),
    template: str | None = Form(
        None, description="Prompt around each label, with {label}; default 'An aerial photograph of {label}'"
    ),
    ctx: Context = Depends(get_context),
) -> Classification:
    """Image to text: rank labels (or whole captions, with template ``{label}``) for an image,
    zero-shot: each label's cosine to the image and CLIP's softmax probability over the labels."""
    upload = await read_upload(file, ctx.settings.max_upload_bytes) if file is not None else None
    return await analysis.classify(ctx, upload, window_id, labels, template)


@router.get("/v1/tiles/{source}/{z}/{x}/{y}/heatmap", dependencies=[Depends(SEARCH)])
async def heatmap(
    source: str,
    z: int = Path(..., ge=0, le=30),
    x: int = Path(..., ge=0),
    y: int = Path(..., ge=0),
    q: str = Query(..., description="What to look for in the tile, e.g. 'a pier'"),
    grid: int | None = Query(None, ge=1, le=64, description="Cells per tile side (default 16)"),
    ctx: Context = Depends(get_context),
) -> Heatmap:
    """Where in this tile is X: every window of the tile scored against the text (GeoJSON
    features, best first), plus ``grid``: the mean score of the windows covering each cell."""
    return await analysis.heatmap(ctx, source, z, x, y, q, grid)
