"""Projects, labels and detection runs: from one search to every match in an area.

- ``projects``: a named investigation over one or more areas (``project_areas``), with its text
  query.
- ``labels``: a window marked positive or negative in a project (one label per window and
  project; the window's deletion removes it).
- ``detect_runs``: a classifier trained on a project's labels and run over every window of its
  areas: the model, the threshold, a histogram of the scores (counts at any threshold without a
  query), the precision estimated on held-out labels, state and timings.
- ``run_hits``: a run's windows at or above its current threshold, with their scores.
- ``run_polygons``: those hits dissolved per zoom level (touching or overlapping windows merge),
  with area, max and mean score and the windows each holds.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE projects (
            id serial PRIMARY KEY,
            name text NOT NULL,
            query text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE project_areas (
            project_id integer NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
            area_id integer NOT NULL REFERENCES areas (id) ON DELETE CASCADE,
            PRIMARY KEY (project_id, area_id)
        );
        CREATE INDEX project_areas_area_idx ON project_areas (area_id);
        CREATE TABLE labels (
            id bigserial PRIMARY KEY,
            project_id integer NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
            window_id bigint NOT NULL REFERENCES windows (id) ON DELETE CASCADE,
            positive boolean NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            created_by text,
            UNIQUE (project_id, window_id)
        );
        CREATE INDEX labels_window_idx ON labels (window_id);
        CREATE TABLE detect_runs (
            id serial PRIMARY KEY,
            project_id integer NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
            state varchar(20) NOT NULL DEFAULT 'queued',
            threshold real NOT NULL DEFAULT 0.5,
            model jsonb,
            histogram jsonb,
            estimate jsonb,
            windows_scored bigint NOT NULL DEFAULT 0,
            hits integer NOT NULL DEFAULT 0,
            stage_seconds jsonb NOT NULL DEFAULT '{}'::jsonb,
            error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz
        );
        CREATE INDEX detect_runs_project_idx ON detect_runs (project_id);
        CREATE TABLE run_hits (
            run_id integer NOT NULL REFERENCES detect_runs (id) ON DELETE CASCADE,
            window_id bigint NOT NULL,
            score real NOT NULL,
            PRIMARY KEY (run_id, window_id)
        );
        CREATE TABLE run_polygons (
            id bigserial PRIMARY KEY,
            run_id integer NOT NULL REFERENCES detect_runs (id) ON DELETE CASCADE,
            z smallint NOT NULL,
            geom geometry(MultiPolygon, 4326) NOT NULL,
            area_m2 double precision NOT NULL,
            max_score real NOT NULL,
            mean_score real NOT NULL,
            window_count integer NOT NULL,
            window_ids bigint[] NOT NULL
        );
        CREATE INDEX run_polygons_run_idx ON run_polygons (run_id);
        CREATE INDEX run_polygons_geom_idx ON run_polygons USING gist (geom);
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP TABLE run_polygons; DROP TABLE run_hits; DROP TABLE detect_runs; DROP TABLE labels; "
        "DROP TABLE project_areas; DROP TABLE projects"
    )
