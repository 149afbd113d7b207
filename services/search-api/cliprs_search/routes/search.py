"""Search: text to image, image to image (upload or window id), with filters, merging and cursors."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from pydantic import BaseModel, Field

from cliprs.errors import InvalidInput, NotFound, TooLarge
from cliprs.tiles import parse_bbox, validate_zooms
from cliprs_search import cursor as cursors
from cliprs_search.confidence import assess
from cliprs_search.context import Context, get_context
from cliprs_search.filters import HitFilter, parse_polygon
from cliprs_search.queries import feature
from cliprs_search.search import SearchPage, SearchRequest, run_search

router = APIRouter(tags=["search"])

_MEANINGFUL = re.compile(r"\w", re.UNICODE)
_WORD = re.compile(r"\w+", re.UNICODE)
# Words that carry no visual meaning on their own: a query made only of them is refused.
FILLER_WORDS = frozenset(
    "a an the of and or in on at to for with without near by from into onto over under above below "
    "this that these those some any it its is are be there here what where which who show find me "
    "please image photo picture".split()
)

K_HELP = "How many results per page (1..max_k)"
CURSOR_HELP = "The next_cursor of the previous page (same query and filters)"
ZOOM_HELP = "Only these zoom levels (repeatable)"
BBOX_HELP = "min_lon,min_lat,max_lon,max_lat"
MIN_SCORE_HELP = "Minimum cosine similarity (the UI's sensitivity)"
MERGE_HELP = "Merge overlapping windows that hit the same object into one result"
ADDRESS_HELP = "Name the nearest known place of each hit (reverse geocoding)"


def validate_query(q: str, max_chars: int) -> str:
    """The stripped query, or `InvalidInput` when there is nothing the model could look for."""
    q = q.strip()
    if not q:
        raise InvalidInput("the query is empty; describe what to look for, e.g. 'boats near a pier'")
    if len(q) > max_chars:
        raise TooLarge(f"the query has {len(q)} characters; the limit is {max_chars}")
    if not _MEANINGFUL.search(q):
        raise InvalidInput("the query has no letters or digits; describe what to look for in words")
    words = [w.lower() for w in _WORD.findall(q)]
    if all(w in FILLER_WORDS for w in words):
        raise InvalidInput(
            f"the query has only filler words ({' '.join(words)!r}); say what to look for, e.g. 'boats near a pier'"
        )
    return q


class SearchBody(BaseModel):
    """A search with every option, polygons included (JSON body of ``POST /v1/search``)."""

    q: str | None = Field(
        None, description="What to look for (text to image)", examples=["boats near a pier"]
    )
    window_id: int | None = Field(None, description="Find windows similar to this indexed one (instead of q)")
    k: int | None = Field(None, description=K_HELP)
    cursor: str | None = Field(None, description=CURSOR_HELP)
    area_id: int | None = None
    zoom: list[int] | None = Field(None, description="Only these zoom levels")
    bbox: list[float] | None = Field(None, description="[min_lon, min_lat, max_lon, max_lat]")
    polygon: dict | None = Field(
        None,
        description="GeoJSON Polygon or MultiPolygon (or a Feature holding one), lon/lat; hits intersect it",
        examples=[
            {"type": "Polygon", "coordinates": [[[-75.7, 37.6], [-75.5, 37.6], [-75.6, 37.7], [-75.7, 37.6]]]}
        ],
    )
    min_score: float = Field(-1.0, ge=-1.0, le=1.0, description=MIN_SCORE_HELP)
    merge: bool = Field(True, description=MERGE_HELP)
    address: bool = Field(True, description=ADDRESS_HELP)


@dataclass
class Options:
    k: int
    flt: HitFilter
    min_score: float
    merge: bool
    address: bool
    fingerprint: str
    cursor: cursors.Cursor | None

    @property
    def offset(self) -> int:
        return self.cursor.offset if self.cursor else 0


def options(
    ctx: Context,
    query: dict,
    *,
    k: int | None,
    cursor: str | None,
    area_id: int | None,
    zoom: list[int] | None,
    bbox: str | list[float] | None,
    polygon: dict | None,
    min_score: float,
    merge: bool,
    address: bool,
) -> Options:
    """Validated search options; ``query`` identifies the query in pagination cursors."""
    s = ctx.settings
    k = s.default_k if k is None else k
    if not 1 <= k <= s.max_k:
        raise InvalidInput(f"k must be within 1..{s.max_k}")
    flt = HitFilter(
        area_id=area_id,
        zooms=validate_zooms(zoom, ctx.core.max_zoom) if zoom else None,
        bbox=parse_bbox(bbox) if bbox else None,
        polygon=parse_polygon(polygon, s.max_polygon_vertices) if polygon is not None else None,
    )
    fp = cursors.fingerprint({"query": query, "filter": flt.fingerprint(), "min": min_score, "merge": merge})
    cur = cursors.decode(cursor, fp) if cursor else None
    if cur and cur.offset + k > s.max_results:
        raise TooLarge(f"results are paged up to {s.max_results} deep; narrow the query or raise min_score")
    return Options(k, flt, min_score, merge, address, fp, cur)


async def answer(
    ctx: Context,
    vector: np.ndarray,
    opts: Options,
    started: float,
    extra: dict,
    text_query: bool = False,
    warnings: list[str] | None = None,
    timings: dict[str, float] | None = None,
) -> dict:
    """Run the search on one index snapshot and build the GeoJSON answer."""
    index = ctx.index()
    async with ctx.engine.connect() as conn:
        page: SearchPage = await run_search(
            index,
            conn,
            SearchRequest(vector, opts.k, opts.offset, opts.flt, opts.min_score, opts.merge),
            ctx.settings,
            ctx.faiss_pool,
        )
    timings = {**(timings or {}), **page.timings}
    places: list = [None] * len(page.hits)
    if opts.address and ctx.geocoder is not None and page.hits:
        t = time.perf_counter()
        found = await ctx.geocoder.reverse([(h.row["lon"], h.row["lat"]) for h in page.hits])
        places = [p.as_dict() if p else None for p in found]
        timings["geocode"] = (time.perf_counter() - t) * 1000
    tiler = ctx.settings.tiler_public_url
    features = [
        feature(h.row, h.score, opts.offset + i + 1, tiler, h.merged if opts.merge else None, place)
        for i, (h, place) in enumerate(zip(page.hits, places, strict=True))
    ]
    s = ctx.settings
    confidence, low = assess(
        vector,
        page.top_score,
        index.sample.vectors if index.sample else None,
        s.low_score if text_query else None,
        s.low_z,
        s.high_z,
    )
    notes = [*(warnings or []), *([low] if low else [])]
    if opts.cursor and opts.cursor.version != index.version:
        notes.append(
            f"the index changed since the previous page (version {opts.cursor.version} -> {index.version}); "
            "results may repeat or skip"
        )
    model = extra.get("model")
    if isinstance(model, dict) and index.manifest.model_id and model.get("loaded") != index.manifest.model_id:
        notes.append(
            f"the index holds vectors of {index.manifest.model_id!r} but the query was embedded with "
            f"{model.get('loaded')!r}; scores are not comparable"
        )
    has_next = page.has_more and opts.offset + 2 * opts.k <= s.max_results
    next_cursor = (
        cursors.encode(cursors.Cursor(opts.offset + opts.k, index.version, opts.fingerprint))
        if has_next
        else None
    )
    return {
        "type": "FeatureCollection",
        "features": features,
        "count": len(features),
        "index_version": index.version,
        "took_ms": round((time.perf_counter() - started) * 1000, 1),
        **extra,
        "next_cursor": next_cursor,
        "merged": page.merged,
        "filter": page.describe(),
        "confidence": confidence,
        "warning": " ".join(notes) if notes else None,
        "timings_ms": {k: round(v, 2) for k, v in timings.items()},
    }


async def text_search(ctx: Context, q: str, opts: Options, started: float) -> dict:
    t = time.perf_counter()
    vector, info = await ctx.embedder.embed_text(q)
    embed_ms = (time.perf_counter() - t) * 1000
    warnings = []
    tokens = (info.get("tokens") or [0])[0]
    if tokens > 77:
        warnings.append(f"the query is {tokens} tokens long; the model reads only the first 77")
    return await answer(
        ctx, vector, opts, started, {"query": q, "model": info["model"]}, True, warnings, {"embed": embed_ms}
    )


def window_vector(ctx: Context, window_id: int) -> np.ndarray:
    vector = ctx.index().vector_of(window_id)
    if vector is None:
        raise NotFound(f"window {window_id} is not in the index")
    return vector


class SearchParams:
    """The query-string options shared by the GET and upload searches (one definition, so the
    three endpoints cannot drift apart)."""

    def __init__(
        self,
        k: int | None = Query(None, description=K_HELP),
        cursor: str | None = Query(None, description=CURSOR_HELP),
        area_id: int | None = None,
        zoom: list[int] | None = Query(None, description=ZOOM_HELP),
        bbox: str | None = Query(None, description=BBOX_HELP),
        min_score: float = Query(-1.0, ge=-1.0, le=1.0, description=MIN_SCORE_HELP),
        merge: bool = Query(True, description=MERGE_HELP),
        address: bool = Query(True, description=ADDRESS_HELP),
    ):
        self.k, self.cursor, self.area_id, self.zoom, self.bbox = k, cursor, area_id, zoom, bbox
        self.min_score, self.merge, self.address = min_score, merge, address

    def options(self, ctx: Context, query: dict, polygon: dict | None = None) -> Options:
        return options(
            ctx, query, k=self.k, cursor=self.cursor, area_id=self.area_id, zoom=self.zoom, bbox=self.bbox,
            polygon=polygon, min_score=self.min_score, merge=self.merge, address=self.address,
        )  # fmt: skip


@router.get("/v1/search")
async def search_text(
    q: str = Query(..., description="What to look for, e.g. 'boats near a pier'"),
    params: SearchParams = Depends(),
    ctx: Context = Depends(get_context),
) -> dict:
    """Text to image: the windows that best match a description, as GeoJSON, best first.

    Each answer says how it filtered (``filter``), how confident it is (``confidence``, and a
    ``warning`` when the query seems to mean nothing), how many windows it merged, and gives a
    ``next_cursor`` while more results exist. Polygons: ``POST /v1/search``."""
    started = time.perf_counter()
    query = validate_query(q, ctx.settings.max_query_chars)
    opts = params.options(ctx, {"q": query})
    return await text_search(ctx, query, opts, started)


@router.post("/v1/search")
async def search_body(body: SearchBody, ctx: Context = Depends(get_context)) -> dict:
    """Text to image (``q``) or find similar (``window_id``) with every filter, GeoJSON polygons
    included: the same answer as ``GET /v1/search``."""
    started = time.perf_counter()
    if (body.q is None) == (body.window_id is None):
        raise InvalidInput("give either q (a description) or window_id (find similar), not both or neither")
    query = (
        {"q": validate_query(body.q, ctx.settings.max_query_chars)}
        if body.q is not None
        else {"window_id": body.window_id}
    )
    opts = options(
        ctx, query, k=body.k, cursor=body.cursor, area_id=body.area_id, zoom=body.zoom, bbox=body.bbox,
        polygon=body.polygon, min_score=body.min_score, merge=body.merge, address=body.address,
    )  # fmt: skip
    if body.q is not None:
        return await text_search(ctx, query["q"], opts, started)
    vector = window_vector(ctx, body.window_id)
    return await answer(ctx, vector, opts, started, {"query": query})


@router.post("/v1/search/image")
async def search_image(
    file: UploadFile = File(..., description="A PNG, JPEG or WebP image"),
    polygon: str | None = Form(None, description="Optional GeoJSON Polygon/MultiPolygon filter (JSON text)"),
    params: SearchParams = Depends(),
    ctx: Context = Depends(get_context),
) -> dict:
    """Image to image: the windows that look most like the uploaded picture."""
    import json

    started = time.perf_counter()
    data = await file.read(ctx.settings.max_upload_bytes + 1)
    if len(data) > ctx.settings.max_upload_bytes:
        raise TooLarge(f"the upload is over the limit of {ctx.settings.max_upload_bytes} bytes")
    try:
        poly = json.loads(polygon) if polygon else None
    except ValueError:
        raise InvalidInput('polygon must be GeoJSON text, e.g. {"type": "Polygon", ...}') from None
    opts = params.options(ctx, {"image": hashlib.sha256(data).hexdigest()}, polygon=poly)
    vector, info = await ctx.embedder.embed_image(
        data, file.filename or "upload", file.content_type or "application/octet-stream"
    )
    return await answer(
        ctx, vector, opts, started, {"query": {"image": file.filename}, "model": info["model"]}
    )


@router.get("/v1/windows/{window_id}/similar")
async def search_similar(
    window_id: int,
    params: SearchParams = Depends(),
    ctx: Context = Depends(get_context),
) -> dict:
    """Find similar: the windows that look most like an indexed window (itself first)."""
    started = time.perf_counter()
    opts = params.options(ctx, {"window_id": window_id})
    vector = window_vector(ctx, window_id)
    return await answer(ctx, vector, opts, started, {"query": {"window_id": window_id}})
