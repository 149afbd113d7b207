"""How much to trust a result list: does the best hit stand out, and does anything match at all?

CLIP always returns nearest neighbours, even for a query that means nothing to it. Two signals
say so: the best score itself (text-to-image cosines below ``low_score`` mean nothing in the index
looks like the query), and how far the best hit stands above a random sample of the index, in
standard deviations (a flat score profile means the query does not single anything out).
"""

from __future__ import annotations

import numpy as np


def assess(
    query: np.ndarray,
    top_score: float | None,
    sample: np.ndarray | None,
    low_score: float | None,
    low_z: float,
    high_z: float,
) -> tuple[dict, str | None]:
    """(confidence block, warning or None). ``low_score`` None skips the absolute check (image
    queries, whose cosines to images run much higher than a text's)."""
    if top_score is None:
        return {"level": "none", "top_score": None, "z": None}, "nothing matched the query and filters"
    z = None
    if sample is not None and len(sample) >= 2:
        scores = sample @ np.asarray(query, dtype=np.float32).reshape(-1)
        std = float(scores.std())
        z = (top_score - float(scores.mean())) / std if std > 1e-9 else 0.0
    block = {
        "level": "high",
        "top_score": round(float(top_score), 6),
        "z": None if z is None else round(z, 2),
    }
    warning = None
    if low_score is not None and top_score < low_score:
        block["level"] = "low"
        warning = (
            f"the best match scores only {top_score:.2f} (below {low_score:.2f}): nothing in the index "
            "looks like this query; rephrase it or check the area"
        )
    elif z is not None and z < low_z:
        block["level"] = "low"
        warning = (
            f"the best match stands only {z:.1f} standard deviations above an average window: the query "
            "may mean nothing to the model; describe something visible from above"
        )
    elif z is not None and z < high_z:
        block["level"] = "medium"
    return block, warning
