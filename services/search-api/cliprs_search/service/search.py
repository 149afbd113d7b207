"""Search: text to image, image to image (upload or window id), with filters, merging and cursors."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cliprs.errors import InvalidInput, NotFound, TooLarge
from cliprs.tiles import parse_bbox, validate_zooms
from cliprs_http.observability import observe_search_timings
from cliprs_index.shardset import SearchEffort
from cliprs_search import cursor as cursors
from cliprs_search import repository
from cliprs_search.confidence import assess
from cliprs_search.context import Context
from cliprs_search.filters import HitFilter, parse_polygon
from cliprs_search.schemas import Confidence, FilterReport, SearchBody, SearchOptions, SearchResults
from cliprs_search.search import SearchRequest, run_search
from cliprs_search.service.shared import (
    Upload,
    check_upload_size,
    hit_feature,
    parse_geojson_text,
    validate_query,
    window_vector,
)
from cliprs_search.settings import SearchSettings

# The model reads this many tokens of a text; longer queries are cut (and told so).
MODEL_TOKENS = 77


@dataclass
class ResolvedOptions:
    """`SearchOptions` checked against the limits: the page, the filter and the cursor."""

    k: int
    flt: HitFilter
    min_score: float
    merge: bool
    collapse: bool
    address: bool
    fingerprint: str
    cursor: cursors.Cursor | None

    @property
    def offset(self) -> int:
        return self.cursor.offset if self.cursor else 0


def resolve_options(
    ctx: Context, options: SearchOptions, query: dict, polygon: dict | None = None
) -> ResolvedOptions:
    """Validated search options; ``query`` identifies the query in pagination cursors."""
    s = ctx.settings
    k = s.default_k if options.k is None else options.k
    if not 1 <= k <= s.max_k:
        raise InvalidInput(f"k must be within 1..{s.max_k}")
    flt = HitFilter(
        area_id=options.area_id,
        zooms=validate_zooms(options.zoom, ctx.core.max_zoom) if options.zoom else None,
        bbox=parse_bbox(options.bbox) if options.bbox else None,
        polygon=parse_polygon(polygon, s.max_polygon_vertices) if polygon is not None else None,
        max_cloud=s.default_max_cloud if options.max_cloud is None else options.max_cloud,
        min_valid=s.default_min_valid if options.min_valid is None else options.min_valid,
    )
    fp = cursors.fingerprint(
        {
            "query": query,
            "filter": flt.fingerprint(),
            "min": options.min_score,
            "merge": options.merge,
            "collapse": options.collapse,
        }
    )
    cur = cursors.decode(options.cursor, fp) if options.cursor else None
    if cur and cur.offset + k > s.max_results:
        raise TooLarge(f"results are paged up to {s.max_results} deep; narrow the query or raise min_score")
    return ResolvedOptions(
        k, flt, options.min_score, options.merge, options.collapse, options.address, fp, cur
    )


async def text_search(ctx: Context, q: str, options: SearchOptions) -> SearchResults:
    """Text to image (``GET /v1/search``)."""
    started = time.perf_counter()
    query = validate_query(q, ctx.settings.max_query_chars)
    return await _text(ctx, query, resolve_options(ctx, options, {"q": query}), started)


async def similar_search(ctx: Context, window_id: int, options: SearchOptions) -> SearchResults:
    """Find similar: the windows that look most like an indexed one (itself first)."""
    started = time.perf_counter()
    opts = resolve_options(ctx, options, {"window_id": window_id})
    vector = window_vector(ctx, window_id)
    return await answer_search(ctx, vector, opts, started, {"window_id": window_id}, prefer=window_id)


async def body_search(ctx: Context, body: SearchBody) -> SearchResults:
    """``POST /v1/search``: text (``q``) or find similar (``window_id``), polygons included."""
    started = time.perf_counter()
    if (body.q is None) == (body.window_id is None):
        raise InvalidInput("give either q (a description) or window_id (find similar), not both or neither")
    if body.q is not None:
        q = validate_query(body.q, ctx.settings.max_query_chars)
        return await _text(ctx, q, resolve_options(ctx, body, {"q": q}, body.polygon), started)
    query = {"window_id": body.window_id}
    opts = resolve_options(ctx, body, query, body.polygon)
    vector = window_vector(ctx, body.window_id)
    return await answer_search(ctx, vector, opts, started, query, prefer=body.window_id)


async def image_search(
    ctx: Context, upload: Upload, options: SearchOptions, polygon: str | None = None
) -> SearchResults:
    """Image to image: the windows that look most like the uploaded picture (``polygon``: a
    GeoJSON filter as text, from a form field)."""
    started = time.perf_counter()
    check_upload_size(upload.data, ctx.settings.max_upload_bytes)
    opts = resolve_options(
        ctx, options, {"image": hashlib.sha256(upload.data).hexdigest()}, parse_geojson_text(polygon)
    )
    vector, info = await ctx.embedder.embed_image(upload.data, upload.filename, upload.content_type)
    return await answer_search(ctx, vector, opts, started, {"image": upload.filename}, model=info["model"])


def text_effort(settings: SearchSettings) -> SearchEffort:
    """How much harder than the tuned default a text query searches (see the settings)."""
    return SearchEffort(nprobe=settings.text_nprobe_scale, rerank=settings.text_rerank_scale)


async def _text(ctx: Context, q: str, opts: ResolvedOptions, started: float) -> SearchResults:
    t = time.perf_counter()
    vector, info = await ctx.embedder.embed_text(q)
    embed_ms = (time.perf_counter() - t) * 1000
    warnings = []
    tokens = (info.get("tokens") or [0])[0]
    if tokens > MODEL_TOKENS:
        warnings.append(f"the query is {tokens} tokens long; the model reads only the first {MODEL_TOKENS}")
    return await answer_search(
        ctx,
        vector,
        opts,
        started,
        q,
        info["model"],
        text_query=True,
        warnings=warnings,
        timings={"embed": embed_ms},
    )


async def answer_search(
    ctx: Context,
    vector: np.ndarray,
    opts: ResolvedOptions,
    started: float,
    query: str | dict[str, Any],
    model: dict[str, Any] | None = None,
    text_query: bool = False,
    warnings: list[str] | None = None,
    timings: dict[str, float] | None = None,
    prefer: int | None = None,
) -> SearchResults:
    """Run the search on one index snapshot and build the GeoJSON answer (``prefer``: find
    similar's window, which stands for the windows identical to it)."""
    s = ctx.settings
    index = ctx.index()
    async with ctx.engine.connect() as conn:
        if opts.flt.area_id is not None and await repository.area(conn, opts.flt.area_id) is None:
            raise NotFound(f"area {opts.flt.area_id} does not exist; GET /v1/areas lists the areas")
        page = await run_search(
            index,
            conn,
            SearchRequest(
                vector,
                opts.k,
                opts.offset,
                opts.flt,
                opts.min_score,
                opts.merge,
                text_effort(s) if text_query else None,
                opts.collapse,
                prefer,
            ),
            s,
            ctx.faiss_pool,
        )
    timings = {**(timings or {}), **page.timings}
    places: list = [None] * len(page.hits)
    if opts.address and ctx.geocoder is not None and page.hits:
        t = time.perf_counter()
        places = await ctx.geocoder.reverse([(h.row["lon"], h.row["lat"]) for h in page.hits])
        timings["geocode"] = (time.perf_counter() - t) * 1000
    features = [
        hit_feature(
            h.row,
            h.score,
            opts.offset + i + 1,
            s.tiler_public_url,
            h.merged if opts.merge else None,
            place,
            identical=h.identical if opts.collapse else None,
            max_identical_ids=s.max_identical_ids,
        )
        for i, (h, place) in enumerate(zip(page.hits, places, strict=True))
    ]
    confidence, low = assess(
        vector,
        page.top_score,
        index.sample_vectors(),
        s.low_score if text_query else None,
        s.low_z,
        s.high_z,
    )
    notes = [
        *(warnings or []),
        *([low] if low else []),
        *([page.incomplete_reason] if page.incomplete_reason else []),
    ]
    if opts.cursor and opts.cursor.version != index.version:
        notes.append(
            f"the index changed since the previous page (version {opts.cursor.version} -> {index.version}); "
            "results may repeat or skip"
        )
    if model is not None and index.manifest.model_id and model.get("loaded") != index.manifest.model_id:
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
    observe_search_timings(timings)
    return SearchResults(
        type="FeatureCollection",
        features=features,
        count=len(features),
        index_version=index.version,
        took_ms=round((time.perf_counter() - started) * 1000, 1),
        query=query,
        model=model,
        next_cursor=next_cursor,
        merged=page.merged,
        identical=page.identical,
        filter=FilterReport(**page.describe(), max_cloud=opts.flt.max_cloud, min_valid=opts.flt.min_valid),
        confidence=Confidence(**confidence),
        warning=" ".join(notes) if notes else None,
        timings_ms={k: round(v, 2) for k, v in timings.items()},
    )
