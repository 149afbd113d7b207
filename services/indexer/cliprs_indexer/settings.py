"""Indexer settings (env prefix ``INDEXER_``)."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class IndexerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_", extra="ignore")

    # While the whole index holds at most this many vectors every shard is exact (flat, about
    # 2 KB of memory per vector in each searcher); past it one IVF-PQ codec is trained and shared.
    flat_max_vectors: int = 100_000
    # Shards: windows in space-filling-curve order, cut at shard_max_vectors; shards smaller than
    # shard_min_vectors are merged with their neighbours along the curve after each change.
    shard_max_vectors: int = 500_000
    shard_min_vectors: int = 50_000
    # The codec's list count is planned for an index of this size (or the real one, if larger):
    # nlist ~ lists_per_sqrt * sqrt(size). Growing far past it calls for `rebuild` (retrains).
    planned_vectors: int = 1_000_000
    # Re-tune nprobe when the index has grown this many times since the last tuning (after the
    # change that grew it is published, so the tuning never delays a new area being served).
    retune_growth: float = 4.0
    # IVF-PQ: nprobe (and, if need be, the re-rank depth) are tuned on held-out queries until
    # recall@10 against exact search reaches this target.
    recall_target: float = 0.95
    # Tuning aims this much higher: its sample of queries is finite, new queries differ.
    recall_margin: float = 0.02
    tune_queries: int = 512
    # The tuning searches as deep as a search's first round does (the search-api ranks
    # SEARCH_RANKING_DEPTH 21 x SEARCH_OVERFETCH 3 candidates for any unfiltered page) and judges
    # the top 10 of it: the re-rank depth grows with it, and so does what a search costs.
    tune_depth: int = 63
    # Text queries' probe is tuned on the search-api's sample of recent text query vectors once
    # it holds this many (before that, on the modality-gap model); reaching it re-tunes.
    text_tune_min_queries: int = 200
    # nlist ~ lists_per_sqrt * sqrt(n), rounded to a power of two; k-means trains on at most
    # train_per_list vectors per list for kmeans_iterations rounds.
    lists_per_sqrt: float = 2.0
    train_per_list: int = 48
    kmeans_iterations: int = 12
    # Candidates re-ranked exactly (float16 rows): 10 * k_factor at least (a starting point; the
    # tuning doubles it when every list probed is not enough).
    k_factor: int = 32
    # "auto": train on GPU when faiss sees one (faiss-gpu), "cpu" never.
    device: Literal["auto", "cpu"] = "auto"
    # Garbage collection of old index versions: spare versions younger than gc_min_age_s (a
    # searcher may be about to register what it was just told about) and unpublished shard files
    # younger than gc_orphan_age_s (an indexer may be about to publish them).
    gc_min_age_s: float = 60.0
    gc_orphan_age_s: float = 3600.0
    # Vector chunks of tiles that no longer exist (a deleted area's, or one an embedder wrote for
    # a tile deleted meanwhile) are removed by the same collection once older than this.
    chunk_gc_min_age_s: float = 3600.0
    # How often (at most) one process walks the chunk folders for such chunks.
    chunk_gc_every_s: float = 600.0
    # When GC must keep versions that searchers still hold, it runs again this much later.
    gc_retry_s: float = 60.0
