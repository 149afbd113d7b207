"""Response models every service shares: errors, health, readiness, GeoJSON."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    code: str  # machine-readable: invalid_input, invalid_request, too_large, not_found, unavailable, internal
    message: str  # how to fix the request, or what is down


class ErrorResponse(BaseModel):
    error: ErrorDetail


# Pass as ``responses=`` to a router or an app so OpenAPI documents the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A value in the request is wrong (invalid_input)"},
    404: {"model": ErrorResponse, "description": "Not found (not_found)"},
    422: {
        "model": ErrorResponse,
        "description": "Schema mismatch (invalid_request) or over a limit (too_large)",
    },
    503: {"model": ErrorResponse, "description": "A dependency is unavailable; retry after Retry-After"},
}
# For endpoints that need a finished detection run.
RUN_NOT_DONE: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "The run is not done (queued, running or failed): conflict"},
}


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """``/readyz``: each check's ``ok`` and timing or error; services add their own fields."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ready", "unavailable"]
    checks: dict[str, dict[str, Any]]


class GeoJSONGeometry(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    coordinates: Any


class Feature(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["Feature"] = "Feature"
    id: int | str | None = None
    geometry: GeoJSONGeometry | None
    properties: dict[str, Any]


class FeatureCollection(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[Feature]
