"""Response models of the web service's own JSON endpoints."""

from __future__ import annotations

from pydantic import BaseModel, Field


class PageConfig(BaseModel):
    """``/config.json``: runtime config of the page (camelCase, as the page's JavaScript reads it)."""

    search_api_url: str = Field(serialization_alias="searchApiUrl", description="public search-api URL")
    tiler_url: str = Field(serialization_alias="tilerUrl", description="public tiler URL")
    mapbox_token: str | None = Field(
        serialization_alias="mapboxToken", description="browser token of the Mapbox base map, if any"
    )
