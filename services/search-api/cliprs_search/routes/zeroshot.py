"""Zero-shot: image to text (labels for an image or a window) and "where in this tile is X"."""

from __future__ import annotations

from fastapi import File, Form, Path, Query, UploadFile

from cliprs_search.access import SEARCH, SEARCH_OR_UPLOAD
from cliprs_search.routes.deps import CtxDep, api_router, read_upload
from cliprs_search.schemas.zeroshot import Classification, Heatmap
from cliprs_search.service import zeroshot

router = api_router("analysis", SEARCH)
# Labels for an uploaded image spend the upload bucket (it is embedded on the spot, as an image
# search's is); for an indexed window, the search bucket.
classify_router = api_router("analysis", SEARCH_OR_UPLOAD)


@classify_router.post("/classify")
async def classify(
    ctx: CtxDep,
    file: UploadFile | None = File(None, description="A PNG, JPEG or WebP image (or give window_id)"),
    window_id: int | None = Form(None, description="An indexed window to label (instead of a file)"),
    labels: list[str] | None = Form(
        None,
        description="Labels or captions to rank (repeat the field); default: the 30 RSICD scene categories",
    ),
    template: str | None = Form(
        None, description="Prompt around each label, with {label}; default 'An aerial photograph of {label}'"
    ),
) -> Classification:
    """Image to text: rank labels (or whole captions, with template ``{label}``) for an image,
    zero-shot: each label's cosine to the image and CLIP's softmax probability over the labels."""
    upload = await read_upload(file, ctx.settings.max_upload_bytes) if file is not None else None
    return await zeroshot.classify(ctx, upload, window_id, labels, template)


@router.get("/tiles/{source}/{z}/{x}/{y}/heatmap")
async def heatmap(
    source: str,
    ctx: CtxDep,
    z: int = Path(..., ge=0, le=30),
    x: int = Path(..., ge=0),
    y: int = Path(..., ge=0),
    q: str = Query(..., description="What to look for in the tile, e.g. 'a pier'"),
    grid: int | None = Query(None, ge=1, le=64, description="Cells per tile side (default 16)"),
) -> Heatmap:
    """Where in this tile is X: every window of the tile scored against the text (GeoJSON
    features, best first), plus ``grid``: the mean score of the windows covering each cell."""
    return await zeroshot.heatmap(ctx, source, z, x, y, q, grid)
