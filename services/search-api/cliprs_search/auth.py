"""Who may do what: API keys and scopes, quotas and the audit trail of writes.

- A request names its key with ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The key
  is looked up (by its SHA-256) in PostgreSQL on every request, so a revoked key is refused at
  once by every search-api process; no key text is ever logged or stored.
- Each route declares what it needs with a dependency from this module: `READ`, `SEARCH`
  (read + the search token bucket), `UPLOAD` (read + the upload bucket), `write(action)`,
  `admin(action)`. Scopes nest: admin grants write and read, write grants read. Writes need a key
  unless ``SEARCH_REQUIRE_KEY_FOR_WRITES=false``; reads need one only with
  ``SEARCH_REQUIRE_KEY_FOR_READS=true``; admin always does. A key that is sent is always checked
  (an unknown or revoked key answers 401 even where none is needed). ``SEARCH_AUTH=off`` turns
  every check and quota off.
- `TILE_BUDGET` spends the caller's daily budget of tiles from remote sources when an area is
  created (given back when the creation fails).
- `AuditMiddleware` records every successful write marked by `write`/`admin` in ``audit_log``:
  key, time, action, target and what changed (the request and the answer, secrets removed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from cliprs.settings import CoreSettings
from cliprs.tiles import check_plan_size, parse_area, validate_zooms
from cliprs_http.errors import error_body
from cliprs_http.routing import api_routes
from cliprs_http.schemas import ErrorResponse
from cliprs_search import keys_repository as repo
from cliprs_search.quotas import Quotas, retry_after

log = logging.getLogger("cliprs.search.auth")

AUDIT_STATE = "cliprs_audit"
PRINCIPAL_STATE = "cliprs_principal"
# Request and answer bodies kept in an audit row (bigger ones are summarised).
AUDIT_MAX_BYTES = 64 * 1024
HOW_TO_SEND = "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
HOW_TO_GET = "an admin creates keys with `python -m cliprs_tools.keys create --name NAME --scope SCOPE`"

_bearer = HTTPBearer(auto_error=False, description="An API key (scopes read, write, admin)")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key, instead of Bearer")


class AccessDenied(Exception):
    """401 (no usable key), 403 (a key without the scope) or 429 (over a quota)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


@dataclass(frozen=True)
class Principal:
    """Who calls: a key (id, public prefix, scopes) or nobody (``key_id`` None)."""

    key_id: int | None
    prefix: str | None
    name: str | None
    scopes: tuple[str, ...]
    daily_tile_budget: int | None = None
    client: str = "unknown"

    @property
    def who(self) -> str:
        """The quota owner: the key, or the client's address for requests without one."""
        return self.prefix if self.prefix else f"anon:{self.client}"

    @property
    def actor(self) -> str:
        return f"key {self.prefix} ({self.name})" if self.prefix else f"anonymous ({self.client})"


@dataclass
class AuditMark:
    action: str
    principal: Principal


def _ctx(request: Request):
    return request.app.state.ctx


def _quotas(request: Request) -> Quotas:
    quotas = getattr(request.app.state, "quotas", None)
    if quotas is None:
        core: CoreSettings = _ctx(request).core
        quotas = request.app.state.quotas = Quotas(core.redis_url, core.redis_namespace)
    return quotas


async def principal_of(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = None,
    header_key: str | None = None,
) -> Principal:
    """The caller, from the key the request sends (looked up once per request)."""
    cached = getattr(request.state, PRINCIPAL_STATE, None)
    if cached is not None:
        return cached
    client = request.client.host if request.client else "unknown"
    key = header_key or (bearer.credentials if bearer is not None else None)
    if key is None and request.headers.get("authorization"):
        raise AccessDenied(
            401, "unauthorized", f"the Authorization header is not 'Bearer <key>'; {HOW_TO_SEND}"
        )
    if not key:
        principal = Principal(None, None, None, (), client=client)
    else:
        key = key.strip()
        async with _ctx(request).engine.connect() as conn:
            row = await conn.run_sync(repo.key_for_secret, key)
        if row is None:
            raise AccessDenied(
                401, "unauthorized", f"unknown API key; check it was copied whole, or {HOW_TO_GET}"
            )
        if row["revoked_at"] is not None:
            raise AccessDenied(
                401,
                "unauthorized",
                f"API key {row['prefix']} was revoked at {row['revoked_at'].isoformat()}; ask an admin for a new key",
            )
        principal = Principal(
            row["id"], row["prefix"], row["name"], tuple(row["scopes"]), row["daily_tile_budget"], client
        )
    setattr(request.state, PRINCIPAL_STATE, principal)
    return principal


class Access:
    """A route's access rule (a FastAPI dependency): the scope it needs, the quota it spends and
    the audit action of a write. ``scope`` is what the permission matrix reads."""

    def __init__(self, scope: str, quota: str | None = None, audit: str | None = None):
        assert scope in repo.SCOPES and quota in (None, "search", "upload")
        self.scope, self.quota, self.audit = scope, quota, audit

    def __repr__(self) -> str:
        return f"Access({self.scope!r}, quota={self.quota!r}, audit={self.audit!r})"

    def needs_key(self, settings) -> bool:
        if self.scope == "admin":
            return True
        if self.scope == "write":
            return settings.require_key_for_writes
        return settings.require_key_for_reads

    async def __call__(
        self,
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
        header_key: str | None = Depends(_api_key),
    ) -> Principal:
        settings = _ctx(request).settings
        if settings.auth == "off":
            principal = Principal(
                None, None, None, (), client=request.client.host if request.client else "unknown"
            )
        else:
            principal = await principal_of(request, bearer, header_key)
            if self.needs_key(settings):
                if principal.key_id is None:
                    raise AccessDenied(
                        401,
                        "unauthorized",
                        f"{request.method} {request.url.path} needs an API key with scope {self.scope}; "
                        f"{HOW_TO_SEND} ({HOW_TO_GET})",
                    )
                if self.scope not in repo.granted(list(principal.scopes)):
                    raise AccessDenied(
                        403,
                        "forbidden",
                        f"API key {principal.prefix} has scope(s) {', '.join(principal.scopes)}; "
                        f"{request.method} {request.url.path} needs {self.scope}: use a key with it",
                    )
            if self.quota is not None:
                await self._spend(request, settings, principal)
        if self.audit is not None:
            setattr(request.state, AUDIT_STATE, AuditMark(self.audit, principal))
        return principal

    async def _spend(self, request: Request, settings, principal: Principal) -> None:
        rate, burst = (
            (settings.search_rate_per_s, settings.search_burst)
            if self.quota == "search"
            else (settings.upload_rate_per_s, settings.upload_burst)
        )
        answer = await _quotas(request).take(self.quota, principal.who, rate, burst)
        if not answer.allowed:
            wait = retry_after(answer.retry_after_s)
            owner = (
                f"API key {principal.prefix}"
                if principal.prefix
                else "requests without a key from this address"
            )
            raise AccessDenied(
                429,
                "rate_limited",
                f"too many {self.quota} requests: {owner} may make {rate:g} per second (bursts of {burst}); "
                f"retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )


READ = Access("read")
SEARCH = Access("read", quota="search")
UPLOAD = Access("read", quota="upload")


def write(action: str) -> Access:
    return Access("write", audit=action)


def admin(action: str | None = None) -> Access:
    return Access("admin", audit=action)


def remote_source(template: str) -> bool:
    return template.lower().startswith(("http://", "https://"))


async def tile_budget(request: Request) -> AsyncIterator[None]:
    """Spend the caller's daily budget of remote tiles on the area being created (``POST
    /v1/areas``); given back when the creation fails. A request the service will refuse anyway
    (bad box, unknown source, too many tiles) spends nothing and is left to it."""
    ctx = _ctx(request)
    settings, core = ctx.settings, ctx.core
    spent: tuple[Quotas, str, int] | None = None
    if settings.auth != "off":
        planned = None
        try:
            body = await request.json()
            template = core.tile_sources.get(body.get("source"))
            if template is not None and remote_source(template):
                area = parse_area(bbox=body.get("bbox"), polygon=body.get("polygon"))
                planned = check_plan_size(
                    area, validate_zooms(body.get("zooms") or []), core.max_tiles_per_area
                )
        except Exception:  # the service answers what is wrong with the request
            planned = None
        if planned:
            principal: Principal = getattr(request.state, PRINCIPAL_STATE, None) or await principal_of(
                request
            )
            budget = (
                principal.daily_tile_budget
                if principal.daily_tile_budget is not None
                else settings.daily_tile_budget
            )
            quotas = _quotas(request)
            answer = await quotas.spend_tiles(principal.who, planned, budget)
            if not answer.allowed:
                left = max(0, budget - answer.used)
                owner = f"API key {principal.prefix}" if principal.prefix else "requests without a key"
                raise AccessDenied(
                    429,
                    "tile_budget_exceeded",
                    f"this area needs {planned} tiles from a remote source but {owner} has {left} of its "
                    f"{budget} left today (UTC); choose fewer zooms or a smaller area, or wait until tomorrow",
                    headers={"Retry-After": str(_seconds_to_midnight())},
                )
            spent = (quotas, principal.who, planned)
    try:
        yield
    except Exception:
        if spent is not None:
            await spent[0].refund_tiles(spent[1], spent[2])
        raise


TILE_BUDGET = Depends(tile_budget)


def _seconds_to_midnight() -> int:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))


# ----------------------------------------------------------------------------- audit


def _redact(value: Any) -> Any:
    """Drop every ``secret`` member (a new key's text) from what is recorded."""
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items() if k != "secret"}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _json(data: bytes) -> Any:
    if not data:
        return None
    if len(data) > AUDIT_MAX_BYTES:
        return {"omitted": f"{len(data)} bytes"}
    try:
        return _redact(json.loads(data))
    except ValueError:
        return {"omitted": f"{len(data)} bytes, not JSON"}


def audit_target(action: str, params: dict[str, Any], result: Any) -> str | None:
    """``kind:id`` of what a write touched, from the path or (for a creation) the answer."""
    kind = action.split(".")[0]
    if kind == "label":
        window = params.get("window_id") or (result or {}).get("window_id")
        return f"project:{params.get('project_id')}/window:{window}"
    if f"{kind}_id" in params:
        return f"{kind}:{params[f'{kind}_id']}"
    if isinstance(result, dict):
        inner = result.get(kind) if isinstance(result.get(kind), dict) else result
        if inner.get("id") is not None:
            return f"{kind}:{inner['id']}"
    return None


class AuditMiddleware:
    """Records each successful write that a route marked (`write`/`admin` with an action) before
    its answer is sent, so a client that got the answer can read the row."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        request_body: list[bytes] = []
        held: dict | None = None
        answer: list[bytes] = []

        async def receive_and_keep():
            message = await receive()
            if message["type"] == "http.request" and sum(map(len, request_body)) <= AUDIT_MAX_BYTES:
                request_body.append(message.get("body", b""))
            return message

        async def send_after_audit(message):
            nonlocal held
            if message["type"] == "http.response.start":
                mark = (scope.get("state") or {}).get(AUDIT_STATE)
                if mark is not None and message["status"] < 400:
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                answer.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = b"".join(answer)
                await self._record(
                    scope,
                    (scope.get("state") or {})[AUDIT_STATE],
                    held["status"],
                    b"".join(request_body),
                    body,
                )
                start, held = held, None
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive_and_keep, send_after_audit)

    async def _record(self, scope, mark: AuditMark, status: int, request_body: bytes, answer: bytes) -> None:
        result = _json(answer)
        changes: dict[str, Any] = {}
        if (req := _json(request_body)) is not None:
            changes["request"] = req
        if scope.get("query_string"):
            changes["query"] = scope["query_string"].decode("latin-1")
        if result is not None:
            changes["result"] = result
        p = mark.principal
        try:
            engine = scope["app"].state.ctx.engine
            async with engine.begin() as conn:
                await conn.run_sync(
                    lambda c: repo.record_audit(
                        c,
                        action=mark.action,
                        actor=p.actor,
                        key_id=p.key_id,
                        key_prefix=p.prefix,
                        target=audit_target(mark.action, scope.get("path_params") or {}, result),
                        method=scope["method"],
                        path=scope["path"],
                        status=status,
                        changes=changes,
                    )
                )
        except Exception:  # the write happened: a lost audit row must be loud
            log.exception(
                "could not record the audit row of %s %s (%s)", scope["method"], scope["path"], mark.action
            )


# ----------------------------------------------------------------------------- the app


ACCESS_RESPONSES = {
    401: {"model": ErrorResponse, "description": "No API key, or an unknown or revoked one (unauthorized)"},
    403: {"model": ErrorResponse, "description": "The key lacks the scope this endpoint needs (forbidden)"},
}
QUOTA_RESPONSES = {
    429: {
        "model": ErrorResponse,
        "description": "Over a quota (rate_limited, tile_budget_exceeded); see Retry-After",
    }
}


def access_of(route: APIRoute) -> Access | None:
    """The access rule a route declares (None: a public route such as /healthz)."""
    for dep in route.dependant.dependencies:
        if isinstance(dep.call, Access):
            return dep.call
    return None


def install_access(app: FastAPI) -> None:
    """Admin endpoints, the 401/403/429 answers, the audit trail and the documented responses."""
    from cliprs_search.routes import admin as admin_routes

    app.include_router(admin_routes.router)

    @app.exception_handler(AccessDenied)
    async def _denied(_: Request, exc: AccessDenied) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    app.add_middleware(AuditMiddleware)
    for route in api_routes(app.routes):
        if (rule := access_of(route)) is not None:
            extra = dict(ACCESS_RESPONSES)
            if rule.quota or (route.path == "/v1/areas" and "POST" in route.methods):
                extra.update(QUOTA_RESPONSES)
            _document(route, extra)


def _document(route: APIRoute, extra: dict[int, dict[str, Any]]) -> None:
    """Add error answers to a built route's OpenAPI responses (FastAPI makes their fields when
    the route is built, so they are made here too)."""
    from fastapi.routing import create_model_field

    fields = dict(route.response_fields)
    for code, response in extra.items():
        if code in route.responses:
            continue
        route.responses = {**route.responses, code: response}
        fields[code] = create_model_field(
            name=f"Response_{code}_{route.unique_id}", type_=response["model"], mode="serialization"
        )
    route.response_fields = fields
