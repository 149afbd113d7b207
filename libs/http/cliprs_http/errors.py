"""The one mapping from errors to HTTP answers, shared by every service.

Every error answers ``{"error": {"code": ..., "message": ...}}``; clients (including the
services calling each other) read ``code``, never the English message:

- ``invalid_input`` 400: a value the caller sent is wrong; the message says how to fix it.
- ``invalid_request`` 422: the request does not match the endpoint's schema (a missing or
  misspelt field, a wrong type, a value beyond a declared bound).
- ``too_large`` 422: valid, but beyond a configured limit (area tiles, upload bytes, query length).
- ``not_found`` 404.
- ``unavailable`` 503 with ``Retry-After``: a dependency (PostgreSQL, Redis, the broker, a peer
  service, the index) is down or not ready. The caller may retry as is.
- ``internal`` 500: a bug; the log has the traceback, the answer has none.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cliprs.errors import ClipRSError, Conflict, InvalidInput, NotFound, TooLarge, Unavailable

log = logging.getLogger("cliprs_http")

# Seconds a client should wait before retrying a 503.
RETRY_AFTER_S = 5

# Domain error -> (status, machine-readable code).
ERROR_STATUS: dict[type[ClipRSError], tuple[int, str]] = {
    InvalidInput: (400, "invalid_input"),
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
    TooLarge: (422, "too_large"),
    Unavailable: (503, "unavailable"),
}


def _dependency_errors() -> tuple[type[BaseException], ...]:
    """Exception classes that mean "a dependency is down", from the client libraries present."""
    found: list[type[BaseException]] = []
    candidates = [
        ("sqlalchemy.exc", "OperationalError"),  # PostgreSQL unreachable, connection lost
        ("sqlalchemy.exc", "InterfaceError"),
        ("sqlalchemy.exc", "TimeoutError"),  # connection pool exhausted
        ("psycopg2", "OperationalError"),
        ("asyncpg.exceptions", "CannotConnectNowError"),
        ("asyncpg.exceptions", "ConnectionDoesNotExistError"),
        ("redis.exceptions", "ConnectionError"),
        ("redis.exceptions", "TimeoutError"),
        ("kombu.exceptions", "OperationalError"),  # the Celery broker
        ("httpx", "TransportError"),  # a peer service unreachable
    ]
    import importlib

    for module, name in candidates:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        found.append(cls)
    found.extend([ConnectionError, TimeoutError])  # OSError subclasses: refused, reset, timed out
    return tuple(found)


DEPENDENCY_ERRORS = _dependency_errors()


INT64_MAX = 2**63 - 1
OUT_OF_RANGE_MESSAGE = (
    f"a number in the request is beyond the 64-bit integer range (-{INT64_MAX + 1}..{INT64_MAX}); "
    "ids are 64-bit integers: check the id or value you sent"
)


def _out_of_range_errors() -> tuple[type[BaseException], ...]:
    """Errors a number too large for the database or NumPy raises (an id beyond int64)."""
    found: list[type[BaseException]] = [OverflowError]
    try:
        import sqlalchemy.exc

        # asyncpg's "value out of int64 range" arrives as a DBAPIError; psycopg2's
        # NumericValueOutOfRange as a DataError (a DBAPIError too).
        found.append(sqlalchemy.exc.DBAPIError)
    except ImportError:
        pass
    return tuple(found)


OUT_OF_RANGE_ERRORS = _out_of_range_errors()


_OUT_OF_RANGE_SIGNS = (
    "out of int64 range",
    "out of int32 range",
    "out of int16 range",
    "out of range for type",
    "integer out of range",
    "bigint out of range",
)


def is_out_of_range(exc: BaseException) -> bool:
    """True when ``exc`` says a number was beyond a 64-bit (or narrower) integer's range."""
    if isinstance(exc, OverflowError):
        return True
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).lower()
        if any(sign in text for sign in _OUT_OF_RANGE_SIGNS):
            return True
        if type(exc).__name__ in ("NumericValueOutOfRange",):
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__  # type: ignore[assignment]
    return False


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def status_for(exc: ClipRSError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500, "internal"


def _answer(status: int, code: str, message: str) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer domain errors, bad requests, dependency failures and crashes in the one shape."""

    @app.exception_handler(ClipRSError)
    async def _domain(_: Request, exc: ClipRSError) -> JSONResponse:
        status, code = status_for(exc)
        return _answer(status, code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return _answer(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 414: "too_large"}.get(
            exc.status_code, "http_error"
        )
        return _answer(exc.status_code, code, str(exc.detail))

    async def _dependency(request: Request, exc: Exception) -> JSONResponse:
        # Name the failing library, never its message: connection strings can carry secrets.
        log.warning("dependency failure on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return _answer(
            503, "unavailable", f"a dependency is unavailable ({type(exc).__name__}); retry shortly"
        )

    # Registered per class (not caught in the catch-all) so Starlette answers them like domain
    # errors instead of logging them as crashes.
    for cls in DEPENDENCY_ERRORS:
        app.add_exception_handler(cls, _dependency)

    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        if not is_out_of_range(exc):
            return await _crash(request, exc)
        return _answer(422, "invalid_request", OUT_OF_RANGE_MESSAGE)

    for cls in OUT_OF_RANGE_ERRORS:
        app.add_exception_handler(cls, _out_of_range)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _answer(500, "internal", "internal error; see the service log")
