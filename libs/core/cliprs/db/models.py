"""SQLAlchemy models of the platform's tables. Schema changes go through migrations."""

from __future__ import annotations

from datetime import datetime

from geoalchemy2 import Geometry
from sqlalchemy import (
    REAL,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Area(Base):
    __tablename__ = "areas"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    bbox = mapped_column(Geometry("POLYGON", srid=4326, spatial_index=False), nullable=False)
    zooms: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger))
    source: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Tile(Base):
    __tablename__ = "tiles"
    __table_args__ = (
        UniqueConstraint("source", "z", "x", "y", name="tiles_source_zxy_key"),
        # Keeps the embedder's claim of fetched tiles cheap however many are embedded already.
        Index("tiles_fetched_idx", "id", postgresql_where=text("status = 'fetched'")),
        # Renewing, releasing and finding abandoned leases: only the tiles leased right now.
        Index("tiles_leased_idx", "leased_by", postgresql_where=text("leased_by IS NOT NULL")),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # The area that first planned this tile; later areas share it through area_tiles.
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(100))
    z: Mapped[int] = mapped_column(SmallInteger)
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    polygon = mapped_column(Geometry("POLYGON", srid=4326, spatial_index=False), nullable=False)
    status: Mapped[str] = mapped_column(String(20), default="planned")
    error: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    tile_size: Mapped[int | None] = mapped_column(SmallInteger)
    fetched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    embedded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # An embedder worker's lease on a fetched tile: another worker takes it over once it expires.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    leased_by: Mapped[str | None] = mapped_column(Text)
    # Windows not embedded because they were mostly no-data (set when the tile is embedded).
    windows_skipped: Mapped[int | None] = mapped_column(Integer)
    # The date of the STAC item laid first (NULL for sources without dates; migration 0009).
    acquired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AreaTile(Base):
    __tablename__ = "area_tiles"
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"), primary_key=True)
    tile_id: Mapped[int] = mapped_column(ForeignKey("tiles.id", ondelete="CASCADE"), primary_key=True)


class StacItem(Base):
    """A STAC item some tile was drawn from, once per source (see migration 0009)."""

    __tablename__ = "stac_items"
    __table_args__ = (
        UniqueConstraint(
            "source",
            "collection",
            "item_id",
            name="stac_items_source_item_key",
            postgresql_nulls_not_distinct=True,  # items without a collection are one key too
        ),
        Index("stac_items_footprint_gist", "footprint", postgresql_using="gist"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(100))
    collection: Mapped[str | None] = mapped_column(Text)
    item_id: Mapped[str] = mapped_column(Text)
    # The item's STAC datetime, or its start_datetime when it has a range.
    acquired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cloud_cover: Mapped[float | None] = mapped_column(REAL)  # eo:cloud_cover, percent
    footprint = mapped_column(Geometry("MULTIPOLYGON", srid=4326, spatial_index=False))


class TileItem(Base):
    """A tile drawn from a STAC item; ``position`` 0 was laid first (mosaic order)."""

    __tablename__ = "tile_items"
    __table_args__ = (Index("tile_items_item_idx", "stac_item_id"),)  # which tiles use an item
    tile_id: Mapped[int] = mapped_column(ForeignKey("tiles.id", ondelete="CASCADE"), primary_key=True)
    stac_item_id: Mapped[int] = mapped_column(ForeignKey("stac_items.id"), primary_key=True)
    position: Mapped[int] = mapped_column(SmallInteger)


class Window(Base):
    __tablename__ = "windows"
    # id = tile_id * 4096 + index inside the tile; it is also the vector's FAISS id.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    tile_id: Mapped[int] = mapped_column(ForeignKey("tiles.id", ondelete="CASCADE"))
    z: Mapped[int] = mapped_column(SmallInteger)
    px_x0: Mapped[int] = mapped_column(SmallInteger)
    px_y0: Mapped[int] = mapped_column(SmallInteger)
    px_x1: Mapped[int] = mapped_column(SmallInteger)
    px_y1: Mapped[int] = mapped_column(SmallInteger)
    scale: Mapped[float] = mapped_column(Float)
    footprint = mapped_column(Geometry("POLYGON", srid=4326, spatial_index=False), nullable=False)
    center = mapped_column(Geometry("POINT", srid=4326, spatial_index=False), nullable=False)
    # Share of the window's pixels holding imagery, and of those the cloud detector flags
    # (NULL: embedded before migration 0005, unknown).
    valid_fraction: Mapped[float | None] = mapped_column(REAL)
    cloud_score: Mapped[float | None] = mapped_column(REAL)
    # Hash of the model input: equal fingerprints, identical vectors (search collapses them).
    fingerprint: Mapped[int | None] = mapped_column(BigInteger)


class IngestJob(Base):
    __tablename__ = "ingest_jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"))
    # queued -> fetching -> embedding -> indexing -> done | failed
    state: Mapped[str] = mapped_column(String(20), default="queued")
    tiles_planned: Mapped[int] = mapped_column(Integer, default=0)
    tiles_fetched: Mapped[int] = mapped_column(Integer, default=0)
    tiles_cached: Mapped[int] = mapped_column(Integer, default=0)
    tiles_failed: Mapped[int] = mapped_column(Integer, default=0)
    tiles_embedded: Mapped[int] = mapped_column(Integer, default=0)
    windows_embedded: Mapped[int] = mapped_column(Integer, default=0)
    windows_indexed: Mapped[int] = mapped_column(Integer, default=0)
    windows_skipped_nodata: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # Seconds per pipeline stage (decode, resize, encode, write, ...), summed over work units.
    stage_seconds: Mapped[dict[str, float]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # How the job's tiles are cut into windows (set by the first embedder worker; see 0004).
    window_config: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IndexVersion(Base):
    __tablename__ = "index_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    manifest_path: Mapped[str] = mapped_column(Text)
    shard_files: Mapped[list[str]] = mapped_column(JSONB)
    vector_count: Mapped[int] = mapped_column(BigInteger)
    model_id: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # When the indexer removed the version's manifest (no searcher held it any more).
    removed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Project(Base):
    """A named investigation over one or more areas (see migration 0006)."""

    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    query: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ProjectArea(Base):
    __tablename__ = "project_areas"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"), primary_key=True)


class Label(Base):
    """A window marked positive or negative in a project."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("project_id", "window_id"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    window_id: Mapped[int] = mapped_column(ForeignKey("windows.id", ondelete="CASCADE"))
    positive: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str | None] = mapped_column(Text)


class DetectRun(Base):
    """A classifier trained on a project's labels and run over every window of its areas."""

    __tablename__ = "detect_runs"
    __table_args__ = (
        # The reconciler's look at unfinished runs, however many are done.
        Index(
            "detect_runs_unfinished_idx",
            "heartbeat_at",
            postgresql_where=text("state IN ('queued', 'running')"),
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    # queued -> running -> done | failed
    state: Mapped[str] = mapped_column(String(20), server_default=text("'queued'"))
    threshold: Mapped[float] = mapped_column(REAL, server_default=text("0.5"))
    model: Mapped[dict | None] = mapped_column(JSONB)
    histogram: Mapped[dict | None] = mapped_column(JSONB)
    estimate: Mapped[dict | None] = mapped_column(JSONB)
    windows_scored: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    hits: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    stage_seconds: Mapped[dict[str, float]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The last sign of life (created, queued again, started, the indexer's heartbeat) and how
    # many times the reconciler handed the run out again (migration 0008).
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    handouts: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class RunHit(Base):
    __tablename__ = "run_hits"
    run_id: Mapped[int] = mapped_column(ForeignKey("detect_runs.id", ondelete="CASCADE"), primary_key=True)
    window_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    score: Mapped[float] = mapped_column(REAL)


class RunPolygon(Base):
    __tablename__ = "run_polygons"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("detect_runs.id", ondelete="CASCADE"), index=True)
    z: Mapped[int] = mapped_column(SmallInteger)
    geom = mapped_column(Geometry("MULTIPOLYGON", srid=4326), nullable=False)
    area_m2: Mapped[float] = mapped_column(Float)
    max_score: Mapped[float] = mapped_column(REAL)
    mean_score: Mapped[float] = mapped_column(REAL)
    window_count: Mapped[int] = mapped_column(Integer)
    window_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))


class ApiKey(Base):
    """An API key, stored only as the SHA-256 of its text (see migration 0007)."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(Text)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    daily_tile_budget: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """One write: when, by which key, the action, its target and what changed."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    key_prefix: Mapped[str | None] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    target: Mapped[str | None] = mapped_column(Text)
    method: Mapped[str | None] = mapped_column(String(10))
    path: Mapped[str | None] = mapped_column(Text)
    status: Mapped[int | None] = mapped_column(SmallInteger)
    changes: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
