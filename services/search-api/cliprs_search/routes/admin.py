"""Admin endpoints: API keys (create, list, read, revoke) and the audit trail. Every one needs a
key with the admin scope."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Query

from cliprs_http.schemas import ERROR_RESPONSES
from cliprs_search.admin_schemas import ApiKeyInfo, AuditPage, KeyCreate, KeyCreated
from cliprs_search.auth import admin
from cliprs_search.context import Context
from cliprs_search.routes.deps import get_context
from cliprs_search.service import admin as service

router = APIRouter(tags=["admin"], responses=ERROR_RESPONSES)


@router.post("/v1/admin/keys", status_code=201, dependencies=[Depends(admin("key.create"))])
async def create_key(body: KeyCreate, ctx: Context = Depends(get_context)) -> KeyCreated:
    """Create an API key. The answer's ``secret`` is the key: it is shown this once and stored
    only as a hash."""
    return await service.create_key(ctx, body)


@router.get("/v1/admin/keys", dependencies=[Depends(admin())])
async def list_keys(
    include_revoked: bool = Query(True, description="Also list revoked keys"),
    ctx: Context = Depends(get_context),
) -> list[ApiKeyInfo]:
    """Every key (public prefix, name, scopes, budget, created and revoked times), oldest first."""
    return await service.list_keys(ctx, include_revoked)


@router.get("/v1/admin/keys/{key_id}", dependencies=[Depends(admin())])
async def get_key(key_id: int, ctx: Context = Depends(get_context)) -> ApiKeyInfo:
    """One key."""
    return await service.get_key(ctx, key_id)


@router.delete("/v1/admin/keys/{key_id}", dependencies=[Depends(admin("key.revoke"))])
async def revoke_key(key_id: int, ctx: Context = Depends(get_context)) -> ApiKeyInfo:
    """Revoke a key: refused by every search-api process from the next request on."""
    return await service.revoke_key(ctx, key_id)


@router.get("/v1/admin/audit", dependencies=[Depends(admin())])
async def audit(
    key_id: int | None = Query(None, description="Only the writes of this key"),
    action: str | None = Query(None, description="e.g. area.create, area.delete, label.create, key.revoke"),
    target: str | None = Query(None, description="e.g. area:12, project:3"),
    since: datetime | None = Query(None, description="From this time (ISO 8601)"),
    until: datetime | None = Query(None, description="Before this time (ISO 8601)"),
    before_id: int | None = Query(None, description="Paging: next_before_id of the previous page"),
    limit: int = Query(100, ge=1, le=1000),
    ctx: Context = Depends(get_context),
) -> AuditPage:
    """The audit trail, newest first: every write with its key, time, action, target and what
    changed."""
    flt = service.AuditFilter(key_id, action, target, since, until, before_id)
    return await service.audit(ctx, flt, limit)
