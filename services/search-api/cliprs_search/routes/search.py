"""Search: text to image, image to image (upload or window id), with filters, merging and cursors."""

from __future__ import annotations

from typing import Annotated

from fastapi import File, Form, Query, UploadFile

from cliprs_search.access import SEARCH, UPLOAD
from cliprs_search.routes.deps import CtxDep, api_router, read_upload
from cliprs_search.schemas.search import SearchBody, SearchOptions, SearchResults
from cliprs_search.service import search

# Searches spend the search bucket; uploads (bigger, embedded on the spot) the upload bucket.
router = api_router("search", SEARCH)
uploads = api_router("search", UPLOAD)

# The shared options, read from the query string.
QueryOptions = Annotated[SearchOptions, Query()]


@router.get("/search")
async def search_text(
    q: Annotated[str, Query(description="What to look for, e.g. 'boats near a pier'")],
    options: QueryOptions,
    ctx: CtxDep,
) -> SearchResults:
    """Text to image: the windows that best match a description, as GeoJSON, best first.

    Each answer says how it filtered (``filter``), how confident it is (``confidence``, and a
    ``warning`` when the query seems to mean nothing), how many windows it merged, and gives a
    ``next_cursor`` while more results exist. Polygons: ``POST /v1/search``."""
    return await search.text_search(ctx, q, options)


@router.post("/search")
async def search_body(body: SearchBody, ctx: CtxDep) -> SearchResults:
    """Text to image (``q``) or find similar (``window_id``) with every filter, GeoJSON polygons
    included: the same answer as ``GET /v1/search``."""
    return await search.body_search(ctx, body)


@uploads.post("/search/image")
async def search_image(
    file: Annotated[UploadFile, File(description="A PNG, JPEG or WebP image")],
    options: QueryOptions,
    ctx: CtxDep,
    polygon: str | None = Form(None, description="Optional GeoJSON Polygon/MultiPolygon filter (JSON text)"),
) -> SearchResults:
    """Image to image: the windows that look most like the uploaded picture."""
    upload = await read_upload(file, ctx.settings.max_upload_bytes)
    return await search.image_search(ctx, upload, options, polygon)


@router.get("/windows/{window_id}/similar")
async def search_similar(window_id: int, options: QueryOptions, ctx: CtxDep) -> SearchResults:
    """Find similar: the windows that look most like an indexed window (itself first)."""
    return await search.similar_search(ctx, window_id, options)
