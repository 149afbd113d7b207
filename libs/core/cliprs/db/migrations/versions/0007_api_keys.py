"""API keys and the audit trail.

- ``api_keys``: a key is shown once at creation and stored only as the SHA-256 of its text
  (``key_hash``); ``prefix`` is its public id (the start of the key, e.g. ``ck_1a2b3c4d``), safe
  to show and log. ``scopes`` is a subset of read, write, admin; ``revoked_at`` set means refused.
  ``daily_tile_budget`` overrides the search-api's default budget of remote tiles per day.
- ``audit_log``: one row per write (areas, projects, labels, runs, keys): when, by which key
  (``key_id``, ``key_prefix``; null for the command line), the action, its target and what
  changed (JSON).

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE api_keys (
            id serial PRIMARY KEY,
            prefix varchar(32) NOT NULL UNIQUE,
            key_hash char(64) NOT NULL UNIQUE,
            name text NOT NULL,
            scopes text[] NOT NULL,
            daily_tile_budget integer,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz,
            CHECK (scopes <@ ARRAY['read', 'write', 'admin']::text[] AND cardinality(scopes) > 0)
        );
        CREATE TABLE audit_log (
            id bigserial PRIMARY KEY,
            at timestamptz NOT NULL DEFAULT now(),
            key_id integer REFERENCES api_keys (id) ON DELETE SET NULL,
            key_prefix varchar(32),
            actor text NOT NULL,
            action text NOT NULL,
            target text,
            method varchar(10),
            path text,
            status smallint,
            changes jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX audit_log_at_idx ON audit_log (at);
        CREATE INDEX audit_log_key_idx ON audit_log (key_id, id);
        CREATE INDEX audit_log_action_idx ON audit_log (action, id);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE audit_log; DROP TABLE api_keys")
