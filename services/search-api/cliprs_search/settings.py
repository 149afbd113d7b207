"""Search-api settings (env prefix ``SEARCH_``)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class SearchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEARCH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    embedder_url: str = "http://127.0.0.1:8002"
    # Public base URL of the tiler, used in the image URLs of results.
    tiler_public_url: str = "http://127.0.0.1:8001"
    cors_origins: list[str] = ["*"]
    default_k: int = 20
    max_k: int = 200
    # FAISS is asked for k * overfetch hits so that filters applied in PostGIS still leave k.
    overfetch: int = 10
    max_query_chars: int = 1000
    max_upload_bytes: int = 20 * 1024 * 1024
    # How often to re-check the CURRENT pointer in case an announcement was missed.
    index_poll_s: float = 30.0
