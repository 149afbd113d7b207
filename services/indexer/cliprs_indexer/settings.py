"""Indexer settings (env prefix ``INDEXER_``)."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class IndexerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_", extra="ignore")

    # Shards up to this many vectors use exact inner product (IndexFlatIP); larger ones IVF-PQ.
    flat_max_vectors: int = 200_000
    # IVF-PQ: nprobe (and, if need be, the re-rank depth) are tuned on held-out queries until
    # recall@10 against exact search reaches this target.
    recall_target: float = 0.95
    # Tuning aims this much higher: its sample of queries is finite, new queries differ.
    recall_margin: float = 0.02
    tune_queries: int = 512
    # nlist ~ lists_per_sqrt * sqrt(n), rounded to a power of two; k-means trains on at most
    # train_per_list vectors per list (faiss wants >= 39) for kmeans_iterations rounds.
    lists_per_sqrt: float = 2.0
    train_per_list: int = 48
    kmeans_iterations: int = 12
    # Candidates re-ranked with 8-bit scalar-quantised vectors, per result (a starting point).
    k_factor: int = 32
    # "auto": train on GPU when faiss sees one (faiss-gpu), "cpu" never.
    device: Literal["auto", "cpu"] = "auto"
    # Garbage collection of old index versions: spare versions younger than gc_min_age_s (a
    # searcher may be about to register what it was just told about) and unpublished shard files
    # younger than gc_orphan_age_s (an indexer may be about to publish them).
    gc_min_age_s: float = 60.0
    gc_orphan_age_s: float = 3600.0
    # When GC must keep versions that searchers still hold, it runs again this much later.
    gc_retry_s: float = 60.0
