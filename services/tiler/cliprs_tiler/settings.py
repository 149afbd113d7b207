"""Tiler settings (env prefix ``TILER_``)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class TilerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TILER_", extra="ignore")

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
