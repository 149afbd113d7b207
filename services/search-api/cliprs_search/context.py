"""What every request needs, built once per app: settings, the index holder, the database engine,
the embedder client, the Celery client, the quotas and the geocoder."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import faiss
from celery import Celery
from sqlalchemy.ext.asyncio import AsyncEngine

from cliprs.errors import Unavailable
from cliprs.settings import CoreSettings
from cliprs_search.access.quotas import Quotas
from cliprs_search.embedder_client import EmbedderClient
from cliprs_search.geocode import Geocoder
from cliprs_search.index import IndexHolder, LoadedIndex
from cliprs_search.settings import SearchSettings


class Slots:
    """At most ``limit`` concurrent uses of something (one event loop: no lock needed); a use
    that does not fit is refused at once rather than queued."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def give_back(self) -> None:
        self.used = max(0, self.used - 1)


@dataclass
class Context:
    core: CoreSettings
    settings: SearchSettings
    holder: IndexHolder
    engine: AsyncEngine
    embedder: EmbedderClient
    celery: Celery
    quotas: Quotas  # Redis, connected on first use
    geocoder: Geocoder | None = None
    # FAISS runs on these threads, each limited to settings.faiss_threads OpenMP threads (the
    # limit is per calling thread, so it must be set on the threads that search).
    faiss_pool: ThreadPoolExecutor = field(init=False)
    # Run exports being sent (settings.max_concurrent_exports).
    exports: Slots = field(init=False)

    def __post_init__(self) -> None:
        self.faiss_pool = faiss_executor(self.settings.faiss_threads)
        self.exports = Slots(self.settings.max_concurrent_exports)

    def index(self) -> LoadedIndex:
        """The live index snapshot; a request keeps using the one it got."""
        index = self.holder.current
        if index is None or not index.shards:
            raise Unavailable(
                "nothing is indexed yet; create an area with POST /v1/areas and wait for its job"
            )
        return index


def faiss_executor(omp_threads: int, workers: int | None = None) -> ThreadPoolExecutor:
    """A thread pool whose threads each run FAISS with ``omp_threads`` OpenMP threads."""
    return ThreadPoolExecutor(
        max_workers=workers or max(2, os.cpu_count() or 2),
        thread_name_prefix="faiss",
        initializer=faiss.omp_set_num_threads,
        initargs=(omp_threads,),
    )
