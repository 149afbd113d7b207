"""Map tiles for the web page and the API, and the exact pixels of indexed windows."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from cliprs_http.schemas import ERROR_RESPONSES
from cliprs_tiler import service
from cliprs_tiler.routes.deps import get_context, require_read_key
from cliprs_tiler.service import TileImage, TilerContext

# Imagery: with TILER_REQUIRE_KEY_FOR_READS, only for a read key.
router = APIRouter(tags=["tiles"], responses=ERROR_RESPONSES, dependencies=[Depends(require_read_key)])

MEDIA = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
CACHE_CONTROL = "public, max-age=86400"  # a tile's bytes never change once cached


@router.get(
    "/tiles/{source}/{z}/{x}/{y}",
    response_class=Response,
    response_model=None,
    responses={
        200: {"content": {media: {} for media in MEDIA.values()}, "description": "The tile image"},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
    },
)
async def tile(
    source: str, z: int, x: int, y: str, request: Request, ctx: TilerContext = Depends(get_context)
) -> Response:
    """A map tile of an indexed area (``y`` may carry an extension, e.g. ``1234.png``)."""
    got = await service.map_tile(ctx, source, z, x, service.parse_tile_y(y))
    return _tile_response(request, got)


def _tile_response(request: Request, got: TileImage) -> Response:
    headers = {"ETag": got.etag, "Cache-Control": CACHE_CONTROL}
    if request.headers.get("if-none-match") == got.etag:
        return Response(status_code=304, headers=headers)
    return Response(got.data, media_type=MEDIA[got.ext], headers=headers)


@router.get(
    "/windows/{window_id}.png",
    response_class=Response,
    response_model=None,
    responses={200: {"content": {"image/png": {}}, "description": "The window's pixels"}},
)
async def window_png(window_id: int, ctx: TilerContext = Depends(get_context)) -> Response:
    """The exact pixels of an indexed window as PNG, spliced from neighbouring tiles when the
    window straddles tile edges."""
    png = await service.window_png(ctx, window_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": CACHE_CONTROL})
