"""Request and response models of zero-shot labelling (``POST /v1/classify``) and the per-tile
heat map (``GET /v1/tiles/{source}/{z}/{x}/{y}/heatmap``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from cliprs_http.schemas import FeatureCollection
from cliprs_search.schemas.search import HitFeature


class LabelScore(BaseModel):
    label: str
    prompt: str
    score: float = Field(..., description="Cosine of the prompt to the image")
    probability: float = Field(..., description="CLIP's softmax over the labels")
    rank: int


class Classification(BaseModel):
    labels: list[LabelScore]
    best: str
    template: str
    query: dict[str, Any] = Field(..., description="{image: filename} or {window_id}")
    model: dict[str, Any] | None
    took_ms: float


class HeatmapTile(BaseModel):
    source: str
    z: int
    x: int
    y: int
    size: int = Field(..., description="Tile side in pixels")
    bounds: list[float] = Field(..., description="[west, south, east, north]")


class HeatGrid(BaseModel):
    cells: int = Field(..., description="Cells per tile side")
    values: list[list[float | None]] = Field(
        ..., description="Rows top to bottom; null where no window covers"
    )


class Heatmap(FeatureCollection):
    """Every window of one tile scored against a text, best first, and the grid of mean scores."""

    features: list[HitFeature]
    count: int
    tile: HeatmapTile
    grid: HeatGrid
    best: int = Field(..., description="The best window's id")
    query: str
    model: dict[str, Any] | None
    index_version: int
    took_ms: float
