"""What every HTTP service shares: the domain-error -> status mapping and health checks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cliprs.errors import ClipRSError, InvalidInput, NotFound, TooLarge, Unavailable

log = logging.getLogger("cliprs.http")

# The one mapping from domain errors to HTTP: (status, machine-readable code).
ERROR_STATUS: dict[type[ClipRSError], tuple[int, str]] = {
    InvalidInput: (400, "invalid_input"),
    NotFound: (404, "not_found"),
    TooLarge: (422, "too_large"),
    Unavailable: (503, "unavailable"),
}


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def _status_for(exc: ClipRSError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500, "internal"


def install_error_handlers(app: FastAPI) -> None:
    """Answer domain errors, bad requests and crashes with ``{"error": {code, message}}``."""

    @app.exception_handler(ClipRSError)
    async def _domain(_: Request, exc: ClipRSError) -> JSONResponse:
        status, code = _status_for(exc)
        return JSONResponse(error_body(code, str(exc)), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse(error_body("invalid_input", "; ".join(parts)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal", "internal error; see the service log"), status_code=500)


def run_checks(checks: dict[str, Callable[[], object]]) -> tuple[bool, dict]:
    """Run readiness checks; each returns extra detail or raises. (all_ok, report)."""
    report: dict = {}
    ok = True
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            detail = check()
            report[name] = {"ok": True, "ms": round((time.perf_counter() - start) * 1000, 1)}
            if isinstance(detail, dict):
                report[name].update(detail)
        except Exception as exc:
            ok = False
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return ok, report


def readiness_response(ok: bool, report: dict, **extra: object) -> JSONResponse:
    body = {"status": "ready" if ok else "unavailable", "checks": report, **extra}
    return JSONResponse(body, status_code=200 if ok else 503)


def redis_ping(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
