"""Search: text to image, image to image (upload or window id), with filters, merging and cursors."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from cliprs import query_sample
from cliprs.errors import InvalidInput, NotFound, TooLarge
from cliprs.tiles import parse_bbox, validate_zooms
from cliprs_http.observability import observe_search_timings
from cliprs_index.shardset import SearchEffort
from cliprs_search.context import Context
from cliprs_search.filters import HitFilter, parse_polygon
from cliprs_search.index import LoadedIndex
from cliprs_search.ranking import cursor as cursors
from cliprs_search.ranking.confidence import assess
from cliprs_search.ranking.pipeline import SearchPage, SearchRequest, run_search
from cliprs_search.repository import areas as areas_repo
from cliprs_search.schemas.search import (
    Confidence,
    FilterReport,
    HitFeature,
    Place,
    SearchBody,
    SearchOptions,
    SearchResults,
)
from cliprs_search.service.shared import (
    Upload,
    check_upload_size,
    hit_feature,
    parse_geojson_text,
    validate_query,
    window_vector,
)
from cliprs_search.settings import SearchSettings

log = logging.getLogger("cliprs.search")

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
    cur = cursors.decode(options.cursor, fp, s.max_candidates) if options.cursor else None
    if cur and cur.offset + k > s.max_results:
        raise TooLarge(f"results are paged up to {s.max_results} deep; narrow the query or raise min_score")
    return ResolvedOptions(
        k, flt, options.min_score, options.merge, options.collapse, options.address, fp, cur
    )


@dataclass
class Query:
    """What a search looks for: its vector, how the answer names it, and what embedding it
    already told (model, warnings, timings)."""

    vector: np.ndarray
    echo: str | dict[str, Any]  # the answer's ``query``
    started: float  # time.perf_counter() when the request arrived
    model: dict[str, Any] | None = None  # the embedder's model, when it embedded the query
    text: bool = False  # a text query: the text's search effort and its low-score warning
    text_effort: bool = False  # the vector holds a text (refine): the text's effort without the warning
    prefer: int | None = None  # find similar's window, standing for the windows identical to it
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


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
    return await answer_search(ctx, Query(vector, {"window_id": window_id}, started, prefer=window_id), opts)


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
    return await answer_search(ctx, Query(vector, query, started, prefer=body.window_id), opts)


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
    return await answer_search(ctx, Query(vector, {"image": upload.filename}, started, info["model"]), opts)


def text_effort(settings: SearchSettings) -> SearchEffort:
    """A text query's effort: the codec's text tuning, scaled by the settings."""
    return SearchEffort(nprobe=settings.text_nprobe_scale, rerank=settings.text_rerank_scale, text=True)


async def _text(ctx: Context, q: str, opts: ResolvedOptions, started: float) -> SearchResults:
    t = time.perf_counter()
    vector, info = await ctx.embedder.embed_text(q)
    embed_ms = (time.perf_counter() - t) * 1000
    warnings = []
    tokens = (info.get("tokens") or [0])[0]
    if tokens > MODEL_TOKENS:
        warnings.append(f"the query is {tokens} tokens long; the model reads only the first {MODEL_TOKENS}")
    query = Query(
        vector, q, started, info["model"], text=True, warnings=warnings, timings={"embed": embed_ms}
    )
    await keep_in_sample(ctx, vector, info["model"])
    return await answer_search(ctx, query, opts)


async def keep_in_sample(ctx: Context, vector: np.ndarray, model: dict[str, Any]) -> None:
    """Keep a text query's vector for the indexer's tuning (`cliprs.query_sample`); a search
    never fails for it."""
    keep, model_id = ctx.settings.query_sample_size, model.get("loaded")
    if keep <= 0 or not model_id:
        return
    try:
        await query_sample.record(ctx.quotas.client, ctx.core.redis_namespace, model_id, vector, keep)
    except (RedisError, OSError) as exc:
        log.warning("a text query was not kept for the tuning: %s", type(exc).__name__)


async def answer_search(ctx: Context, query: Query, opts: ResolvedOptions) -> SearchResults:
    """Rank on one index snapshot, then build the GeoJSON answer: the hits with their places,
    how confident the ranking is, what the caller should know, and the next page's cursor."""
    index = ctx.index()
    page = await rank(ctx, index, query, opts)
    timings = {**query.timings, **page.timings}
    places = await find_places(ctx, opts, page, timings)
    confidence, low = assess(
        query.vector,
        page.top_score,
        index.sample_vectors(),
        ctx.settings.low_score if query.text else None,
        ctx.settings.low_z,
        ctx.settings.high_z,
    )
    features = hit_features(ctx.settings, opts, page, places)
    observe_search_timings(timings)
    return SearchResults(
        type="FeatureCollection",
        features=features,
        count=len(features),
        index_version=index.version,
        took_ms=round((time.perf_counter() - query.started) * 1000, 1),
        query=query.echo,
        model=query.model,
        next_cursor=next_cursor(ctx.settings, opts, page, index),
        merged=page.merged,
        identical=page.identical,
        filter=FilterReport(**page.describe(), max_cloud=opts.flt.max_cloud, min_valid=opts.flt.min_valid),
        confidence=Confidence(**confidence),
        warning=notes(query, opts, index, page, low),
        timings_ms={k: round(v, 2) for k, v in timings.items()},
    )


async def rank(ctx: Context, index: LoadedIndex, query: Query, opts: ResolvedOptions) -> SearchPage:
    """The page of the ranking (`cliprs_search.ranking`); `NotFound` for an unknown area."""
    cur = opts.cursor
    # A cursor fixes the effort and the depth the first page ranked at, and where it ended.
    effort = cur.probe if cur is not None and cur.probe is not None else None
    if effort is None and (query.text or query.text_effort):
        effort = text_effort(ctx.settings)
    request = SearchRequest(
        query.vector,
        opts.k,
        opts.offset,
        opts.flt,
        opts.min_score,
        opts.merge,
        effort,
        opts.collapse,
        query.prefer,
        depth=cur.depth if cur is not None else None,
        after=cur.after if cur is not None else None,
    )
    async with ctx.engine.connect() as conn:
        if opts.flt.area_id is not None and await areas_repo.area(conn, opts.flt.area_id) is None:
            raise NotFound(f"area {opts.flt.area_id} does not exist; GET /v1/areas lists the areas")
        return await run_search(index, conn, request, ctx.settings, ctx.faiss_pool)


async def find_places(
    ctx: Context, opts: ResolvedOptions, page: SearchPage, timings: dict[str, float]
) -> list[Place | None]:
    """Each hit's nearest known place (reverse geocoding), when asked for and available."""
    if not (opts.address and ctx.geocoder is not None and page.hits):
        return [None] * len(page.hits)
    t = time.perf_counter()
    places = await ctx.geocoder.reverse([(h.row["lon"], h.row["lat"]) for h in page.hits])
    timings["geocode"] = (time.perf_counter() - t) * 1000
    return places


def hit_features(
    s: SearchSettings, opts: ResolvedOptions, page: SearchPage, places: list[Place | None]
) -> list[HitFeature]:
    """The page's hits as GeoJSON features, ranked from the page's offset."""
    return [
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


def notes(
    query: Query, opts: ResolvedOptions, index: LoadedIndex, page: SearchPage, low: str | None
) -> str | None:
    """The answer's warning: what embedding said, a low confidence, a short page, an index that
    changed between pages, or a query embedded by another model than the index's."""
    said = [
        *query.warnings,
        *([low] if low else []),
        *([page.incomplete_reason] if page.incomplete_reason else []),
    ]
    if opts.cursor and opts.cursor.version != index.version:
        said.append(
            f"the index changed since the previous page (version {opts.cursor.version} -> {index.version}); "
            "results may repeat or skip"
        )
    model = query.model
    if model is not None and index.manifest.model_id and model.get("loaded") != index.manifest.model_id:
        said.append(
            f"the index holds vectors of {index.manifest.model_id!r} but the query was embedded with "
            f"{model.get('loaded')!r}; scores are not comparable"
        )
    return " ".join(said) if said else None


def next_cursor(s: SearchSettings, opts: ResolvedOptions, page: SearchPage, index: LoadedIndex) -> str | None:
    """The cursor of the next page, while the ranking continues within ``max_results``."""
    if not (page.has_more and opts.offset + 2 * opts.k <= s.max_results):
        return None
    return cursors.encode(
        cursors.Cursor(
            opts.offset + opts.k, index.version, opts.fingerprint, page.depth, page.after, page.probe
        )
    )
