"""The STAC items behind each tile (issue 25): what a tile shows, and when it was taken.

- ``stac_items``: every STAC item a deployment has drawn a tile from, once per source
  (``tiles.source``: the configured name, as tiles are keyed) and item (collection and id; items
  without a collection are one key too: ``NULLS NOT DISTINCT``), with ``acquired_at`` (the item's
  STAC ``datetime``, or its ``start_datetime`` when it has a range; the tile's date below bears
  the same name), ``cloud_cover`` (``eo:cloud_cover``, NULL when the item has none) and its
  footprint (lon/lat, always a MultiPolygon; NULL when the item has no geometry). A row is
  written the first time a tile is drawn from the item and not revised: a catalog's items keep
  their metadata (a reprocessed scene is a new item). Rows stay when no tile uses them any more:
  one per scene, they are the deployment's record of what it drew from, and an area created
  again links them again.
- ``tile_items``: which items a tile was drawn from and in what mosaic order (``position`` 0 is
  laid first; later items fill only where earlier ones have no data). A fetch replaces a tile's
  links in the transaction that marks it fetched, so a tile fetched twice keeps one set;
  deleting a tile (its area deleted) removes its links. An item still linked cannot be deleted.
- ``tiles.acquired_at``: the ``acquired_at`` of the item at position 0, NULL for sources without
  dates (XYZ, folders, MBTiles, GeoTIFF). It repeats what the links say because date filters
  will join windows to tiles (as search already does for zooms and areas) and should not need two
  more joins per window. It is the date of the first item laid, the least cloudy one over the
  tile: with ``combine=one-date`` every item of the tile shares that day; with ``least-cloudy``
  later items may fill gaps from other dates, which the links list.

The next step (a period as part of a tile's identity) keys tiles by period as well; the items
and the links stay as they are.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE stac_items (
            id serial PRIMARY KEY,
            source varchar(100) NOT NULL,
            collection text,
            item_id text NOT NULL,
            acquired_at timestamptz,
            cloud_cover real,
            footprint geometry(MultiPolygon, 4326),
            CONSTRAINT stac_items_source_item_key UNIQUE NULLS NOT DISTINCT (source, collection, item_id)
        );
        CREATE INDEX stac_items_footprint_gist ON stac_items USING gist (footprint);
        CREATE TABLE tile_items (
            tile_id bigint NOT NULL REFERENCES tiles (id) ON DELETE CASCADE,
            stac_item_id integer NOT NULL REFERENCES stac_items (id),
            position smallint NOT NULL,
            PRIMARY KEY (tile_id, stac_item_id)
        );
        CREATE INDEX tile_items_item_idx ON tile_items (stac_item_id);
        ALTER TABLE tiles ADD COLUMN acquired_at timestamptz;
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE tiles DROP COLUMN acquired_at; DROP TABLE tile_items; DROP TABLE stac_items")
