"""What the handlers take from the app: its settings and its model slot."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from cliprs_embedder.service import ModelSlot
from cliprs_embedder.settings import EmbedderSettings


def get_settings(request: Request) -> EmbedderSettings:
    return request.app.state.settings


def get_slot(request: Request) -> ModelSlot:
    return request.app.state.model


Settings = Annotated[EmbedderSettings, Depends(get_settings)]
Slot = Annotated[ModelSlot, Depends(get_slot)]
