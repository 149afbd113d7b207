"""API keys for tests: rows made with the search-api's own key code in the test database.

The test plugin turns access control off for every search-api a test starts
(``SEARCH_AUTH=off`` in the environment, unless a test or the caller set it), so the tests that
are not about access run as before; tests about access pass ``SearchSettings(auth="on")`` or
``{"SEARCH_AUTH": "on"}`` and use the ``api_keys`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import delete

from cliprs import keys as repo
from cliprs.db.engine import sync_engine
from cliprs.db.models import ApiKey


@dataclass(frozen=True)
class TestKey:
    __test__ = False  # not a test class

    id: int
    prefix: str
    secret: str
    scopes: tuple[str, ...]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


@contextmanager
def make_test_keys(database_url: str, name: str = "tests") -> Iterator[dict[str, TestKey]]:
    """Keys ``read``, ``write``, ``admin`` and ``revoked`` (a write key, revoked), deleted after."""
    engine = sync_engine(database_url)
    made: dict[str, TestKey] = {}
    try:
        with engine.begin() as conn:
            for label, scopes in (
                ("read", ["read"]),
                ("write", ["write"]),
                ("admin", ["admin"]),
                ("revoked", ["write"]),
            ):
                row, secret = repo.create_key(conn, f"{name} {label}", scopes)
                made[label] = TestKey(row["id"], row["prefix"], secret, tuple(row["scopes"]))
            repo.revoke_key(conn, made["revoked"].id)
        yield made
    finally:
        with engine.begin() as conn:
            conn.execute(delete(ApiKey).where(ApiKey.id.in_([k.id for k in made.values()])))
        engine.dispose()
