"""Readiness of the gateway: the database, Redis, the embedder (which must itself be ready),
the live index and the geocoder."""

from __future__ import annotations

import time
from typing import Any

from cliprs.errors import Unavailable
from cliprs_http import Check, redis_ping
from cliprs_search.context import Context
from cliprs_search.repository import health as repository


async def readiness_checks(ctx: Context) -> tuple[dict[str, Check], dict[str, Any] | None]:
    """The checks for `cliprs_http.readiness`, and the embedder's model (None when it cannot
    be asked). The embedder is asked first, since its answer names the model; its check fails
    when it is unreachable or answers anything but ``ready``."""
    started = time.perf_counter()
    try:
        embedder: dict | Exception = await ctx.embedder.readyz()
    except Exception as exc:  # a probe reports every failure in its check instead of raising
        embedder = exc
    embedder_ms = round((time.perf_counter() - started) * 1000, 1)
    model = embedder.get("model") if isinstance(embedder, dict) else None

    async def database() -> None:
        async with ctx.engine.connect() as conn:
            await repository.ping(conn)

    def redis() -> None:
        redis_ping(ctx.core.redis_url)

    async def embedder_ready() -> dict:
        if isinstance(embedder, Exception):
            raise embedder
        if embedder.get("status") != "ready":
            raise Unavailable(f"the embedder is not ready: {embedder.get('checks')}")
        return {"ms": embedder_ms}  # the probe ran before the checks

    async def index() -> dict:
        current = ctx.holder.current
        return {
            "version": current.version if current else None,
            "vectors": current.manifest.vector_count if current else 0,
        }

    async def geocoder() -> dict:
        return {"provider": ctx.geocoder.name if ctx.geocoder else None}

    checks: dict[str, Check] = {
        "database": database,
        "redis": redis,
        "embedder": embedder_ready,
        "index": index,
        "geocoder": geocoder,
    }
    return checks, model
