"""Who calls and what they may do: the key a request sends, its scopes, and the access rule a
router declares (`Access`: the scope it needs and the rate limit it spends)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile

from cliprs import keys
from cliprs.keys import HOW_TO_GET, HOW_TO_SEND
from cliprs_search.access.quotas import Quotas, retry_after
from cliprs_search.repository import admin as repo

PRINCIPAL_STATE = "cliprs_principal"

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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=64)
def _networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t.strip(), strict=False) for t in trusted)


def _is_trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in net for net in networks if ip.version == net.version)


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[str]) -> str:
    """Who sent a request: its direct ``peer``, unless that is a trusted proxy; then the right-most
    address of X-Forwarded-For (every header's entries, in order) that is not a trusted proxy:
    each proxy appends the address it saw, so entries left of it may be anything a client wrote.
    When every entry is a trusted proxy, the first one."""
    if peer is None:
        return "unknown"
    networks = _networks(tuple(trusted))
    if not networks or not _is_trusted(peer, networks):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            return hop
    return hops[0] if hops else peer


def _client(request: Request) -> str:
    """The request's client address (``SEARCH_TRUSTED_PROXIES`` says whose X-Forwarded-For counts)."""
    return client_address(
        request.client.host if request.client else None,
        request.headers.getlist("x-forwarded-for"),
        request.app.state.ctx.settings.trusted_proxies,
    )


async def principal_of(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = None,
    header_key: str | None = None,
) -> Principal:
    """The caller, from the key the request sends (looked up once per request)."""
    cached = getattr(request.state, PRINCIPAL_STATE, None)
    if cached is not None:
        return cached
    key = header_key or (bearer.credentials if bearer is not None else None)
    if key is None and request.headers.get("authorization"):
        raise AccessDenied(
            401, "unauthorized", f"the Authorization header is not 'Bearer <key>'; {HOW_TO_SEND}"
        )
    if not key:
        principal = Principal(None, None, None, (), client=_client(request))
    else:
        principal = await _principal_of_key(request, key.strip())
    setattr(request.state, PRINCIPAL_STATE, principal)
    return principal


async def _principal_of_key(request: Request, key: str) -> Principal:
    """The key's holder, or 401 when the key is unknown or revoked."""
    async with request.app.state.ctx.engine.connect() as conn:
        row = await repo.key_for_secret(conn, key)
    if (why := keys.unusable(row)) is not None:
        raise AccessDenied(401, "unauthorized", why)
    return Principal(
        row["id"],
        row["prefix"],
        row["name"],
        tuple(row["scopes"]),
        row["daily_tile_budget"],
        _client(request),
    )


# The quota of a route that takes an image or an indexed window: the upload bucket when the
# request sends a file (the image is embedded on the spot, as an upload is), else the search one.
UPLOAD_IF_FILE = "upload_if_file"


class Access:
    """An access rule (a FastAPI dependency, declared on a router): the scope its routes need
    and the rate limit they spend. Its value is the caller (`Principal`). ``scope`` is what the
    permission matrix reads."""

    def __init__(self, scope: str, quota: str | None = None):
        assert scope in keys.SCOPES and quota in (None, "search", "upload", UPLOAD_IF_FILE)
        self.scope, self.quota = scope, quota

    def __repr__(self) -> str:
        return f"Access({self.scope!r}, quota={self.quota!r})"

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
        ctx = request.app.state.ctx
        if ctx.settings.auth == "off":
            principal = Principal(None, None, None, (), client=_client(request))
            setattr(request.state, PRINCIPAL_STATE, principal)
            return principal
        principal = await principal_of(request, bearer, header_key)
        if self.needs_key(ctx.settings):
            self._check_scope(request, principal)
        quota = await self._quota_of(request)
        if quota is not None:
            await self._spend(quota, ctx.quotas, ctx.settings, principal)
        return principal

    async def _quota_of(self, request: Request) -> str | None:
        """The bucket this request spends (`UPLOAD_IF_FILE` looks at the form: FastAPI has
        already read it for the route, so this reads nothing more)."""
        if self.quota != UPLOAD_IF_FILE:
            return self.quota
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            if any(isinstance(value, UploadFile) for value in form.values()):
                return "upload"
        return "search"

    def _check_scope(self, request: Request, principal: Principal) -> None:
        """401 without a key, 403 with a key that lacks the scope."""
        if principal.key_id is None:
            raise AccessDenied(
                401,
                "unauthorized",
                f"{request.method} {request.url.path} needs an API key with scope {self.scope}; "
                f"{HOW_TO_SEND} ({HOW_TO_GET})",
            )
        if self.scope not in keys.granted(list(principal.scopes)):
            raise AccessDenied(
                403,
                "forbidden",
                f"API key {principal.prefix} has scope(s) {', '.join(principal.scopes)}; "
                f"{request.method} {request.url.path} needs {self.scope}: use a key with it",
            )

    async def _spend(self, quota: str, quotas: Quotas, settings, principal: Principal) -> None:
        """One token of the caller's ``quota`` bucket, or 429 with Retry-After."""
        rate, burst = (
            (settings.search_rate_per_s, settings.search_burst)
            if quota == "search"
            else (settings.upload_rate_per_s, settings.upload_burst)
        )
        answer = await quotas.take(quota, principal.who, rate, burst)
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
                f"too many {quota} requests: {owner} may make {rate:g} per second (bursts of {burst}); "
                f"retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )


# The rules routers declare. Scopes nest: admin grants write and read, write grants read.
READ = Access("read")
SEARCH = Access("read", quota="search")
UPLOAD = Access("read", quota="upload")
SEARCH_OR_UPLOAD = Access("read", quota=UPLOAD_IF_FILE)
WRITE = Access("write")
ADMIN = Access("admin")


def access_of(route: APIRoute) -> Access | None:
    """The access rule a built route carries from its router (None: a public route such as
    /healthz); for checks and tests, the app never reads it."""
    for dep in route.dependant.dependencies:
        if isinstance(dep.call, Access):
            return dep.call
    return None
