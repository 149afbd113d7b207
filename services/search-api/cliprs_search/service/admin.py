"""API keys and the audit trail, for admins (the SQL is the core's `cliprs.keys`, shared with
the admin command line: synchronous, called through ``conn.run_sync``)."""

from __future__ import annotations

from cliprs import keys
from cliprs.errors import InvalidInput, NotFound
from cliprs.keys import AuditFilter
from cliprs_search.context import Context
from cliprs_search.schemas.admin import ApiKeyInfo, AuditEntry, AuditPage, KeyCreate, KeyCreated


async def create_key(ctx: Context, body: KeyCreate) -> KeyCreated:
    name = body.name.strip()
    if not name:
        raise InvalidInput("give the key a name that says who or what it is for")
    async with ctx.engine.begin() as conn:
        row, secret = await conn.run_sync(
            lambda c: keys.create_key(c, name, list(body.scopes), body.daily_tile_budget)
        )
    return KeyCreated(key=ApiKeyInfo(**row), secret=secret)


async def list_keys(ctx: Context, include_revoked: bool) -> list[ApiKeyInfo]:
    async with ctx.engine.connect() as conn:
        rows = await conn.run_sync(keys.list_keys, include_revoked)
    return [ApiKeyInfo(**r) for r in rows]


async def get_key(ctx: Context, key_id: int) -> ApiKeyInfo:
    async with ctx.engine.connect() as conn:
        row = await conn.run_sync(keys.get_key, key_id)
    if row is None:
        raise NotFound(f"no API key {key_id}; GET /v1/admin/keys lists the keys")
    return ApiKeyInfo(**row)


async def revoke_key(ctx: Context, key_id: int) -> ApiKeyInfo:
    """Revoke a key: every search-api process refuses it from its next request on (each request
    looks its key up in PostgreSQL)."""
    async with ctx.engine.begin() as conn:
        row = await conn.run_sync(keys.revoke_key, key_id)
    if row is None:
        raise NotFound(f"no API key {key_id}; GET /v1/admin/keys lists the keys")
    return ApiKeyInfo(**row)


async def audit(ctx: Context, flt: AuditFilter, limit: int) -> AuditPage:
    """One page of the audit trail, newest first."""
    async with ctx.engine.connect() as conn:
        rows = await conn.run_sync(lambda c: keys.audit_entries(c, flt, limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(entries=[AuditEntry(**r) for r in rows], next_before_id=rows[-1]["id"] if more else None)
