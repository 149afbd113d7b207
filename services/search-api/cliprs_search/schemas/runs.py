"""Request and response bodies of the detection-run endpoints (`routes/runs.py`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from cliprs_http.schemas import FeatureCollection

# queued -> running -> done | failed; done -> rethresholding -> done (a new threshold applied by
# the indexer in the background; the results stay the current threshold's meanwhile).
RunState = Literal["queued", "running", "done", "failed", "rethresholding"]


class RunRequest(BaseModel):
    """Start a Detect run; the threshold (a probability) is snapped to steps of 0.001."""

    threshold: float = Field(0.5, ge=0.0, le=1.0, description="hits are windows scoring at least this")


class ThresholdRequest(BaseModel):
    threshold: float = Field(..., ge=0.0, le=1.0, description="the new threshold (steps of 0.001)")


class Estimate(BaseModel):
    """Precision and recall at the run's threshold on labels held out of training."""

    model_config = {"extra": "allow"}

    precision: float | None = None
    recall: float | None = None
    held_out_positive: int = 0
    held_out_negative: int = 0


class RunModel(BaseModel):
    """The classifier: its kind and a summary (coefficients, intercept, training-set sizes)."""

    model_config = {"extra": "allow"}

    kind: str


class Run(BaseModel):
    id: int
    project_id: int
    state: RunState
    threshold: float
    windows_scored: int
    hits: int
    estimate: Estimate | None = None
    model: RunModel | None = None
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


class ThresholdCount(BaseModel):
    threshold: float
    count: int


class RunCounts(BaseModel):
    """Hits at each asked threshold, from the run's score histogram (no scan)."""

    run_id: int
    windows_scored: int
    bins: int = Field(description="histogram bins on 0..1")
    counts: list[ThresholdCount]
    histogram: list[int] | None = Field(None, description="the counts per bin, when asked for")


class RunPolygons(FeatureCollection):
    """The run's hits dissolved per zoom: one feature per polygon, paged."""

    run_id: int
    threshold: float
    total: int = Field(description="polygons of the run at its current threshold")
    limit: int
    offset: int
    next_offset: int | None
