"""The search-api's readiness answer."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cliprs_http.schemas import Readiness


class SearchReadiness(Readiness):
    model: dict[str, Any] | None = Field(None, description="The embedder's model")
