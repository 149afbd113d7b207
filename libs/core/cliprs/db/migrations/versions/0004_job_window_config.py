"""Jobs record the window configuration their tiles are cut with.

Window ids depend on how a tile is cut (scales, stride): the first embedder worker to lease a
job's tiles records its configuration on the job, and a worker configured differently refuses
to embed that job's tiles instead of writing vectors that disagree with the rows.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE ingest_jobs ADD COLUMN window_config text")


def downgrade() -> None:
    op.execute("ALTER TABLE ingest_jobs DROP COLUMN window_config")
