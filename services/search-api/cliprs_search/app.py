"""The public REST gateway: builds the app's context and includes the routers of
`cliprs_search.routes` (search, zero-shot, areas and jobs, projects, runs and exports, admin)
under the API's version prefix, and health at the root."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import faiss
import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from cliprs.db.engine import async_engine
from cliprs.queue import make_celery
from cliprs.settings import CoreSettings
from cliprs_http import install_error_handlers
from cliprs_http.observability import install_observability
from cliprs_search import metrics as search_metrics
from cliprs_search.access import install_access
from cliprs_search.access.quotas import Quotas
from cliprs_search.context import Context
from cliprs_search.embedder_client import EmbedderClient
from cliprs_search.geocode import make_geocoder
from cliprs_search.index import IndexHolder, Registration
from cliprs_search.routes import API_ROUTERS, health
from cliprs_search.settings import SearchSettings

__all__ = ["create_app"]

log = logging.getLogger("cliprs.search")

DESCRIPTION = """
Search satellite and aerial imagery with text or images; every hit is a GeoJSON feature with its
score, footprint, centre, zoom, tile, image URL and nearest known place.

- **Text to image**: `GET /v1/search?q=...`, or `POST /v1/search` for polygons.
- **Image to image**: `POST /v1/search/image` (upload) or `GET /v1/windows/{id}/similar`.
- **Image to text**: `POST /v1/classify` ranks labels for an image (zero-shot).
- **Where in this tile is X**: `GET /v1/tiles/{source}/{z}/{x}/{y}/heatmap?q=...`.
- **Areas**: `POST /v1/areas` ingests one, `DELETE /v1/areas/{id}` removes it from the index.

Errors are `{"error": {"code", "message"}}`: 400 malformed input, 404 unknown ids, 422 limits and
schema errors, 503 when a dependency or the index is not ready.
"""

TAGS = [
    {"name": "search", "description": "Text and image search over the indexed windows"},
    {"name": "analysis", "description": "Zero-shot labels and per-tile heat maps"},
    {"name": "areas", "description": "Areas, ingestion jobs and deletion"},
    {"name": "index", "description": "The live index version, health and readiness"},
]


def build_context(
    core: CoreSettings, settings: SearchSettings, embedder_transport: httpx.AsyncBaseTransport | None = None
) -> Context:
    """The app's state; nothing connects yet (the engine, Celery and HTTP clients are lazy)."""
    registration = Registration(core.redis_url, core.redis_namespace, settings.searcher_ttl_s)
    return Context(
        core=core,
        settings=settings,
        holder=IndexHolder(core.index_dir, registration),
        engine=async_engine(core.database_url),
        embedder=EmbedderClient(
            settings.embedder_url,
            transport=embedder_transport,
            token=settings.embedder_token.get_secret_value() if settings.embedder_token else None,
        ),
        celery=make_celery("cliprs-search", core),
        quotas=Quotas(core.redis_url, core.redis_namespace),
    )


def operation_id(route: APIRoute) -> str:
    """A stable OpenAPI operation id, ``<tag>-<handler name>`` (e.g. ``search-search_text``):
    it does not change with the path or the method, so generated clients keep their names."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(
    core: CoreSettings | None = None,
    settings: SearchSettings | None = None,
    embedder_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The app; ``embedder_transport`` lets tests run the embedder in-process."""
    core = core or CoreSettings()
    settings = settings or SearchSettings()
    ctx = build_context(core, settings, embedder_transport)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        # OpenMP thread counts are per calling thread: this one is the event loop's, where the
        # offline geocoder's small FAISS index is searched (the search pool sets its own).
        faiss.omp_set_num_threads(settings.faiss_threads)
        ctx.geocoder = await asyncio.to_thread(make_geocoder, settings)
        await asyncio.to_thread(ctx.holder.load)
        ctx.holder.follow(core.redis_url, core.index_channel, settings.index_poll_s, settings.heartbeat_s)
        yield
        ctx.holder.stop()
        await ctx.embedder.aclose()
        if ctx.geocoder is not None:
            await ctx.geocoder.aclose()
        await ctx.engine.dispose()
        ctx.faiss_pool.shutdown(wait=False)
        await ctx.quotas.aclose()

    app = FastAPI(
        title="CLIP-RS search API",
        version="0.2.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=TAGS,
        generate_unique_id_function=operation_id,
    )
    app.add_middleware(
        CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
    )
    install_error_handlers(app)
    app.state.ctx = ctx
    for router in API_ROUTERS:
        app.include_router(router)  # each under routes.deps.API_PREFIX
    app.include_router(health.router)
    install_access(app)  # 401/403/429 answers and the audit trail (the rules are on the routers)
    # Last: the outermost middleware, so every answer (audit, CORS, 401/429) has its request id and counts.
    install_observability(app, "search-api", search_metrics.collectors(ctx))
    return app
