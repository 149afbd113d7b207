"""A throwaway PostGIS database per test session or benchmark run.

Databases are created and dropped by pytest-postgresql's `DatabaseJanitor` (noproc: against the
PostgreSQL already running on loopback, ``CLIPRS_TEST_DATABASE_URL``). Each one is a copy of a
migrated template database, so a new database costs a file copy instead of the PostGIS
extension and every migration (about 3 s). The template's name carries a hash of the migration
files: a changed migration gets a new template, and the outdated ones are dropped.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from cliprs.db.engine import sync_engine, sync_url
from cliprs.db.migrate import MIGRATIONS, upgrade

ADMIN_URL = os.environ.get(
    "CLIPRS_TEST_DATABASE_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)
TEMPLATE_PREFIX = "cliprs_template_"
# One advisory lock key (any constant) serialises building a template across concurrent runs.
TEMPLATE_LOCK = 0x636C6970


def _janitor(admin: URL, dbname: str, template: str | None = None) -> DatabaseJanitor:
    return DatabaseJanitor(
        user=admin.username or "postgres",
        password=admin.password,
        host=admin.host or "127.0.0.1",
        port=admin.port or 5432,
        dbname=dbname,
        template_dbname=template,
        # Connect to "postgres" to create and drop (as `cliprs.db.migrate.ensure_database` does):
        # the URL may name an application database, even one that does not exist yet.
        maintenance_dbname="postgres",
        connection_timeout=10,
    )


def _url(admin: URL, dbname: str) -> str:
    return admin.set(drivername="postgresql", database=dbname).render_as_string(hide_password=False)


def migrations_hash() -> str:
    """A short hash of every migration file: it names the template those migrations build."""
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS.rglob("*.py")):
        digest.update(path.relative_to(MIGRATIONS).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def create_migrated(admin_url: str, name: str) -> None:
    """Create database ``name`` as a copy of the migrated template (built first when missing).

    Everything happens under one advisory lock, so concurrent runs neither build the same
    template twice nor drop an outdated template while another run copies it.
    """
    admin = make_url(admin_url)
    template = TEMPLATE_PREFIX + migrations_hash()
    with _janitor(admin, template).cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (TEMPLATE_LOCK,))
        try:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (TEMPLATE_PREFIX + "%",))
            existing = {row[0] for row in cur.fetchall()}
            for stale in existing - {template}:  # built from other migrations
                _janitor(admin, stale).drop()
            if template not in existing:
                _build_template(admin, template)
            _janitor(admin, name, template=template).init()
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (TEMPLATE_LOCK,))


def _build_template(admin: URL, name: str) -> None:
    # Built under a temporary name and renamed when complete, so a run killed half-way never
    # leaves a half-migrated template behind under the real name.
    building = f"{name}_building"
    janitor = _janitor(admin, building)
    janitor.drop()
    janitor.init()
    try:
        upgrade(_url(admin, building))  # Alembic's engine has no pool: nothing stays connected
        with janitor.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
    except BaseException:
        janitor.drop()
        raise


@contextmanager
def throwaway_database(admin_url: str = ADMIN_URL, prefix: str = "cliprs_test") -> Iterator[str]:
    """A freshly migrated database of its own, dropped afterwards (tests and benchmarks)."""
    admin = make_url(admin_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    create_migrated(admin_url, name)
    janitor = _janitor(admin, name)
    try:
        yield _url(admin, name)
    finally:
        sync_engine.cache_clear()  # let this process's pools go before the janitor drops the database
        janitor.drop()


def query(url: str, sql: str, **params: object) -> list:
    """Rows of one statement on a fresh connection (none kept: the server may be restarted
    between calls, as the fault tests and the soak do)."""
    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).all()
    finally:
        engine.dispose()
