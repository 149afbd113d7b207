"""Settings shared by every service: where the infrastructure is and where data lives.

Each service adds its own settings class with its own prefix (``TILER_``, ``EMBEDDER_``,
``INDEXER_``, ``SEARCH_``, ``WEB_``); what every service needs lives here under ``CLIPRS_``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cliprs.tiles import MAX_ZOOM


@dataclass(frozen=True)
class NoData:
    """A colour a source paints where it has no imagery, matched within ``tolerance`` levels per
    channel (JPEG blurs a painted colour by a few levels)."""

    colour: tuple[int, int, int]
    tolerance: int = 0


class CoreSettings(BaseSettings):
    """Infrastructure and data locations (env prefix ``CLIPRS_``)."""

    model_config = SettingsConfigDict(env_prefix="CLIPRS_", extra="ignore")

    database_url: str = "postgresql://postgres:postgres@127.0.0.1:5432/cliprs"
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("var")
    # Named tile sources: name -> URL template. Schemes: http(s):// XYZ templates (env
    # references like ${MAPBOX_TOKEN} are expanded only at fetch time, so secrets stay out of
    # logs and the database), file:// folders laid out as {z}/{x}/{y}.{ext}, mbtiles:///file
    # and geotiff:///a.tif (or three band files R,G,B, comma-separated; any CRS, cut on the fly).
    tile_sources: dict[str, str] = Field(
        default_factory=lambda: {"demo": "file://var/demo-tiles/{z}/{x}/{y}.png"}
    )
    # Sources that paint missing imagery with a colour instead of leaving it transparent (the
    # alpha of PNG/WebP tiles marks no-data by itself): name -> [r, g, b], matched within
    # nodata_tolerance levels per channel. Windows mostly of that colour are not embedded.
    tile_nodata: dict[str, tuple[int, int, int]] = Field(default_factory=dict)
    nodata_tolerance: int = Field(8, ge=0, le=255)
    max_tiles_per_area: int = 5000
    max_zoom: int = MAX_ZOOM
    # Prefix for Redis keys and pub/sub channels, so two stacks can share one Redis.
    redis_namespace: str = "cliprs"
    # Seconds before a task held by a dead worker is redelivered (Redis visibility timeout).
    # Must exceed the longest task; a live worker's task is otherwise redelivered too (harmless,
    # every write is idempotent, but wasted work).
    task_visibility_timeout: int = 900
    # The reconciler (every worker runs one): how often it looks, and how long a job may go
    # without progress before its work is handed out again (PostGIS is the record of progress).
    reconcile_s: float = 30
    stall_s: float = 120
    # How many times a detection run whose worker stopped (died, or its retries ran out) is
    # handed out again before it fails with the reason.
    run_handouts: int = 3
    # Operations: log lines as JSON objects with the request id (or text); a Prometheus metrics
    # server per worker process from this port (the next free one when taken; 0 = off); the
    # longest URL an HTTP service accepts (414 in the JSON error shape beyond it).
    log_format: Literal["text", "json"] = "text"
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    max_url_bytes: int = Field(8192, ge=256)

    @field_validator("log_format", mode="before")
    @classmethod
    def _format(cls, value: object) -> object:
        # Anything but "json" reads as text: a typo must not stop a service from starting.
        return "json" if str(value).strip().lower() == "json" else "text"

    @field_validator("max_tiles_per_area")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("tile_nodata")
    @classmethod
    def _colours(cls, value: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, int, int]]:
        for name, colour in value.items():
            if not all(0 <= c <= 255 for c in colour):
                raise ValueError(f"the no-data colour of source {name!r} must be three levels 0..255")
        return value

    def nodata_for(self, source: str) -> NoData | None:
        """The no-data colour the source paints, if one is configured."""
        colour = self.tile_nodata.get(source)
        return None if colour is None else NoData(tuple(colour), self.nodata_tolerance)

    @property
    def tile_cache_dir(self) -> Path:
        return self.data_dir / "tiles"

    @property
    def vectors_dir(self) -> Path:
        return self.data_dir / "vectors"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def index_channel(self) -> str:
        """Redis pub/sub channel on which new index versions are announced."""
        return f"{self.redis_namespace}:index-updates"
