"""Search-api settings (env prefix ``SEARCH_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from cliprs.clouds import CLOUDY_SCORE

CLASSIFY_TEMPLATE = "An aerial photograph of {label}"
# The highest cloud score that is not "cloudy": the largest float32 below CLOUDY_SCORE (the
# column is a real), so the inclusive max_cloud filter hides exactly the windows the detector
# calls cloudy (cloud_score >= CLOUDY_SCORE).
BELOW_CLOUDY = float(np.nextafter(np.float32(CLOUDY_SCORE), np.float32(0)))


class SearchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEARCH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    embedder_url: str = "http://127.0.0.1:8002"
    # Sent to the embedder as "Authorization: Bearer <token>": its EMBEDDER_SERVICE_TOKEN.
    embedder_token: SecretStr | None = None
    # Public base URL of the tiler, used in the image URLs of results.
    tiler_public_url: str = "http://127.0.0.1:8001"
    # Origins whose pages may call the API from a browser (CORS); the default is the web page
    # that `make up` serves. ["*"] allows any origin.
    cors_origins: list[str] = ["http://127.0.0.1:8080", "http://localhost:8080"]
    default_k: int = 20
    max_k: int = 200
    # How deep a cursor may page (offset + k).
    max_results: int = 1000
    max_query_chars: int = 1000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_polygon_vertices: int = 10_000

    # Window quality filters applied when a search does not set them (pass max_cloud=1 and
    # min_valid=0 to see every window): cloudy windows (cliprs.clouds.CLOUDY_SCORE) and windows
    # under 90 % imagery are hidden. The embedder skips windows under its own minimum valid
    # fraction (EMBEDDER_MIN_VALID, 0.9 too); this one matters when that is lowered.
    default_max_cloud: float = Field(BELOW_CLOUDY, ge=0.0, le=1.0)
    default_min_valid: float = Field(0.9, ge=0.0, le=1.0)
    # Identical windows (same fingerprint) collapsed into one hit: at most this many of their ids
    # are listed (the count is exact).
    max_identical_ids: int = 100

    # The picked shards are first asked for (offset + k) * overfetch / (the filter's estimated
    # selectivity) candidates, so that filters, the minimum score and merging still leave a full
    # page; they are asked for four times more (up to max_candidates) while they do not.
    overfetch: int = 3
    max_candidates: int = 20_000
    # The pages of a query are slices of one ranking, built in rounds of candidates: the first
    # round is sized for this many results (times overfetch, over the filter's share), whatever
    # page is asked for; each further round asks four times more and continues after the last.
    # Deeper first rounds rank more pages at the first round's recall, at a first page's cost.
    ranking_depth: int = Field(21, ge=1)
    # Filters: when the filter keeps at most this fraction of the picked shards' vectors
    # (estimated on a random sample of them), PostGIS lists the matching window ids (at most
    # selector_max_ids) and the index ranks exactly those; otherwise the shards are searched,
    # over-fetching, and PostGIS filters. A filter that fills a page neither way (more than
    # selector_max_ids matches, fewer than a page among max_candidates) answers an incomplete
    # page that says so.
    selector_max_fraction: float = 0.05
    selector_max_ids: int = 200_000
    filter_strategy: Literal["auto", "selector", "overfetch"] = "auto"
    # One FAISS thread per request: requests run in parallel instead, and OpenMP spinning on a
    # busy machine costs more than it gains for one query.
    faiss_threads: int = 1
    # Text queries search with the codec's text tuning (the indexer tunes it on the sampled
    # text queries below, or on the modality-gap model until there are enough of them), times
    # these (more than 1: more recall for more time).
    text_nprobe_scale: float = 1.0
    text_rerank_scale: float = 1.0
    # The vectors of the latest this many text queries are kept (per model, in Redis, no text)
    # for the indexer's tuning (cliprs.query_sample); 0 keeps none.
    query_sample_size: int = Field(2000, ge=0)

    # Merging: two windows hit the same object when their overlap covers at least merge_overlap
    # of the smaller one and their areas differ by at most merge_max_area_ratio (so one big
    # window does not swallow every small hit inside it).
    merge_overlap: float = 0.5
    merge_max_area_ratio: float = 4.0

    # Random windows of the picked shards, drawn per filter, whose rows estimate the filter's
    # selectivity (resolves the 5 % threshold to about +-1 %, in a few milliseconds of
    # primary-key lookups).
    selectivity_sample: int = 512
    # Text-to-image cosine below which nothing in the index looks like the query (CLIP ViT-B/32
    # puts relevant text-image pairs around 0.25-0.35); model dependent.
    low_score: float = 0.15
    # Standard deviations above the sample mean: below low_z the best hit does not stand out
    # from an average window; from high_z on it clearly does.
    low_z: float = 3.0
    high_z: float = 5.0

    # Image to text (zero-shot classification).
    classify_template: str = CLASSIFY_TEMPLATE
    classify_max_labels: int = 100
    classify_max_label_chars: int = 200
    # CLIP's learned logit scale (exp(4.6052) = 100) turns cosines into label probabilities.
    classify_logit_scale: float = 100.0

    # "Where in this tile is X": the heat map's grid side (cells per tile side).
    heatmap_grid: int = 16

    # Reverse geocoding of each hit's centre: "offline" names the nearest place of a bundled
    # GeoNames gazetteer; "nominatim" asks a Nominatim server (where its usage policy allows:
    # set a real user agent, keep the rate low) and falls back to offline; "none" turns it off.
    geocoder: Literal["offline", "nominatim", "none"] = "offline"
    gazetteer_path: Path | None = None  # default: the bundled cliprs_search/data/gazetteer.csv.gz
    geocoder_max_km: float = 100.0  # farther than this from every known place: no address
    nominatim_url: str = "https://nominatim.openstreetmap.org"
    nominatim_user_agent: str = "cliprs-search (set SEARCH_NOMINATIM_USER_AGENT to your contact)"
    nominatim_rate_per_s: float = 1.0
    nominatim_timeout_s: float = 3.0

    # How often to re-check the CURRENT pointer in case an announcement was missed.
    index_poll_s: float = 30.0
    # Each process tells the indexer, under a Redis key with this TTL renewed every
    # heartbeat_s, which index versions it holds; the indexer keeps those versions' files.
    heartbeat_s: float = 5.0
    searcher_ttl_s: float = 20.0

    # Access control (cliprs_search.access). "off" turns every check and quota off (development
    # and tests that are not about access); "on" applies the two rules below.
    auth: Literal["on", "off"] = "on"
    require_key_for_writes: bool = True
    require_key_for_reads: bool = False
    # Per-key token buckets in Redis (requests without a key share one per client address):
    # searches (text, similar, refine, classify, heat maps) and image uploads.
    search_rate_per_s: float = Field(5.0, gt=0)
    search_burst: int = Field(20, ge=1)
    upload_rate_per_s: float = Field(1.0, gt=0)
    upload_burst: int = Field(5, ge=1)
    # Tiles a key may plan from remote (http/https) sources per UTC day, counted when an area is
    # created (a key's own daily_tile_budget overrides it); local sources do not count.
    daily_tile_budget: int = Field(20_000, ge=0)
    # Proxies whose X-Forwarded-For is believed (see the field's description).
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDR blocks of reverse proxies in front of the API (e.g. "
        '["10.0.0.0/8"]). Only when a request comes straight from one of them is the client\'s '
        "address taken from X-Forwarded-For (its right-most entry that is not a trusted proxy); "
        "that address owns the quotas of requests without a key. Default: trust none, so every "
        "request's client is its direct peer (behind a proxy, anonymous callers then share one quota).",
    )

    # Exports and thresholds of detection runs.
    max_concurrent_exports: int = Field(
        16,
        ge=1,
        description="Run exports (GeoJSON, CSV, GeoPackage) this process sends at once; past it an "
        "export answers 503 with Retry-After. Exports read the database in short batches, each on a "
        "connection of its own, so a slow download holds a slot but no database connection.",
    )
    max_sync_threshold_hits: int = Field(
        20_000,
        ge=0,
        description="A new threshold of a run that gives more hits than this (counted from the run's "
        "histogram) is applied by the indexer in the background: PATCH /v1/runs/{id} answers 202 with "
        "the run 'rethresholding' until it is 'done' at the new threshold. Up to it, the request "
        "applies it (about a second per ten thousand hits).",
    )
