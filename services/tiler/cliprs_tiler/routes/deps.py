"""What the routers share: the app's context."""

from __future__ import annotations

from fastapi import Request

from cliprs_tiler.service import TilerContext


def get_context(request: Request) -> TilerContext:
    return request.app.state.ctx
