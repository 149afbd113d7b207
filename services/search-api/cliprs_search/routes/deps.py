"""What the routers share: the app's context, the caller, and reading an upload.

Dependencies are named once as ``Annotated`` aliases (``ctx: CtxDep``), so a handler's signature
says what it gets, not how FastAPI finds it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, UploadFile

from cliprs_http.schemas import ERROR_RESPONSES
from cliprs_search.access import WRITE, Access, Principal
from cliprs_search.access.openapi import responses_of
from cliprs_search.context import Context
from cliprs_search.service.shared import Upload

# The API's version: the one place the prefix is written.
API_PREFIX = "/v1"


def api_router(tag: str, rule: Access, responses: dict[int | str, dict[str, Any]] | None = None) -> APIRouter:
    """A feature's router for one access rule: its routes under `API_PREFIX`, each guarded by
    ``rule`` and documenting the error answers (the rule's 401/403/429 included)."""
    return APIRouter(
        prefix=API_PREFIX,
        tags=[tag],
        dependencies=[Depends(rule)],
        responses={**ERROR_RESPONSES, **(responses or {}), **responses_of(rule.quota)},
    )


def get_context(request: Request) -> Context:
    return request.app.state.ctx


CtxDep = Annotated[Context, Depends(get_context)]
# The caller of a write route: the value of its router's `WRITE` rule (FastAPI runs a dependency
# once per request, so naming it again here costs nothing).
WriterDep = Annotated[Principal, Depends(WRITE)]


async def read_upload(file: UploadFile, max_bytes: int) -> Upload:
    """The uploaded bytes, read to at most one byte over ``max_bytes`` (the service refuses more)."""
    data = await file.read(max_bytes + 1)
    return Upload(data, file.filename or "upload", file.content_type or "application/octet-stream")
