"""Pagination cursors: opaque tokens that say where the next page starts.

A cursor holds the offset of the next page, the index version that served the previous one and
a fingerprint of the query, so a cursor is only ever used with the query that produced it. A
page is the slice ``[offset, offset + k)`` of the merged, filtered ranking; when the index
version has changed in between, the page is still served (from the new version) with a warning.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from cliprs.errors import InvalidInput


@dataclass(frozen=True)
class Cursor:
    offset: int
    version: int
    fingerprint: str


def fingerprint(query: dict) -> str:
    """A short stable hash of everything that defines a ranking (query, filters, options)."""
    raw = json.dumps(query, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def encode(cursor: Cursor) -> str:
    raw = json.dumps({"o": cursor.offset, "v": cursor.version, "f": cursor.fingerprint}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, expected_fingerprint: str) -> Cursor:
    """The cursor in ``token``; `InvalidInput` when it is malformed or belongs to another query."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        cursor = Cursor(int(data["o"]), int(data["v"]), str(data["f"]))
    except (ValueError, KeyError, TypeError, RecursionError):
        raise InvalidInput(
            "the cursor is malformed; pass the next_cursor of a previous page unchanged"
        ) from None
    if cursor.offset < 0:
        raise InvalidInput("the cursor is malformed; pass the next_cursor of a previous page unchanged")
    if cursor.fingerprint != expected_fingerprint:
        raise InvalidInput(
            "this cursor belongs to another query; repeat the query and filters that returned it, "
            "or leave the cursor out to start from the first page"
        )
    return cursor
