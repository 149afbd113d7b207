"""Embedder work units: tile leases, per-stage seconds on ingest jobs.

A worker leases many fetched tiles at once (``lease_until``, ``leased_by``; claimed with
``FOR UPDATE SKIP LOCKED``, renewed while it works, taken over by another worker when it expires).
The partial indexes keep that claim cheap however many tiles are already embedded, and renewing,
releasing or looking for abandoned leases cheap however many tiles wait. A job records
the seconds its work units spent in each pipeline stage (decode, resize, encode, write, ...).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE tiles ADD COLUMN lease_until timestamptz, ADD COLUMN leased_by text;
        CREATE INDEX tiles_fetched_idx ON tiles (id) WHERE status = 'fetched';
        CREATE INDEX tiles_leased_idx ON tiles (leased_by) WHERE leased_by IS NOT NULL;
        ALTER TABLE ingest_jobs ADD COLUMN stage_seconds jsonb NOT NULL DEFAULT '{}';
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE ingest_jobs DROP COLUMN stage_seconds;
        DROP INDEX tiles_leased_idx, tiles_fetched_idx;
        ALTER TABLE tiles DROP COLUMN leased_by, DROP COLUMN lease_until;
        """
    )
