"""API keys and the audit trail in PostgreSQL (tables of migration 0007).

A key is ``ck_<8 hex>_<43 url-safe characters>`` (32 random bytes); its first part, the
``prefix``, is its public id (safe to show and log). Only the SHA-256 of the whole key is stored:
the secret is shown once, at creation, and cannot be recovered.

Every function takes a *synchronous* SQLAlchemy connection, so the admin command line (a sync
engine), the test keys and the search-api (``await conn.run_sync(fn, ...)`` on its async engine)
share them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from cliprs.db.models import ApiKey, AuditEntry

SCOPES = ("read", "write", "admin")
# A scope grants the ones below it: admin can write and read, write can read.
IMPLIED = {"read": {"read"}, "write": {"read", "write"}, "admin": {"read", "write", "admin"}}
KEY_PREFIX = "ck_"
# What every refusal says, in every service that checks keys (the search-api, the tiler).
HOW_TO_SEND = "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
HOW_TO_GET = "an admin creates keys with `python -m cliprs_tools.keys create --name NAME --scope SCOPE`"

_keys = ApiKey.__table__
_audit = AuditEntry.__table__
KEY_COLUMNS = (
    _keys.c.id,
    _keys.c.prefix,
    _keys.c.name,
    _keys.c.scopes,
    _keys.c.daily_tile_budget,
    _keys.c.created_at,
    _keys.c.revoked_at,
)


def hash_key(key: str) -> str:
    """The stored form of a key: SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key: ``(prefix, key)``."""
    prefix = KEY_PREFIX + secrets.token_hex(4)
    return prefix, f"{prefix}_{secrets.token_urlsafe(32)}"


def prefix_of(key: str) -> str | None:
    """The public id of a key's text (None when it does not look like a key)."""
    parts = key.split("_")
    if len(parts) < 3 or parts[0] + "_" != KEY_PREFIX or len(parts[1]) != 8:
        return None
    return KEY_PREFIX + parts[1]


def granted(scopes: list[str]) -> set[str]:
    """Every scope the listed ones grant."""
    out: set[str] = set()
    for s in scopes:
        out |= IMPLIED.get(s, set())
    return out


def check_scopes(scopes: list[str]) -> list[str]:
    """Distinct known scopes, in the canonical order; ValueError naming the unknown ones."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}: use read, write and/or admin")
    if not scopes:
        raise ValueError("give at least one scope: read, write and/or admin")
    return [s for s in SCOPES if s in scopes]


def create_key(
    conn: Connection, name: str, scopes: list[str], daily_tile_budget: int | None = None
) -> tuple[dict[str, Any], str]:
    """Insert a new key; answers its row and the key's text (the only time it exists)."""
    prefix, key = new_key()
    row = (
        conn.execute(
            insert(_keys)
            .values(
                prefix=prefix,
                key_hash=hash_key(key),
                name=name,
                scopes=check_scopes(scopes),
                daily_tile_budget=daily_tile_budget,
            )
            .returning(*KEY_COLUMNS)
        )
        .mappings()
        .one()
    )
    return dict(row), key


def list_keys(conn: Connection, include_revoked: bool = True) -> list[dict[str, Any]]:
    query = select(*KEY_COLUMNS).order_by(_keys.c.id)
    if not include_revoked:
        query = query.where(_keys.c.revoked_at.is_(None))
    return [dict(r) for r in conn.execute(query).mappings()]


def get_key(conn: Connection, key_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(*KEY_COLUMNS).where(_keys.c.id == key_id)).mappings().first()
    return dict(row) if row else None


def find_key(conn: Connection, ref: str) -> dict[str, Any] | None:
    """A key by id (digits) or public prefix (``ck_...``)."""
    if ref.isdigit():
        return get_key(conn, int(ref))
    row = conn.execute(select(*KEY_COLUMNS).where(_keys.c.prefix == ref)).mappings().first()
    return dict(row) if row else None


def unusable(row: dict[str, Any] | None) -> str | None:
    """Why the row `key_for_secret` found cannot be used (unknown or revoked: a 401), or None."""
    if row is None:
        return f"unknown API key; check it was copied whole, or {HOW_TO_GET}"
    if row["revoked_at"] is not None:
        return (
            f"API key {row['prefix']} was revoked at {row['revoked_at'].isoformat()}; "
            "ask an admin for a new key"
        )
    return None


def key_for_secret(conn: Connection, key: str) -> dict[str, Any] | None:
    """The row of a key's text (revoked or not), or None for an unknown key."""
    row = (
        conn.execute(select(*KEY_COLUMNS, _keys.c.key_hash).where(_keys.c.key_hash == hash_key(key)))
        .mappings()
        .first()
    )
    if row is None or not hmac.compare_digest(row["key_hash"], hash_key(key)):
        return None
    out = dict(row)
    del out["key_hash"]
    return out


def revoke_key(conn: Connection, key_id: int) -> dict[str, Any] | None:
    """Revoke a key (a second revocation keeps the first time); None when there is no such key."""
    conn.execute(
        update(_keys).where(_keys.c.id == key_id, _keys.c.revoked_at.is_(None)).values(revoked_at=func.now())
    )
    return get_key(conn, key_id)


def record_audit(
    conn: Connection,
    *,
    action: str,
    actor: str,
    key_id: int | None = None,
    key_prefix: str | None = None,
    target: str | None = None,
    method: str | None = None,
    path: str | None = None,
    status: int | None = None,
    changes: dict[str, Any] | None = None,
) -> int:
    return conn.execute(
        insert(_audit)
        .values(
            action=action,
            actor=actor,
            key_id=key_id,
            key_prefix=key_prefix,
            target=target,
            method=method,
            path=path,
            status=status,
            changes=changes or {},
        )
        .returning(_audit.c.id)
    ).scalar_one()


@dataclass(frozen=True)
class AuditFilter:
    """Which audit rows to read (None: any); ``before_id`` pages (the last id of a page)."""

    key_id: int | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None


def audit_entries(conn: Connection, flt: AuditFilter, limit: int = 100) -> list[dict[str, Any]]:
    """Audit rows passing ``flt``, newest first, at most ``limit``."""
    query = select(_audit).order_by(_audit.c.id.desc()).limit(limit)
    if flt.key_id is not None:
        query = query.where(_audit.c.key_id == flt.key_id)
    if flt.action is not None:
        query = query.where(_audit.c.action == flt.action)
    if flt.target is not None:
        query = query.where(_audit.c.target == flt.target)
    if flt.since is not None:
        query = query.where(_audit.c.at >= flt.since)
    if flt.until is not None:
        query = query.where(_audit.c.at < flt.until)
    if flt.before_id is not None:
        query = query.where(_audit.c.id < flt.before_id)
    return [dict(r) for r in conn.execute(query).mappings()]
