"""Tiler settings (env prefix ``TILER_``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TilerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TILER_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = 8001
    cors_origins: list[str] = ["*"]  # origins of the web page allowed to load tiles
    concurrency: int = 8  # tiles in flight at once per job
    rate_limit: float = 20.0  # requests per second to a remote source (token bucket)
    retries: int = 4  # attempts after the first, on timeouts, 429 and 5xx
    timeout_s: float = 20.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    embed_batch: int = 8  # tiles per embedding task, queued as soon as they are fetched
    user_agent: str = "clip-rs-tiler/0.1 (+https://github.com/clip-rs)"
    # Map tiles, window pixels and job progress need an API key with scope read (the
    # search-api's keys). Follows SEARCH_REQUIRE_KEY_FOR_READS unless TILER_REQUIRE_KEY_FOR_READS
    # is set, so one setting closes every read path of the platform.
    require_key_for_reads: bool = Field(
        False,
        validation_alias=AliasChoices("TILER_REQUIRE_KEY_FOR_READS", "SEARCH_REQUIRE_KEY_FOR_READS"),
    )
