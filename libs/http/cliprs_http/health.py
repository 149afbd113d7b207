"""Liveness and readiness: one builder for every service's ``/readyz``."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from cliprs_http.errors import RETRY_AFTER_S
from cliprs_http.schemas import Health, Readiness

# A readiness check: returns extra detail (a dict) or raises. Sync or async.
Check = Callable[[], Any] | Callable[[], Awaitable[Any]]


async def _run(check: Check) -> Any:
    if inspect.iscoroutinefunction(check):
        return await check()
    return await asyncio.to_thread(check)


async def run_checks(checks: dict[str, Check]) -> tuple[bool, dict]:
    """Run readiness checks; each returns extra detail or raises. (all_ok, report)."""
    report: dict = {}
    ok = True
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            detail = await _run(check)
            report[name] = {"ok": True, "ms": round((time.perf_counter() - start) * 1000, 1)}
            if isinstance(detail, dict):
                report[name].update(detail)
        except Exception as exc:
            ok = False
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return ok, report


def readiness_response(ok: bool, report: dict, **extra: object) -> JSONResponse:
    body = {"status": "ready" if ok else "unavailable", "checks": report, **extra}
    headers = None if ok else {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(body, status_code=200 if ok else 503, headers=headers)


async def readiness(checks: dict[str, Check], **extra: object) -> JSONResponse:
    """``/readyz``: 200 with every check's timing when all pass, else 503 naming what failed."""
    ok, report = await run_checks(checks)
    return readiness_response(ok, report, **extra)


def redis_ping(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def _healthz() -> Health:
    """Liveness: the process answers (it may not be ready)."""
    return Health()


def health_router(
    ready: Callable[..., Awaitable[JSONResponse]],
    model: type[Readiness] = Readiness,
    tags: list[str] | None = None,
) -> APIRouter:
    """``/healthz`` and ``/readyz`` for a service: ``ready`` is its readiness endpoint (it may
    take FastAPI dependencies) answering through `readiness`; ``model`` documents its body."""
    router = APIRouter(tags=tags or ["health"])
    router.add_api_route("/healthz", _healthz, methods=["GET"], response_model=Health)
    router.add_api_route(
        "/readyz",
        ready,
        methods=["GET"],
        response_model=model,
        responses={503: {"model": model, "description": "A check failed; retry after Retry-After"}},
    )
    return router
