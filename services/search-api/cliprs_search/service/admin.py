"""API keys and the audit trail, for admins."""

from __future__ import annotations

from cliprs.errors import InvalidInput
from cliprs.keys import AuditFilter
from cliprs_search.context import Context
from cliprs_search.repository import admin as repo
from cliprs_search.schemas.admin import ApiKeyInfo, AuditEntry, AuditPage, KeyCreate, KeyCreated
from cliprs_search.service.shared import found


async def create_key(ctx: Context, body: KeyCreate) -> KeyCreated:
    name = body.name.strip()
    if not name:
        raise InvalidInput("give the key a name that says who or what it is for")
    async with ctx.engine.begin() as conn:
        row, secret = await repo.create_key(conn, name, list(body.scopes), body.daily_tile_budget)
    return KeyCreated(key=ApiKeyInfo(**row), secret=secret)


async def list_keys(ctx: Context, include_revoked: bool) -> list[ApiKeyInfo]:
    async with ctx.engine.connect() as conn:
        rows = await repo.list_keys(conn, include_revoked)
    return [ApiKeyInfo(**r) for r in rows]


async def get_key(ctx: Context, key_id: int) -> ApiKeyInfo:
    async with ctx.engine.connect() as conn:
        row = await repo.get_key(conn, key_id)
    return ApiKeyInfo(**found(row, f"no API key {key_id}; GET /v1/admin/keys lists the keys"))


async def revoke_key(ctx: Context, key_id: int) -> ApiKeyInfo:
    """Revoke a key: every search-api process refuses it from its next request on (each request
    looks its key up in PostgreSQL)."""
    async with ctx.engine.begin() as conn:
        row = await repo.revoke_key(conn, key_id)
    return ApiKeyInfo(**found(row, f"no API key {key_id}; GET /v1/admin/keys lists the keys"))


async def audit(ctx: Context, flt: AuditFilter, limit: int) -> AuditPage:
    """One page of the audit trail, newest first."""
    async with ctx.engine.connect() as conn:
        rows = await repo.audit_entries(conn, flt, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(entries=[AuditEntry(**r) for r in rows], next_before_id=rows[-1]["id"] if more else None)
