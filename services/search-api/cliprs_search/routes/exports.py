"""A detection run's results as files (GeoJSON, GeoPackage, CSV) and as Mapbox vector tiles."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Header, Path, Query, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from cliprs_http.schemas import RUN_NOT_DONE
from cliprs_search.access import READ
from cliprs_search.routes.deps import CtxDep, api_router
from cliprs_search.service import exports
from cliprs_search.service.exports import CsvRows, RunVersion

MVT_TYPE = "application/vnd.mapbox-vector-tile"
# Tiles change when the run's threshold does: clients may keep them but must revalidate (a
# matching If-None-Match answers 304 without making the tile).
TILE_CACHE = "no-cache"

router = api_router("runs", READ, RUN_NOT_DONE)


class _HoldsExportSlot:
    """A response that gives its export slot back when the answer ends, however it ends (sent
    whole, client gone, error)."""

    def __init__(self, *args, release: Callable[[], None], **kwargs):
        super().__init__(*args, **kwargs)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


class ExportStream(_HoldsExportSlot, StreamingResponse):
    """A streamed export (GeoJSON, CSV)."""


class ExportFile(_HoldsExportSlot, FileResponse):
    """A written export file (GeoPackage)."""


def _matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match's weak comparison: any listed tag (W/ or not) equal to ours, or ``*``."""
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _download_headers(run: RunVersion, filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"', "ETag": run.etag}


@router.get(
    "/runs/{run_id}/export.geojson",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/geo+json": {}}, "description": "A FeatureCollection"}},
)
async def export_geojson(run_id: int, ctx: CtxDep) -> Response:
    """The run's polygons as a GeoJSON FeatureCollection (streamed; 503 with Retry-After when the
    server sends SEARCH_MAX_CONCURRENT_EXPORTS exports already): each feature's properties
    are polygon_id, run_id, project_id, z, area_m2, max_score, mean_score and window_count; the
    collection's ``run`` member names the run and its threshold."""
    run = await exports.finished_run(ctx, run_id)
    return ExportStream(
        exports.geojson_chunks(ctx, run),
        media_type="application/geo+json",
        headers=_download_headers(run, run.filename("detections.geojson")),
        release=exports.take_slot(ctx),
    )


@router.get(
    "/runs/{run_id}/export.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV with a header row"}},
)
async def export_csv(
    run_id: int,
    ctx: CtxDep,
    rows: CsvRows = Query(
        "polygons",
        description="polygons: one row per polygon with its centroid's lon/lat, properties and "
        "bounding box; windows: one row per hit window with its centre, score and polygon_id",
    ),
) -> Response:
    """The run as CSV (streamed), one row per polygon or per hit window."""
    run = await exports.finished_run(ctx, run_id)
    name = "detections.csv" if rows == "polygons" else "windows.csv"
    return ExportStream(
        exports.csv_chunks(ctx, run, rows),
        media_type="text/csv; charset=utf-8",
        headers=_download_headers(run, run.filename(name)),
        release=exports.take_slot(ctx),
    )


@router.get(
    "/runs/{run_id}/export.gpkg",
    response_class=FileResponse,
    responses={200: {"content": {"application/geopackage+sqlite3": {}}, "description": "A GeoPackage"}},
)
async def export_gpkg(run_id: int, ctx: CtxDep) -> Response:
    """The run's polygons as a GeoPackage (layer ``detections``, EPSG:4326, the GeoJSON's
    properties). A GeoPackage is an SQLite file and cannot be streamed as it is written: it is
    written to a temporary file first (batch by batch), then sent and deleted."""
    run = await exports.finished_run(ctx, run_id)
    release = exports.take_slot(ctx)
    try:
        path = await exports.write_gpkg(ctx, run)
    except BaseException:
        release()
        raise
    return ExportFile(
        path,
        media_type="application/geopackage+sqlite3",
        headers=_download_headers(run, path.name),
        background=BackgroundTask(exports.remove_export, path),
        release=release,
    )


@router.get(
    "/runs/{run_id}/tiles/{z}/{x}/{y}.mvt",
    response_class=Response,
    responses={
        200: {"content": {MVT_TYPE: {}}, "description": "A Mapbox vector tile (empty when nothing is in it)"},
        304: {"description": "The tile is unchanged since the ETag given in If-None-Match"},
    },
)
async def run_tile(
    run_id: int,
    ctx: CtxDep,
    z: int = Path(..., ge=0),
    x: int = Path(..., ge=0),
    y: int = Path(..., ge=0),
    if_none_match: str | None = Header(None),
) -> Response:
    """The run's detections as a Mapbox vector tile: layer ``detections`` holds the polygons
    (feature id = polygon id; score = max score, mean_score, area_m2, window_count, z), layer
    ``detection_points`` the polygons too small to see at this zoom as points (centres of their
    bounding boxes), merged per
    ~1-pixel cell (score = best, polygons, window_count, area_m2). ETag: run, threshold and last
    change."""
    if if_none_match is not None:
        run = await exports.tile_run(ctx, run_id, z, x, y)
        if _matches(if_none_match, run.etag):
            return Response(status_code=304, headers={"ETag": run.etag, "Cache-Control": TILE_CACHE})
    # The version its ETag names and the tile's polygons, read in one snapshot.
    run, body = await exports.run_tile(ctx, run_id, z, x, y)
    return Response(body, media_type=MVT_TYPE, headers={"ETag": run.etag, "Cache-Control": TILE_CACHE})
