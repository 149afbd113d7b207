"""Index versions record when the indexer removed their files (garbage collection).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE index_versions ADD COLUMN removed_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE index_versions DROP COLUMN removed_at")
