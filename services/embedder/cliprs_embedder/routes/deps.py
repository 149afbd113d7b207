"""What the handlers take from the app: its settings and its model slot."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cliprs_embedder.service import ModelSlot
from cliprs_embedder.settings import EmbedderSettings


def get_settings(request: Request) -> EmbedderSettings:
    return request.app.state.settings


def get_slot(request: Request) -> ModelSlot:
    return request.app.state.model


Settings = Annotated[EmbedderSettings, Depends(get_settings)]
Slot = Annotated[ModelSlot, Depends(get_slot)]


_bearer = HTTPBearer(auto_error=False, description="The service token (EMBEDDER_SERVICE_TOKEN)")


class TokenRefused(Exception):
    """401: the embedder has a service token and the request does not send it."""


def require_service_token(
    settings: Settings, bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> None:
    """With ``EMBEDDER_SERVICE_TOKEN`` set, only requests sending it as a Bearer credential pass."""
    if settings.service_token is None:
        return
    sent = bearer.credentials.encode() if bearer is not None else b""
    if not hmac.compare_digest(sent, settings.service_token.get_secret_value().encode()):
        raise TokenRefused(
            "the embedder's endpoints need its service token: send 'Authorization: Bearer <token>' "
            "(the search-api sends SEARCH_EMBEDDER_TOKEN; it must equal EMBEDDER_SERVICE_TOKEN)"
        )
