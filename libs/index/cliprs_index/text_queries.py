"""Text-like query vectors from image vectors: the modality-gap model.

CLIP's text and image embeddings live in two cones; a caption and its image meet at a cosine of
about 0.3. With ``x`` an image vector, ``g`` one fixed random unit direction orthogonal to the
images' mean (the gap) and ``e`` an isotropic random unit vector per query,
``q = normalize(0.3 * x + 0.8 * g + 0.52 * e)``: ``cos(q, x)`` is about 0.3 and two such queries
meet at about 0.68. The indexer tunes text queries' effort on these until it has a sample of
real ones (`cliprs.query_sample`); bench-search measures text recall with its own draw.
"""

from __future__ import annotations

import numpy as np

# Weights of the image, the gap and the noise (unit vectors, nearly orthogonal to each other).
IMAGE_WEIGHT, GAP_WEIGHT, NOISE_WEIGHT = 0.3, 0.8, 0.52


def gap_direction(images: np.ndarray, seed: int) -> np.ndarray:
    """A random unit direction orthogonal to the mean of ``images``: the two cones sit side by
    side, and the cosine of a query to its image stays at IMAGE_WEIGHT whatever the draw."""
    gap = np.random.default_rng(seed).standard_normal(images.shape[1]).astype(np.float32)
    centre = images.mean(axis=0) / np.linalg.norm(images.mean(axis=0))
    gap -= (gap @ centre) * centre
    return gap / np.linalg.norm(gap)


def modality_gap_queries(images: np.ndarray, gap: np.ndarray, seed: int) -> np.ndarray:
    """One text-like query per row of ``images`` (unit vectors) across the ``gap``."""
    noise = np.random.default_rng(seed).standard_normal(images.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    q = IMAGE_WEIGHT * images + GAP_WEIGHT * gap + NOISE_WEIGHT * noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
