"""The audit trail: each successful write records who did what, to what, and what changed.

A write route declares its action with `audited` (``dependencies=[audited("area.create")]``);
`AuditMiddleware` writes the row to ``audit_log`` before the answer is sent: key, time, action,
target and what changed (the request and the answer, secrets removed).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request

from cliprs_search.access.principal import PRINCIPAL_STATE, Principal
from cliprs_search.repository import admin as repo

log = logging.getLogger("cliprs.search.auth")

AUDIT_STATE = "cliprs_audit"
# Request and answer bodies kept in an audit row (bigger ones are summarised).
AUDIT_MAX_BYTES = 64 * 1024


@dataclass
class AuditMark:
    action: str
    principal: Principal


class Audited:
    """A write route's audit action (a dependency): marks the request for `AuditMiddleware`
    with the caller that the router's access rule found."""

    def __init__(self, action: str):
        self.action = action

    def __repr__(self) -> str:
        return f"Audited({self.action!r})"

    async def __call__(self, request: Request) -> None:
        # The router's `Access` runs first (router dependencies precede the route's) and keeps
        # the caller on the request.
        principal: Principal = getattr(request.state, PRINCIPAL_STATE)
        setattr(request.state, AUDIT_STATE, AuditMark(self.action, principal))


def audited(action: str) -> Any:
    """``dependencies=[audited("area.create")]``: record the route's successful writes."""
    return Depends(Audited(action))


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
    except (ValueError, RecursionError):
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
                await repo.record_audit(
                    conn,
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
        except Exception:  # the write happened: a lost audit row must be loud
            log.exception(
                "could not record the audit row of %s %s (%s)", scope["method"], scope["path"], mark.action
            )
