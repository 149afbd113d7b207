"""The search-api's own gauges for ``/metrics``: the live index and the Celery queues."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cliprs.metrics import QueueCollector
from cliprs_search.context import Context


class IndexCollector(Collector):
    """``cliprs_index_version``, ``cliprs_index_vectors`` and ``cliprs_index_shard_vectors{shard,kind}``
    of the index this process serves, read at scrape time (a hot swap shows at the next scrape)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def collect(self):
        version = GaugeMetricFamily("cliprs_index_version", "Version of the index this searcher serves")
        total = GaugeMetricFamily("cliprs_index_vectors", "Vectors in the index this searcher serves")
        shards = GaugeMetricFamily(
            "cliprs_index_shard_vectors", "Vectors per shard of the served index", labels=["shard", "kind"]
        )
        index = self.ctx.holder.current
        if index is not None:
            version.add_metric([], float(index.version))
            total.add_metric([], float(index.manifest.vector_count))
            for shard in index.manifest.shards:
                shards.add_metric([shard.stem, shard.kind], float(shard.count))
        yield version
        yield total
        yield shards


def collectors(ctx: Context) -> list[Collector]:
    return [IndexCollector(ctx), QueueCollector(ctx.core.redis_url)]
