"""Reads that need an API key: with ``TILER_REQUIRE_KEY_FOR_READS`` (or the search-api's
``SEARCH_REQUIRE_KEY_FOR_READS``, which it follows unless set itself), map tiles, window pixels
and job progress answer only a request that sends a valid key with the read scope, the same keys
the search-api checks (`cliprs.keys`, looked up in PostgreSQL on every request, so a revoked key
is refused at once). Liveness, readiness, metrics and plan previews stay public: they show no
imagery and cost no provider anything."""

from __future__ import annotations

from sqlalchemy import Engine

from cliprs import keys
from cliprs.keys import HOW_TO_SEND


class KeyRefused(Exception):
    """401 (no usable key) or 403 (a key without the read scope)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def key_of(authorization: str | None, key: str | None) -> str | None:
    """The key a request sends (``X-API-Key``, or a Bearer credential); KeyRefused when it sends
    an Authorization header that is not ``Bearer <key>`` and no key."""
    if key and key.strip():
        return key.strip()
    if authorization:
        raise KeyRefused(
            401, "unauthorized", f"the Authorization header is not 'Bearer <key>'; {HOW_TO_SEND}"
        )
    return None


def check_read_key(engine: Engine, key: str | None, what: str) -> None:
    """Nothing when ``key`` is a live key granting read; else KeyRefused naming what to do."""
    if key is None:
        raise KeyRefused(401, "unauthorized", f"{what} needs an API key with scope read; {HOW_TO_SEND}")
    with engine.connect() as conn:
        row = keys.key_for_secret(conn, key)
    if (why := keys.unusable(row)) is not None:
        raise KeyRefused(401, "unauthorized", why)
    if "read" not in keys.granted(list(row["scopes"])):
        raise KeyRefused(403, "forbidden", f"API key {row['prefix']} does not grant read; {what} needs it")
