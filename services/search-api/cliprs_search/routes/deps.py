"""What the routers share: the app's context and reading an upload."""

from __future__ import annotations

from fastapi import Request, UploadFile

from cliprs_search.context import Context
from cliprs_search.service.shared import Upload


def get_context(request: Request) -> Context:
    return request.app.state.ctx


async def read_upload(file: UploadFile, max_bytes: int) -> Upload:
    """The uploaded bytes, read to at most one byte over ``max_bytes`` (the service refuses more)."""
    data = await file.read(max_bytes + 1)
    return Upload(data, file.filename or "upload", file.content_type or "application/octet-stream")
