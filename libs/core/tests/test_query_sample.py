"""The sample of recent text query vectors, in a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import redis
import redis.asyncio as aioredis

from cliprs import query_sample


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_the_sample_keeps_the_latest_vectors_of_each_model(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(1)
    vectors = [_unit(rng, 16) for _ in range(7)]

    async def record() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            for v in vectors:
                await query_sample.record(client, namespace, "model-a", v, keep=5)
            await query_sample.record(client, namespace, "model-b", vectors[0], keep=5)
        finally:
            await client.aclose()

    asyncio.run(record())
    with redis.Redis.from_url(redis_url) as client:
        try:
            assert query_sample.size(client, namespace, "model-a") == 5
            assert query_sample.size(client, namespace, "model-b") == 1
            kept = query_sample.recent(client, namespace, "model-a", 16)
            # Newest first, float16 as stored, unit length again.
            assert np.allclose(kept, np.stack(vectors[::-1][:5]), atol=2e-3)
            assert np.allclose(np.linalg.norm(kept, axis=1), 1.0, atol=1e-5)
            # Vectors of another dimension (an earlier model under the same name) are left out.
            assert query_sample.recent(client, namespace, "model-a", 32).shape == (0, 32)
            assert query_sample.recent(client, namespace, "nobody", 16).shape == (0, 16)
        finally:
            for model in ("model-a", "model-b"):
                client.delete(query_sample.sample_key(namespace, model))
