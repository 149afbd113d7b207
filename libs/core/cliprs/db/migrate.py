"""Run the Alembic migrations programmatically: ``python -m cliprs.db.migrate``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from cliprs.db.engine import sync_url
from cliprs.settings import CoreSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url(database_url).replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def ensure_database(database_url: str) -> None:
    """Create the database named in the URL if it does not exist (needs CREATEDB rights)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(sync_url(database_url))
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database}
        ).scalar()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()


if __name__ == "__main__":
    settings = CoreSettings()
    ensure_database(settings.database_url)
    upgrade(settings.database_url)
    print("database schema is up to date")
