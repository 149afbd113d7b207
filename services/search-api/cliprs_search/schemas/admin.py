"""Request and response models of the admin endpoints (API keys, the audit trail)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Scope = Literal["read", "write", "admin"]


class KeyCreate(BaseModel):
    name: str = Field(..., min_length=1, max_length=200, description="Who or what the key is for")
    scopes: list[Scope] = Field(
        ..., min_length=1, description="read, write and/or admin (admin grants write and read)"
    )
    daily_tile_budget: int | None = Field(
        None, ge=0, description="Remote tiles per UTC day (default: the service's SEARCH_DAILY_TILE_BUDGET)"
    )


class ApiKeyInfo(BaseModel):
    id: int
    prefix: str = Field(..., description="The key's public id (its first characters); never the secret")
    name: str
    scopes: list[Scope]
    daily_tile_budget: int | None = None
    created_at: datetime
    revoked_at: datetime | None = None


class KeyCreated(BaseModel):
    key: ApiKeyInfo
    secret: str = Field(..., description="The key itself: shown this once, stored only as a hash")


class AuditEntry(BaseModel):
    id: int
    at: datetime
    key_id: int | None = None
    key_prefix: str | None = None
    actor: str
    action: str = Field(
        ..., description="e.g. area.create, area.delete, project.update, label.create, key.revoke"
    )
    target: str | None = Field(None, description="kind:id of what the write touched, e.g. area:12")
    method: str | None = None
    path: str | None = None
    status: int | None = None
    changes: dict[str, Any] = Field(
        default_factory=dict, description="The request and the answer (secrets removed)"
    )


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_before_id: int | None = Field(None, description="Pass as before_id for the next (older) page")
