"""What the routers share: the app's context, and the read-key rule of the routes that show imagery."""

from __future__ import annotations

import asyncio

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from cliprs_tiler.access import check_read_key, key_of
from cliprs_tiler.service import TilerContext

# The two ways to send a key, as the search-api takes them (and documents them in OpenAPI).
_bearer = HTTPBearer(auto_error=False, description="An API key with scope read (when reads need a key)")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key, instead of Bearer")


def get_context(request: Request) -> TilerContext:
    return request.app.state.ctx


async def require_read_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
    header_key: str | None = Depends(_api_key),
) -> None:
    """When reads need a key (``TILER_REQUIRE_KEY_FOR_READS``), refuse a request without a live
    read key (401) or with a key lacking the scope (403); otherwise let everyone through."""
    ctx: TilerContext = request.app.state.ctx
    if not ctx.settings.require_key_for_reads:
        return
    key = key_of(request.headers.get("authorization"), header_key or (bearer.credentials if bearer else None))
    what = f"{request.method} {request.url.path}"
    await asyncio.to_thread(check_read_key, ctx.engine, key, what)
