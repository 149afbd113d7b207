"""Pagination cursors: opaque tokens that say where the next page starts.

The pages of one query are slices of one ranking (see `cliprs_search.ranking.pipeline`). A
cursor holds what fixes that ranking and where the previous page ended:

- the **effort** (the codec's lists probed and candidates re-ranked per result, as the first
  page resolved them) and the **depth** (the candidates the first round of the ranking asks
  for; each further round asks four times more), so every page searches alike;
- the **boundary**: the (score, window id) of the last hit shown; a page shows only hits
  strictly after it in the ranking's order (score descending, window id ascending), so no page
  repeats a hit of an earlier one;
- the offset of the next page (its hits' ranks), the index version that served the previous page
  and a fingerprint of the query, so a cursor is only ever used with the query that produced it.
  When the index version has changed in between, the page is still served (from the new version,
  after the boundary) with a warning.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass

from cliprs.errors import InvalidInput
from cliprs_index.shardset import Probe

# Bounds of what a cursor may ask for (the effort is also capped by the codec's list count).
MAX_NPROBE = 1 << 20
MAX_K_FACTOR = 1024

_MALFORMED = "the cursor is malformed; pass the next_cursor of a previous page unchanged"


@dataclass(frozen=True)
class Cursor:
    offset: int
    version: int
    fingerprint: str
    depth: int | None = None  # candidates of the ranking's first round
    after: tuple[float, int] | None = None  # (score, window id) of the last hit shown
    probe: Probe | None = None  # the effort, resolved (None: the index had no codec)


def fingerprint(query: dict) -> str:
    """A short stable hash of everything that defines a ranking (query, filters, options)."""
    raw = json.dumps(query, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def encode(cursor: Cursor) -> str:
    data: dict = {"o": cursor.offset, "v": cursor.version, "f": cursor.fingerprint}
    if cursor.depth is not None:
        data["d"] = cursor.depth
    if cursor.after is not None:
        data["a"] = [cursor.after[0], cursor.after[1]]  # a float's repr round-trips exactly
    if cursor.probe is not None:
        data["e"] = [cursor.probe.nprobe, cursor.probe.k_factor]
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, expected_fingerprint: str, max_depth: int | None = None) -> Cursor:
    """The cursor in ``token``; `InvalidInput` when it is malformed, asks for more than the
    bounds (``max_depth`` candidates) or belongs to another query."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        cursor = Cursor(
            _int(data["o"]),
            _int(data["v"]),
            _str(data["f"]),
            _int(data["d"]) if "d" in data else None,
            (_score(data["a"][0]), _int(data["a"][1])) if "a" in data and len(data["a"]) == 2 else None,
            Probe(_int(data["e"][0]), _int(data["e"][1])) if "e" in data and len(data["e"]) == 2 else None,
        )
        if ("a" in data and cursor.after is None) or ("e" in data and cursor.probe is None):
            raise ValueError("a boundary or effort of the wrong length")
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        raise InvalidInput(_MALFORMED) from None
    bad = (
        cursor.offset < 0
        or (cursor.depth is not None and not 1 <= cursor.depth <= (max_depth or cursor.depth))
        or (cursor.probe is not None and not 1 <= cursor.probe.nprobe <= MAX_NPROBE)
        or (cursor.probe is not None and not 1 <= cursor.probe.k_factor <= MAX_K_FACTOR)
    )
    if bad:
        raise InvalidInput(_MALFORMED)
    if cursor.fingerprint != expected_fingerprint:
        raise InvalidInput(
            "this cursor belongs to another query; repeat the query and filters that returned it, "
            "or leave the cursor out to start from the first page"
        )
    return cursor


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _score(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError("not a finite number")
    return float(value)
