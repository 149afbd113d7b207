"""Indexer settings (env prefix ``INDEXER_``)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class IndexerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_", extra="ignore")

    # Shards up to this many vectors use exact inner product (IndexFlatIP).
    flat_max_vectors: int = 200_000
