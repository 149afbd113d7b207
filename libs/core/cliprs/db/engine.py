"""Engines for the one database URL: psycopg2 for services and workers, asyncpg for the gateway."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, text

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


def _with_driver(url: str, driver: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"postgresql+{driver}://{rest}" if scheme.startswith("postgres") else url


def sync_url(url: str) -> str:
    return _with_driver(url, "psycopg2")


@lru_cache
def sync_engine(url: str) -> Engine:
    """A pooled engine per URL (cached so each process has one pool)."""
    return create_engine(sync_url(url), pool_pre_ping=True, future=True)


def async_engine(url: str) -> AsyncEngine:
    # Imported here: only the gateway needs asyncio support (and its greenlet dependency).
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(_with_driver(url, "asyncpg"), pool_pre_ping=True, pool_size=10)


def ping(url: str) -> None:
    """Raise if the database is not reachable."""
    with sync_engine(url).connect() as conn:
        conn.execute(text("SELECT 1"))
