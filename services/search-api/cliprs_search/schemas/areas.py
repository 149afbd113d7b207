"""Request and response models of areas, their ingest jobs and the live index version."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, computed_field


class AreaRequest(BaseModel):
    name: str = Field(..., min_length=1, max_length=200, examples=["Chincoteague harbour"])
    bbox: list[float] | None = Field(
        None,
        description="[min_lon, min_lat, max_lon, max_lat] (or give polygon)",
        examples=[[-75.6, 37.6, -75.5, 37.7]],
    )
    polygon: dict | None = Field(
        None, description="A GeoJSON Polygon, instead of bbox: only the tiles it overlaps are fetched"
    )
    zooms: list[int] = Field(..., examples=[[12, 13, 14]])
    source: str = Field("demo", description="A configured tile source name")


class Job(BaseModel):
    """An ingest job's progress."""

    id: int
    area_id: int
    state: str = Field(..., description="queued, fetching, embedding, indexing, done or failed")
    tiles_planned: int
    tiles_fetched: int
    tiles_cached: int
    tiles_failed: int
    tiles_embedded: int
    windows_embedded: int
    windows_indexed: int
    windows_skipped_nodata: int = Field(
        0,
        description="Windows not embedded because too little of them holds imagery "
        "(valid fraction under the embedder's minimum, EMBEDDER_MIN_VALID)",
    )
    stage_seconds: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds the embedder spent per pipeline stage (decode, resize, encode, write, ...), "
        "summed over its work units",
    )
    error: str | None
    created_at: str | None
    updated_at: str | None
    finished_at: str | None

    @computed_field(
        description="How the job ended: done, done_with_failures (some tiles failed; "
        "tiles_embedded + tiles_failed = tiles_planned) or failed; null while it runs"
    )
    @property
    def outcome(self) -> str | None:
        if self.state == "done":
            return "done_with_failures" if self.tiles_failed else "done"
        return "failed" if self.state == "failed" else None


class Area(BaseModel):
    id: int
    name: str
    source: str
    status: str
    zooms: list[int]
    bbox: list[float] = Field(..., description="[min_lon, min_lat, max_lon, max_lat]")
    created_at: str


class AreaWithJob(Area):
    job: Job | None = Field(None, description="The area's latest ingest job")


class AreaCreated(BaseModel):
    area: Area
    job: Job


class AreaDeletion(BaseModel):
    area: Area
    task_id: str = Field(..., description="The indexer's delete task")


class ShardInfo(BaseModel):
    stem: str
    count: int
    kind: str = Field(..., description="flat (exact) or ivfpq (the index's shared codec)")
    envelope: list[float] = Field(..., description="[west, south, east, north] of its tiles")
    zooms: list[int]
    area_ids: list[int]
    params: dict[str, Any]


class IndexInfo(BaseModel):
    """The index version this process serves (version null before anything is indexed)."""

    version: int | None
    vectors: int
    shards: list[ShardInfo]
    codec: dict[str, Any] | None = Field(
        None, description="The shared IVF-PQ codec: nlist, pq, tuned nprobe and k_factor, measured recall@10"
    )
    model_id: str | None = None
    dim: int | None = None
    created_at: float | None = Field(None, description="Unix time the version was published")
