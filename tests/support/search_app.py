"""The search-api in-process over seeded areas: what the API-level tests share.

`core_for_test` gives settings of a test's own (data folder, Redis namespace), `index_seeded`
writes an area's vectors as the embedder does and publishes them with the indexer's own code,
and `search_api` builds the app with the embedder app behind it (no network, the tiny CLIP).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI

from cliprs.settings import CoreSettings
from cliprs_testing.synthetic import SeededArea, write_area_chunks


def core_for_test(pg_url: str, redis_url: str, data_dir: Path, name: str) -> CoreSettings:
    """Core settings of one test module: its own data folder and Redis namespace."""
    return CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=data_dir,
        redis_namespace=f"{name}-{uuid.uuid4().hex[:6]}",
    )


def index_seeded(core: CoreSettings, area: SeededArea, vectors: np.ndarray, model_id: str) -> None:
    """Write the area's vector chunks and publish it into the index (the indexer's code)."""
    from cliprs_indexer.build import collect_area_vectors, publish_area

    write_area_chunks(core.vectors_dir, area, vectors, model_id)
    publish_area(core, area.area_id, collect_area_vectors(core, area.area_id))


def search_api(core: CoreSettings, encoder, **settings) -> tuple[FastAPI, FastAPI]:
    """(the search-api app, the embedder app it calls in-process) on ``encoder``; ``settings``:
    search-api settings off their defaults."""
    from cliprs_embedder.app import create_app as create_embedder
    from cliprs_search.app import create_app
    from cliprs_search.settings import SearchSettings

    embedder = create_embedder(encoder=encoder)
    app = create_app(
        core,
        SearchSettings(embedder_url="http://embedder", tiler_public_url="http://tiler.test", **settings),
        embedder_transport=httpx.ASGITransport(app=embedder),
    )
    return app, embedder
