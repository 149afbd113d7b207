"""Admin endpoints: API keys (create, list, read, revoke) and the audit trail. Every one needs a
key with the admin scope."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Query

from cliprs.keys import AuditFilter
from cliprs_search.access import ADMIN, audited
from cliprs_search.routes.deps import CtxDep, api_router
from cliprs_search.schemas.admin import ApiKeyInfo, AuditPage, KeyCreate, KeyCreated
from cliprs_search.service import admin as service

router = api_router("admin", ADMIN)


def audit_filter(
    key_id: int | None = Query(None, description="Only the writes of this key"),
    action: str | None = Query(None, description="e.g. area.create, area.delete, label.create, key.revoke"),
    target: str | None = Query(None, description="e.g. area:12, project:3"),
    since: datetime | None = Query(None, description="From this time (ISO 8601)"),
    until: datetime | None = Query(None, description="Before this time (ISO 8601)"),
    before_id: int | None = Query(None, description="Paging: next_before_id of the previous page"),
) -> AuditFilter:
    """The audit trail's filter, from the query string (one value for the route and the repository)."""
    return AuditFilter(key_id, action, target, since, until, before_id)


AuditFilterDep = Annotated[AuditFilter, Depends(audit_filter)]


@router.post("/admin/keys", status_code=201, dependencies=[audited("key.create")])
async def create_key(body: KeyCreate, ctx: CtxDep) -> KeyCreated:
    """Create an API key. The answer's ``secret`` is the key: it is shown this once and stored
    only as a hash."""
    return await service.create_key(ctx, body)


@router.get("/admin/keys")
async def list_keys(
    ctx: CtxDep, include_revoked: bool = Query(True, description="Also list revoked keys")
) -> list[ApiKeyInfo]:
    """Every key (public prefix, name, scopes, budget, created and revoked times), oldest first."""
    return await service.list_keys(ctx, include_revoked)


@router.get("/admin/keys/{key_id}")
async def get_key(key_id: int, ctx: CtxDep) -> ApiKeyInfo:
    """One key."""
    return await service.get_key(ctx, key_id)


@router.delete("/admin/keys/{key_id}", dependencies=[audited("key.revoke")])
async def revoke_key(key_id: int, ctx: CtxDep) -> ApiKeyInfo:
    """Revoke a key: refused by every search-api process from the next request on."""
    return await service.revoke_key(ctx, key_id)


@router.get("/admin/audit")
async def audit(ctx: CtxDep, flt: AuditFilterDep, limit: int = Query(100, ge=1, le=1000)) -> AuditPage:
    """The audit trail, newest first: every write with its key, time, action, target and what
    changed."""
    return await service.audit(ctx, flt, limit)
