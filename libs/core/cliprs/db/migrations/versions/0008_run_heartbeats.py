"""Detection runs the reconciler can account for.

- ``detect_runs.heartbeat_at``: the run's last sign of life: created, queued again, started by
  the indexer, and every few seconds while the indexer works on it. A queued run whose
  ``heartbeat_at`` is older than ``CLIPRS_STALL_S`` lost its task; a running one lost its worker
  (or its retries ran out). Not ``updated_at``: that is the version of a run's results, which
  exports and tile ETags compare.
- ``detect_runs.handouts``: how many times the reconciler handed a running run out again; past
  ``CLIPRS_RUN_HANDOUTS`` the run fails with the reason.
- A partial index on the unfinished runs keeps the reconciler's look cheap however many runs
  are done.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE detect_runs
            ADD COLUMN heartbeat_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN handouts integer NOT NULL DEFAULT 0;
        CREATE INDEX detect_runs_unfinished_idx ON detect_runs (heartbeat_at)
            WHERE state IN ('queued', 'running');
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX detect_runs_unfinished_idx;
        ALTER TABLE detect_runs DROP COLUMN handouts, DROP COLUMN heartbeat_at;
        """
    )
