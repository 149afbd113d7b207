"""Request and response models of the tiler's HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, Field

from cliprs_http.schemas import Readiness


class PlanRequest(BaseModel):
    bbox: list[float] | None = Field(None, description="[min_lon, min_lat, max_lon, max_lat]")
    polygon: dict | None = Field(None, description="a GeoJSON Polygon (or a Feature holding one), lon/lat")
    zooms: list[int] = Field(..., description="zoom levels to plan, e.g. [12, 13, 14]")


class PlanSummary(BaseModel):
    """What fetching an area would take, before any fetching."""

    tiles: int = Field(..., description="tiles over all zooms")
    per_zoom: dict[str, int] = Field(..., description="tiles per zoom level")
    exact: bool = Field(..., description="false when large levels were estimated, not enumerated")
    limit: int = Field(..., description="the platform's limit of tiles per area")
    within_limit: bool
    message: str | None = Field(None, description="only above the limit: what it needs and how to fix it")


class TileCounts(BaseModel):
    """Every planned tile is in exactly one of fetched, cached, failed, pending; ``embedded``
    counts the fetched or cached tiles the embedder has finished."""

    planned: int
    fetched: int
    cached: int = Field(..., description="already fetched before the job was created")
    failed: int
    pending: int
    embedded: int


class ZoomProgress(BaseModel):
    z: int
    planned: int
    fetched: int
    cached: int
    failed: int
    pending: int
    embedded: int


class TileFailure(BaseModel):
    z: int
    x: int
    y: int
    error: str | None


class JobProgress(BaseModel):
    """Per-zoom progress of an ingest job, from the tiles table (the source of truth)."""

    job_id: int
    area_id: int
    source: str
    state: str
    error: str | None
    totals: TileCounts
    zooms: list[ZoomProgress]
    failures: list[TileFailure] = Field(..., description="the first failed tiles, with their reasons")


class TilerReadiness(Readiness):
    sources: list[str] = Field(..., description="the configured tile sources")
