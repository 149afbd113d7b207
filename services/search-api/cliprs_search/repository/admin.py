"""The SQL of API keys and the audit trail: the core's key store (`cliprs.keys`, synchronous
SQLAlchemy Core shared with the admin command line and the tests), run on the search-api's
async connections through ``conn.run_sync``."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from cliprs import keys
from cliprs.keys import AuditFilter


async def key_for_secret(conn: AsyncConnection, key: str) -> dict[str, Any] | None:
    """The key row whose hash matches ``key`` (revoked ones included), or None."""
    return await conn.run_sync(keys.key_for_secret, key)


async def create_key(
    conn: AsyncConnection, name: str, scopes: list[str], daily_tile_budget: int | None
) -> tuple[dict[str, Any], str]:
    """A new key: its row and its text (shown once)."""
    return await conn.run_sync(lambda c: keys.create_key(c, name, scopes, daily_tile_budget))


async def list_keys(conn: AsyncConnection, include_revoked: bool) -> list[dict[str, Any]]:
    return await conn.run_sync(keys.list_keys, include_revoked)


async def get_key(conn: AsyncConnection, key_id: int) -> dict[str, Any] | None:
    return await conn.run_sync(keys.get_key, key_id)


async def revoke_key(conn: AsyncConnection, key_id: int) -> dict[str, Any] | None:
    return await conn.run_sync(keys.revoke_key, key_id)


async def record_audit(conn: AsyncConnection, **entry: Any) -> int:
    """One audit row (`cliprs.keys.record_audit`'s fields); its id."""
    return await conn.run_sync(lambda c: keys.record_audit(c, **entry))


async def audit_entries(conn: AsyncConnection, flt: AuditFilter, limit: int) -> list[dict[str, Any]]:
    """Audit rows passing ``flt``, newest first, at most ``limit``."""
    return await conn.run_sync(lambda c: keys.audit_entries(c, flt, limit))
