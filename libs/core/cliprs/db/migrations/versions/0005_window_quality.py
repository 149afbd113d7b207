"""Windows carry their quality; jobs count the windows skipped for no-data.

- ``windows.valid_fraction``: the share of the window's pixels that hold imagery (not no-data);
  windows below the embedder's minimum are not embedded at all.
- ``windows.cloud_score``: the share of its valid pixels the cloud detector flags
  (`cliprs.clouds`).
- ``windows.fingerprint``: a 64-bit hash of the model input the window was embedded from; windows
  with equal fingerprints have identical vectors, and search collapses them into one result.
- ``tiles.windows_skipped`` and ``ingest_jobs.windows_skipped_nodata``: windows not embedded
  because they were mostly no-data (per tile, so a job's count can be recounted exactly).

Rows embedded before this migration keep NULLs: unknown quality passes the search filters and
never collapses. Re-ingesting an area (delete it, create it again) fills them in.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE windows ADD COLUMN valid_fraction real, ADD COLUMN cloud_score real, "
        "ADD COLUMN fingerprint bigint"
    )
    op.execute("ALTER TABLE tiles ADD COLUMN windows_skipped integer")
    op.execute("ALTER TABLE ingest_jobs ADD COLUMN windows_skipped_nodata integer NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE ingest_jobs DROP COLUMN windows_skipped_nodata")
    op.execute("ALTER TABLE tiles DROP COLUMN windows_skipped")
    op.execute(
        "ALTER TABLE windows DROP COLUMN fingerprint, DROP COLUMN cloud_score, DROP COLUMN valid_fraction"
    )
