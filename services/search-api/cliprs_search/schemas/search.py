"""Request and response models of search (what OpenAPI documents and FastAPI checks).

Search answers are GeoJSON FeatureCollections built on `cliprs_http.schemas`; one model,
`SearchOptions`, holds the options every search takes, whether they come from the query string
(``GET``, upload) or a JSON body (``POST /v1/search``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo, computed_field, field_validator

from cliprs_http.schemas import Feature, FeatureCollection

# ----------------------------------------------------------------------------- requests


def _comma_string(value: Any) -> Any:
    """The query string's ``bbox=a,b,c,d`` arrives as a one-item list (the field also takes a
    list, so FastAPI reads it as repeatable): unwrap it to the comma string it is."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    return value


def _share_field(description: str) -> Any:
    """An optional share of a window's pixels, 0..1: documented as such in OpenAPI, checked by
    `SearchOptions._share` (for a message that says what the values mean)."""
    return Field(None, json_schema_extra={"minimum": 0.0, "maximum": 1.0}, description=description)


class SearchOptions(BaseModel):
    """The options of every search: paging, filters and what each hit carries. ``GET`` searches
    read them from the query string, ``POST /v1/search`` from its JSON body."""

    k: int | None = Field(None, description="How many results per page (1..max_k)")
    cursor: str | None = Field(
        None, description="The next_cursor of the previous page (same query and filters)"
    )
    area_id: int | None = Field(None, description="Only windows of this area")
    zoom: list[int] | None = Field(None, description="Only these zoom levels (repeatable)")
    bbox: Annotated[str | list[float] | None, BeforeValidator(_comma_string)] = Field(
        None, description="min_lon,min_lat,max_lon,max_lat (a comma string, or a list in a JSON body)"
    )
    min_score: float = Field(
        -1.0, ge=-1.0, le=1.0, description="Minimum cosine similarity (the UI's sensitivity)"
    )
    merge: bool = Field(
        True, description="Merge overlapping windows that hit the same object into one result"
    )
    collapse: bool = Field(
        True,
        description="Collapse windows with identical pixels (identical vectors, e.g. blank or all-black "
        "windows) into one result, the best-ranked, which counts them in `identical`",
    )
    max_cloud: float | None = _share_field(
        "Highest cloud score that passes (0..1, inclusive): windows with cloud_score > max_cloud "
        "are left out. Default: just below the detector's 'cloudy' level (SEARCH_DEFAULT_MAX_CLOUD); "
        "1 keeps every window. Windows without a score (embedded before scoring existed) always pass",
    )
    min_valid: float | None = _share_field(
        "Lowest valid fraction that passes (0..1, inclusive): windows with less of their area "
        "holding imagery (not no-data) are left out. Default SEARCH_DEFAULT_MIN_VALID (0.9); 0 keeps every "
        "window. Windows without a fraction (embedded before it was measured) always pass",
    )
    address: bool = Field(True, description="Name the nearest known place of each hit (reverse geocoding)")

    @field_validator("max_cloud", "min_valid")
    @classmethod
    def _share(cls, value: float | None, info: ValidationInfo) -> float | None:
        # Checked here rather than with ge/le, for a message that says what the values mean.
        if value is not None and not 0.0 <= value <= 1.0:  # NaN fails too
            keep = "1" if info.field_name == "max_cloud" else "0"
            raise ValueError(
                f"must be within 0..1, a share of the window's pixels ({info.field_name}={keep} keeps every window)"
            )
        return value


class SearchBody(SearchOptions):
    """A search with every option, polygons included (JSON body of ``POST /v1/search``)."""

    q: str | None = Field(
        None, description="What to look for (text to image)", examples=["boats near a pier"]
    )
    window_id: int | None = Field(None, description="Find windows similar to this indexed one (instead of q)")
    polygon: dict | None = Field(
        None,
        description="GeoJSON Polygon or MultiPolygon (or a Feature holding one), lon/lat; hits intersect it",
        examples=[
            {"type": "Polygon", "coordinates": [[[-75.7, 37.6], [-75.5, 37.6], [-75.6, 37.7], [-75.7, 37.6]]]}
        ],
    )


# ----------------------------------------------------------------------------- search results


class Place(BaseModel):
    """The nearest known place of a hit (reverse geocoding), as every geocoder answers it."""

    name: str
    admin1: str = ""
    admin2: str = ""
    country: str = ""
    lon: float | None = None
    lat: float | None = None
    distance_km: float | None = Field(None, description="From the hit to the place")
    bearing: str | None = Field(None, description="Where the hit lies as seen from the place")
    source: str = ""

    @computed_field(description="e.g. '2.3 km NE of Onancock, Virginia, US'")
    @property
    def label(self) -> str:
        where = ", ".join(p for p in (self.name, self.admin1, self.country) if p)
        if self.distance_km is None or self.distance_km < 1.0:
            return where if self.distance_km is None else f"in {where}"
        return f"{self.distance_km:.1f} km {self.bearing} of {where}"


class TileRef(BaseModel):
    source: str
    z: int
    x: int
    y: int


def _absent_when_none(value: Any) -> bool:
    return value is None


def _optional(description: str | None = None) -> Any:
    """A property that only some answers have: left out (not null) where it does not apply."""
    return Field(None, description=description, exclude_if=_absent_when_none)


class HitProperties(BaseModel):
    window_id: int
    score: float = Field(..., description="Cosine similarity to the query")
    rank: int = Field(..., description="1-based, across pages")
    z: int
    scale: float = Field(..., description="Window side as a fraction of the tile side")
    tile: TileRef
    center: list[float] = Field(..., description="[lon, lat]")
    image_url: str = Field(..., description="The window's pixels, from the tiler")
    merged: int | None = _optional("How many overlapping windows merged into this hit (when merge=true)")
    merged_ids: list[int] | None = _optional("Their window ids")
    identical: int | None = _optional(
        "How many other windows with identical pixels (same fingerprint, hence the same vector and "
        "score) among the ranked candidates collapsed into this hit, itself not counted (when collapse=true)"
    )
    identical_ids: list[int] | None = _optional(
        "Their window ids (the first max_identical_ids of them, 100 by default)"
    )
    cloud_score: float | None = Field(
        None, description="Share of the window's valid pixels the cloud detector flags (0..1); null: unknown"
    )
    valid_fraction: float | None = Field(
        None, description="Share of the window's pixels that hold imagery, not no-data (0..1); null: unknown"
    )
    address: str | None = _optional("The nearest place's label (when address=true and one is known)")
    place: Place | None = _optional("The nearest known place")
    pixels: list[int] | None = _optional("Heat maps: [x0, y0, x1, y1] in the tile")


class HitFeature(Feature):
    """One window as a GeoJSON feature; ``id`` is the window id."""

    id: int
    properties: HitProperties


class FilterReport(BaseModel):
    strategy: Literal["index", "overfetch", "selector", "empty"]
    estimated_matches: int | None = Field(None, description="Estimated windows passing the filter")
    candidates: int = Field(..., description="Index hits examined")
    complete: bool = Field(
        True,
        description="False when the page may be missing hits: the filter matched too many windows to "
        "list and too few of the best candidates (see incomplete_reason)",
    )
    incomplete_reason: str | None = Field(None, description="Why the page is incomplete, and what to change")
    max_cloud: float = Field(
        ...,
        description="The max_cloud applied (the request's, or the default): windows scoring above it are left out",
    )
    min_valid: float = Field(
        ...,
        description="The min_valid applied (the request's, or the default): windows holding less imagery are left out",
    )


class Confidence(BaseModel):
    level: Literal["none", "low", "medium", "high"]
    top_score: float | None
    z: float | None = Field(None, description="Standard deviations of the best hit above an average window")


class SearchResults(FeatureCollection):
    """One page of hits, best first."""

    features: list[HitFeature]
    count: int
    index_version: int
    took_ms: float
    query: str | dict[str, Any] = Field(..., description="The text, or {window_id} / {image}")
    model: dict[str, Any] | None = Field(None, description="The model that embedded the query")
    next_cursor: str | None = Field(None, description="Pass as cursor for the next page; null on the last")
    merged: int = Field(..., description="Windows merged into the hits of this page")
    identical: int = Field(
        0, description="Windows with identical pixels collapsed into the hits of this page (collapse=true)"
    )
    filter: FilterReport
    confidence: Confidence
    warning: str | None = None
    timings_ms: dict[str, float]
