"""Whether the Hugging Face Hub can be reached, decided once before transformers is imported."""

from __future__ import annotations

import os

import httpx


def hub_reachable(timeout_s: float = 3) -> bool:
    try:
        httpx.head("https://huggingface.co", timeout=timeout_s)
        return True
    except httpx.HTTPError:
        return False


def prefer_offline_hub() -> bool:
    """Set ``HF_HUB_OFFLINE=1`` when it is unset and the Hub is out of reach; True if it set it.

    transformers reads the variable once, at import: call this first. Without it, a model that
    is not cached spends ~30 s in retries before failing or falling back.
    """
    if "HF_HUB_OFFLINE" in os.environ or hub_reachable():
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    return True
