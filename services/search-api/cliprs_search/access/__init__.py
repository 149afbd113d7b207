"""Who may do what: API keys and scopes, quotas and the audit trail of writes.

- A request names its key with ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The key
  is looked up (by its SHA-256, `cliprs.keys`) in PostgreSQL on every request, so a revoked key
  is refused at once by every search-api process; no key text is ever logged or stored.
- Each router declares its rule (`principal`): ``APIRouter(dependencies=[Depends(READ)],
  responses=ACCESS_RESPONSES)`` with `READ`, `SEARCH` (read + the search token bucket),
  `UPLOAD` (read + the upload bucket), `SEARCH_OR_UPLOAD` (the upload bucket when the request
  sends a file, else the search one), `WRITE` or `ADMIN`; the 401/403/429 answers it documents
  come from `openapi`. Scopes nest: admin grants write and read, write grants read. Writes need a
  key unless ``SEARCH_REQUIRE_KEY_FOR_WRITES=false``; reads need one only with
  ``SEARCH_REQUIRE_KEY_FOR_READS=true``; admin always does. A key that is sent is always checked
  (an unknown or revoked key answers 401 even where none is needed). ``SEARCH_AUTH=off`` turns
  every check and quota off.
- Quotas (`quotas`) live in Redis: token buckets per key (requests without a key: per client
  address, from X-Forwarded-For only behind ``SEARCH_TRUSTED_PROXIES``), and a daily budget of tiles from remote
  sources that the areas service spends on a checked plan (`budget`).
- `audit`: write routes declare their action (``dependencies=[audited("area.create")]``) and
  `AuditMiddleware` records each successful one in ``audit_log``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cliprs_http.errors import error_body
from cliprs_search.access.audit import AuditMiddleware, audited
from cliprs_search.access.openapi import ACCESS_RESPONSES, LIMITED_RESPONSES, QUOTA_RESPONSES
from cliprs_search.access.principal import (
    ADMIN,
    READ,
    SEARCH,
    SEARCH_OR_UPLOAD,
    UPLOAD,
    WRITE,
    Access,
    AccessDenied,
    Principal,
    access_of,
)

__all__ = [
    "ACCESS_RESPONSES",
    "ADMIN",
    "LIMITED_RESPONSES",
    "QUOTA_RESPONSES",
    "READ",
    "SEARCH",
    "SEARCH_OR_UPLOAD",
    "UPLOAD",
    "WRITE",
    "Access",
    "AccessDenied",
    "Principal",
    "access_of",
    "audited",
    "install_access",
]


def install_access(app: FastAPI) -> None:
    """The 401/403/429 answers and the audit trail (the rules themselves are on the routers)."""

    @app.exception_handler(AccessDenied)
    async def _denied(_: Request, exc: AccessDenied) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    app.add_middleware(AuditMiddleware)
