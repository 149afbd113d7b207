"""The public REST gateway (versioned under /v1): areas, ingestion progress and search."""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, File, Query, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from cliprs.db.engine import async_engine
from cliprs.errors import InvalidInput, NotFound, TooLarge, Unavailable
from cliprs.http import install_error_handlers, readiness_response, redis_ping
from cliprs.queue import TASK_FETCH_AREA, make_celery
from cliprs.settings import CoreSettings
from cliprs.tiles import check_plan_size, parse_bbox, validate_zooms
from cliprs_search.embedder_client import EmbedderClient
from cliprs_search.index import IndexHolder
from cliprs_search.queries import (
    AREA_COLUMNS,
    JOB_COLUMNS,
    HitFilter,
    area_dict,
    feature,
    job_dict,
    window_rows,
)
from cliprs_search.settings import SearchSettings

_MEANINGFUL = re.compile(r"\w", re.UNICODE)


class AreaRequest(BaseModel):
    name: str = Field(..., min_length=1, max_length=200, examples=["Chincoteague harbour"])
    bbox: list[float] = Field(
        ..., description="[min_lon, min_lat, max_lon, max_lat]", examples=[[-75.6, 37.6, -75.5, 37.7]]
    )
    zooms: list[int] = Field(..., examples=[[12, 13, 14]])
    source: str = Field("demo", description="A configured tile source name")


def validate_query(q: str, max_chars: int) -> str:
    """The stripped query, or `InvalidInput` when there is nothing the model could look for."""
    q = q.strip()
    if not q:
        raise InvalidInput("the query is empty; describe what to look for, e.g. 'boats near a pier'")
    if len(q) > max_chars:
        raise TooLarge(f"the query has {len(q)} characters; the limit is {max_chars}")
    if not _MEANINGFUL.search(q):
        raise InvalidInput("the query has no letters or digits; describe what to look for in words")
    return q


def create_app(core: CoreSettings | None = None, settings: SearchSettings | None = None) -> FastAPI:
    core = core or CoreSettings()
    settings = settings or SearchSettings()
    holder = IndexHolder(core.index_dir)
    engine = async_engine(core.database_url)
    embedder = EmbedderClient(settings.embedder_url)
    celery = make_celery("cliprs-search", core)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await asyncio.to_thread(holder.load)
        holder.follow(core.redis_url, core.index_channel, settings.index_poll_s)
        yield
        holder.stop()
        await embedder.aclose()
        await engine.dispose()

    app = FastAPI(
        title="CLIP-RS search API",
        version="0.1.0",
        description="Search satellite imagery with text or images; results are GeoJSON.",
        lifespan=lifespan,
    )
    app.add_middleware(
        CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
    )
    install_error_handlers(app)
    app.state.index = holder

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        report: dict = {}
        ok = True

        async def check(name: str, coro) -> object:
            nonlocal ok
            start = time.perf_counter()
            try:
                detail = await coro
                report[name] = {"ok": True, "ms": round((time.perf_counter() - start) * 1000, 1)}
                return detail
            except Exception as exc:
                ok = False
                report[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                return None

        async def db() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        await check("database", db())
        await check("redis", asyncio.to_thread(redis_ping, core.redis_url))
        emb = await check("embedder", embedder.readyz())
        model = (emb or {}).get("model")
        if emb is not None and emb.get("status") != "ready":
            ok = False
            report["embedder"] = {
                "ok": False,
                "error": "the embedder is not ready",
                "detail": emb.get("checks"),
            }
        current = holder.current
        report["index"] = {
            "ok": True,
            "version": current.version if current else None,
            "vectors": current.manifest.vector_count if current else 0,
        }
        return readiness_response(ok, report, model=model)

    # ---------------------------------------------------------------- areas and jobs

    @app.post("/v1/areas", status_code=202)
    async def create_area(body: AreaRequest) -> dict:
        """Create an area and start ingesting it (fetch, embed, index); poll its job."""
        bbox = parse_bbox(body.bbox)
        zooms = validate_zooms(body.zooms, core.max_zoom)
        if body.source not in core.tile_sources:
            known = ", ".join(sorted(core.tile_sources))
            raise InvalidInput(f"unknown tile source {body.source!r}; configured sources: {known}")
        planned = check_plan_size(bbox, zooms, core.max_tiles_per_area)
        async with engine.begin() as conn:
            area_id = (
                await conn.execute(
                    text(
                        "INSERT INTO areas (name, bbox, zooms, source, status) VALUES "
                        "(:name, ST_GeomFromText(:wkt, 4326), :zooms, :source, 'pending') RETURNING id"
                    ),
                    {"name": body.name.strip(), "wkt": bbox.wkt(), "zooms": zooms, "source": body.source},
                )
            ).scalar_one()
            job_id = (
                await conn.execute(
                    text("INSERT INTO ingest_jobs (area_id, tiles_planned) VALUES (:a, :n) RETURNING id"),
                    {"a": area_id, "n": planned},
                )
            ).scalar_one()
        await asyncio.to_thread(celery.send_task, TASK_FETCH_AREA, args=[job_id])
        return {"area": await _area(area_id), "job": await _job(job_id)}

    async def _area(area_id: int) -> dict:
        async with engine.connect() as conn:
            r = (
                await conn.execute(
                    text(f"SELECT {AREA_COLUMNS} FROM areas a WHERE a.id = :id"), {"id": area_id}
                )
            ).one_or_none()
        if r is None:
            raise NotFound(f"no area {area_id}")
        return area_dict(r)

    async def _job(job_id: int) -> dict:
        async with engine.connect() as conn:
            r = (
                await conn.execute(
                    text(f"SELECT {JOB_COLUMNS} FROM ingest_jobs j WHERE j.id = :id"), {"id": job_id}
                )
            ).one_or_none()
        if r is None:
            raise NotFound(f"no ingest job {job_id}")
        return job_dict(r)

    @app.get("/v1/areas")
    async def list_areas() -> list[dict]:
        """Every area with its latest ingest job."""
        async with engine.connect() as conn:
            rows = (await conn.execute(text(f"SELECT {AREA_COLUMNS} FROM areas a ORDER BY a.id"))).all()
            jobs = (
                await conn.execute(
                    text(
                        f"SELECT DISTINCT ON (j.area_id) {JOB_COLUMNS} FROM ingest_jobs j ORDER BY j.area_id, j.id DESC"
                    )
                )
            ).all()
        latest = {j.area_id: job_dict(j) for j in jobs}
        return [{**area_dict(r), "job": latest.get(r.id)} for r in rows]

    @app.get("/v1/areas/{area_id}")
    async def get_area(area_id: int) -> dict:
        return await _area(area_id)

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: int) -> dict:
        """Progress of an ingest job: state and tile/window counts."""
        return await _job(job_id)

    # ---------------------------------------------------------------- search

    def _filter(area_id: int | None, zoom: list[int] | None, bbox: str | None) -> HitFilter:
        return HitFilter(
            area_id=area_id,
            zooms=validate_zooms(zoom, core.max_zoom) if zoom else None,
            bbox=parse_bbox(bbox) if bbox else None,
        )

    def _k(k: int | None) -> int:
        k = settings.default_k if k is None else k
        if not 1 <= k <= settings.max_k:
            raise InvalidInput(f"k must be within 1..{settings.max_k}")
        return k

    async def _search(vector, k: int, flt: HitFilter, min_score: float, started: float, extra: dict) -> dict:
        index = holder.current
        if index is None or not index.shards:
            raise Unavailable(
                "nothing is indexed yet; create an area with POST /v1/areas and wait for its job"
            )
        hits = await asyncio.to_thread(index.search, vector, k * settings.overfetch)
        async with engine.connect() as conn:
            rows = await window_rows(conn, [wid for wid, _ in hits], flt)
        features = []
        for wid, score in hits:
            if wid in rows and score >= min_score:
                features.append(feature(rows[wid], score, len(features) + 1, settings.tiler_public_url))
                if len(features) == k:
                    break
        return {
            "type": "FeatureCollection",
            "features": features,
            "count": len(features),
            "index_version": index.version,
            "took_ms": round((time.perf_counter() - started) * 1000, 1),
            **extra,
        }

    @app.get("/v1/search")
    async def search_text(
        q: str = Query(..., description="What to look for, e.g. 'boats near a pier'"),
        k: int | None = Query(None, description="How many results (1..max_k)"),
        area_id: int | None = None,
        zoom: list[int] | None = Query(None, description="Only these zoom levels (repeatable)"),
        bbox: str | None = Query(None, description="min_lon,min_lat,max_lon,max_lat"),
        min_score: float = Query(-1.0, ge=-1.0, le=1.0, description="Minimum cosine similarity"),
    ) -> dict:
        """Text to image: the windows that best match a description, as GeoJSON."""
        started = time.perf_counter()
        query = validate_query(q, settings.max_query_chars)
        kk, flt = _k(k), _filter(area_id, zoom, bbox)
        vector, info = await embedder.embed_text(query)
        return await _search(vector, kk, flt, min_score, started, {"query": query, "model": info["model"]})

    @app.post("/v1/search/image")
    async def search_image(
        file: UploadFile = File(..., description="A PNG, JPEG or WebP image"),
        k: int | None = Query(None),
        area_id: int | None = None,
        zoom: list[int] | None = Query(None),
        bbox: str | None = Query(None),
        min_score: float = Query(-1.0, ge=-1.0, le=1.0),
    ) -> dict:
        """Image to image: the windows that look most like the uploaded picture."""
        started = time.perf_counter()
        kk, flt = _k(k), _filter(area_id, zoom, bbox)
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise TooLarge(f"the upload is over the limit of {settings.max_upload_bytes} bytes")
        vector, info = await embedder.embed_image(
            data, file.filename or "upload", file.content_type or "application/octet-stream"
        )
        return await _search(
            vector, kk, flt, min_score, started, {"query": {"image": file.filename}, "model": info["model"]}
        )

    @app.get("/v1/windows/{window_id}/similar")
    async def search_similar(
        window_id: int,
        k: int | None = Query(None),
        area_id: int | None = None,
        zoom: list[int] | None = Query(None),
        bbox: str | None = Query(None),
        min_score: float = Query(-1.0, ge=-1.0, le=1.0),
    ) -> dict:
        """Find similar: the windows that look most like an indexed window."""
        started = time.perf_counter()
        kk, flt = _k(k), _filter(area_id, zoom, bbox)
        index = holder.current
        vector = index.vector_of(window_id) if index else None
        if vector is None:
            raise NotFound(f"window {window_id} is not in the index")
        return await _search(vector, kk, flt, min_score, started, {"query": {"window_id": window_id}})

    return app
