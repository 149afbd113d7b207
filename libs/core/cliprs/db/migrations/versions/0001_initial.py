"""Initial schema: areas, tiles, area_tiles, windows, ingest_jobs, index_versions.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    op.execute(
        """
        CREATE TABLE areas (
            id serial PRIMARY KEY,
            name varchar(200) NOT NULL,
            bbox geometry(Polygon, 4326) NOT NULL,
            zooms smallint[] NOT NULL,
            source varchar(100) NOT NULL,
            status varchar(20) NOT NULL DEFAULT 'pending',
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE tiles (
            id bigserial PRIMARY KEY,
            area_id integer NOT NULL REFERENCES areas(id) ON DELETE CASCADE,
            source varchar(100) NOT NULL,
            z smallint NOT NULL,
            x integer NOT NULL,
            y integer NOT NULL,
            polygon geometry(Polygon, 4326) NOT NULL,
            status varchar(20) NOT NULL DEFAULT 'planned',
            error text,
            content_hash varchar(64),
            tile_size smallint,
            fetched_at timestamptz,
            embedded_at timestamptz,
            CONSTRAINT tiles_source_zxy_key UNIQUE (source, z, x, y)
        );
        CREATE TABLE area_tiles (
            area_id integer NOT NULL REFERENCES areas(id) ON DELETE CASCADE,
            tile_id bigint NOT NULL REFERENCES tiles(id) ON DELETE CASCADE,
            PRIMARY KEY (area_id, tile_id)
        );
        CREATE INDEX area_tiles_tile_idx ON area_tiles (tile_id);
        CREATE TABLE windows (
            id bigint PRIMARY KEY,
            tile_id bigint NOT NULL REFERENCES tiles(id) ON DELETE CASCADE,
            z smallint NOT NULL,
            px_x0 smallint NOT NULL,
            px_y0 smallint NOT NULL,
            px_x1 smallint NOT NULL,
            px_y1 smallint NOT NULL,
            scale double precision NOT NULL,
            footprint geometry(Polygon, 4326) NOT NULL,
            center geometry(Point, 4326) NOT NULL
        );
        CREATE INDEX windows_footprint_gist ON windows USING gist (footprint);
        CREATE INDEX windows_tile_idx ON windows (tile_id);
        CREATE INDEX windows_z_idx ON windows (z);
        CREATE TABLE ingest_jobs (
            id serial PRIMARY KEY,
            area_id integer NOT NULL REFERENCES areas(id) ON DELETE CASCADE,
            state varchar(20) NOT NULL DEFAULT 'queued',
            tiles_planned integer NOT NULL DEFAULT 0,
            tiles_fetched integer NOT NULL DEFAULT 0,
            tiles_cached integer NOT NULL DEFAULT 0,
            tiles_failed integer NOT NULL DEFAULT 0,
            tiles_embedded integer NOT NULL DEFAULT 0,
            windows_embedded integer NOT NULL DEFAULT 0,
            windows_indexed integer NOT NULL DEFAULT 0,
            error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz
        );
        CREATE INDEX ingest_jobs_area_idx ON ingest_jobs (area_id);
        CREATE TABLE index_versions (
            version integer PRIMARY KEY,
            manifest_path text NOT NULL,
            shard_files jsonb NOT NULL,
            vector_count bigint NOT NULL,
            model_id text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE index_versions, ingest_jobs, windows, area_tiles, tiles, areas CASCADE")
