"""A sample of the text queries users really type, as vectors, for the indexer's tuning.

Text embeddings sit in their own cone, away from the images' (CLIP's modality gap), so a codec
tuned on indexed vectors as queries misses text queries' neighbours. The search-api keeps the
vectors of the most recent text queries, per model (a model's vectors mean nothing in another's
space), in one capped Redis list (``LPUSH`` + ``LTRIM``: one round trip, no growth); the indexer
tunes the codec's text effort on them once there are enough, and on the modality-gap model
(`cliprs_index.text_queries`) before that. Only vectors are kept: never the query text, the
caller or the time.
"""

from __future__ import annotations

import numpy as np


def sample_key(namespace: str, model_id: str) -> str:
    return f"{namespace}:query-sample:text:{model_id}"


def encode(vector: np.ndarray) -> bytes:
    """One query vector as stored: float16, 1 KB at 512 dimensions."""
    return np.asarray(vector, dtype=np.float16).reshape(-1).tobytes()


async def record(client, namespace: str, model_id: str, vector: np.ndarray, keep: int) -> None:
    """Add one text query's vector to the model's sample, which keeps the latest ``keep``
    (``client``: a `redis.asyncio.Redis`)."""
    key = sample_key(namespace, model_id)
    async with client.pipeline(transaction=False) as pipe:
        pipe.lpush(key, encode(vector))
        pipe.ltrim(key, 0, keep - 1)
        await pipe.execute()


def size(client, namespace: str, model_id: str) -> int:
    """How many vectors the model's sample holds (``client``: a `redis.Redis`)."""
    return int(client.llen(sample_key(namespace, model_id)))


def recent(client, namespace: str, model_id: str, dim: int) -> np.ndarray:
    """The model's sampled text query vectors (float32, unit length), newest first; vectors of
    another dimension (a sample left by an earlier model under the same name) are left out."""
    rows = [
        np.frombuffer(blob, dtype=np.float16)
        for blob in client.lrange(sample_key(namespace, model_id), 0, -1)
        if len(blob) == 2 * dim
    ]
    if not rows:
        return np.empty((0, dim), dtype=np.float32)
    vectors = np.stack(rows).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    kept = norms > 0
    return vectors[kept] / norms[kept, None]
