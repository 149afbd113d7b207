"""Request and response models of projects, their labels and refine (issue 15).

A project is a named investigation over one or more areas: its text query, its labels (a
window marked positive or negative) and its detection runs. Refine answers the same
`SearchResults` as a search.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from cliprs_search.schemas.search import SearchOptions


def _absent_when_none(value: Any) -> bool:
    return value is None


# ----------------------------------------------------------------------------- requests


class ProjectCreate(BaseModel):
    """``POST /v1/projects``."""

    name: str = Field(..., max_length=200, examples=["Boats of Chincoteague"])
    query: str | None = Field(
        None,
        description="What the project looks for, in words (refine's text)",
        examples=["boats near a pier"],
    )
    area_ids: list[int] = Field(
        default_factory=list, description="The areas the project covers (GET /v1/areas lists them)"
    )


class ProjectUpdate(BaseModel):
    """``PATCH /v1/projects/{id}``: only the fields given change (``query: null`` clears the
    query; ``area_ids`` replaces the list)."""

    name: str | None = Field(None, max_length=200)
    query: str | None = None
    area_ids: list[int] | None = None


class LabelRequest(BaseModel):
    """``POST /v1/projects/{id}/labels``: mark a window; labelling it again replaces its label."""

    window_id: int = Field(..., description="A window of one of the project's areas (a search hit's id)")
    positive: bool = Field(..., description="True: what the project looks for; false: not that")
    by: str | None = Field(None, max_length=200, description="Who labelled it (free text)")


class RefineBody(SearchOptions):
    """``POST /v1/projects/{id}/refine``: every search option, the text to use instead of the
    project's query, and the Rocchio weights of the query vector
    ``normalise(a * text + b * mean(positives) - c * mean(negatives))``."""

    q: str | None = Field(None, description="Text instead of the project's query for this request")
    a: float = Field(1.0, ge=0.0, le=10.0, description="Weight of the text's vector")
    b: float = Field(0.75, ge=0.0, le=10.0, description="Weight of the mean of the positive windows' vectors")
    c: float = Field(0.25, ge=0.0, le=10.0, description="Weight of the mean of the negative windows' vectors")


# ----------------------------------------------------------------------------- answers


class LabelCounts(BaseModel):
    positive: int
    negative: int


class RunSummary(BaseModel):
    """A detection run of the project, in short (``GET /v1/runs/{id}`` has all of it)."""

    id: int
    state: str = Field(
        ...,
        description="queued, running, done, failed or rethresholding (done, a new threshold being applied)",
    )
    threshold: float
    windows_scored: int
    hits: int
    created_at: str
    finished_at: str | None


class Project(BaseModel):
    id: int
    name: str
    query: str | None
    area_ids: list[int]
    labels: LabelCounts
    runs: list[RunSummary] | None = Field(
        None,
        description="The project's runs, newest first (left out of the project list)",
        exclude_if=_absent_when_none,
    )
    created_at: str
    updated_at: str


class Label(BaseModel):
    window_id: int
    positive: bool
    created_at: str
    created_by: str | None
    center: list[float] = Field(..., description="[lon, lat] of the window's centre")
    z: int = Field(..., description="The window's zoom level")
    footprint: dict[str, Any] | None = Field(
        None, description="The window's footprint, a GeoJSON Polygon", exclude_if=_absent_when_none
    )
