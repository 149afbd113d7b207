"""Image to text (zero-shot labels for an image or a window) and "where in this tile is X"."""

from __future__ import annotations

import time

import mercantile
import numpy as np

from cliprs.errors import InvalidInput, NotFound
from cliprs_search.context import Context
from cliprs_search.repository import zeroshot as repository
from cliprs_search.schemas.zeroshot import Classification, HeatGrid, Heatmap, HeatmapTile, LabelScore
from cliprs_search.service.shared import Upload, check_upload_size, hit_feature, validate_query, window_vector
from cliprs_search.zeroshot import DEFAULT_LABELS, heat_grid, prompts_for, rank_labels


async def classify(
    ctx: Context,
    upload: Upload | None,
    window_id: int | None,
    labels: list[str] | None,
    template: str | None,
) -> Classification:
    """Rank labels (or whole captions, with template ``{label}``) for an uploaded image or an
    indexed window, zero-shot."""
    started = time.perf_counter()
    s = ctx.settings
    if (upload is None) == (window_id is None):
        raise InvalidInput(
            "give either file (an image upload) or window_id (an indexed window), not both or neither"
        )
    template = template or s.classify_template
    names, prompts = prompts_for(
        labels or DEFAULT_LABELS, template, s.classify_max_labels, s.classify_max_label_chars
    )
    model = None
    if upload is not None:
        check_upload_size(upload.data, s.max_upload_bytes)
        image, info = await ctx.embedder.embed_image(upload.data, upload.filename, upload.content_type)
        model, query = info["model"], {"image": upload.filename}
    else:
        image, query = window_vector(ctx, window_id), {"window_id": window_id}
    texts, info = await ctx.embedder.embed_texts(prompts)
    ranked = rank_labels(image, texts, names, prompts, s.classify_logit_scale)
    return Classification(
        labels=[LabelScore(**r) for r in ranked],
        best=ranked[0]["label"],
        template=template,
        query=query,
        model=model or info["model"],
        took_ms=round((time.perf_counter() - started) * 1000, 1),
    )


async def heatmap(ctx: Context, source: str, z: int, x: int, y: int, q: str, grid: int | None) -> Heatmap:
    """Every window of tile ``source/z/x/y`` scored against the text, best first, and the mean
    score of the windows covering each cell of a ``grid`` x ``grid`` raster of the tile."""
    started = time.perf_counter()
    query = validate_query(q, ctx.settings.max_query_chars)
    async with ctx.engine.connect() as conn:
        tile = await repository.tile_at(conn, source, z, x, y)
        if tile is None:
            raise NotFound(f"tile {source}/{z}/{x}/{y} has not been ingested; create an area that covers it")
        rows = await repository.tile_windows(conn, tile["id"])
    index = ctx.index()
    found, vectors = index.vectors_of([r["id"] for r in rows])
    found = found.tolist()
    if not found:
        raise NotFound(f"tile {source}/{z}/{x}/{y} has no indexed windows yet; wait for its area's job")
    vector, info = await ctx.embedder.embed_text(query)
    scores = vectors @ vector
    by_id = {r["id"]: r for r in rows}
    order = np.argsort(-scores, kind="stable")
    tile_size = tile["tile_size"] or max(by_id[w]["px_x1"] for w in found)
    boxes = np.array([[by_id[w][c] for c in ("px_x0", "px_y0", "px_x1", "px_y1")] for w in found])
    cells = grid or ctx.settings.heatmap_grid
    tiler = ctx.settings.tiler_public_url
    features = [
        hit_feature(by_id[found[i]], float(scores[i]), rank, tiler, pixels=True)
        for rank, i in enumerate(order.tolist(), start=1)
    ]
    b = mercantile.bounds(x, y, z)
    return Heatmap(
        type="FeatureCollection",
        features=features,
        count=len(features),
        tile=HeatmapTile(
            source=source, z=z, x=x, y=y, size=tile_size, bounds=[b.west, b.south, b.east, b.north]
        ),
        grid=HeatGrid(cells=cells, values=heat_grid(boxes, scores, tile_size, cells)),
        best=features[0].properties.window_id,
        query=query,
        model=info["model"],
        index_version=index.version,
        took_ms=round((time.perf_counter() - started) * 1000, 1),
    )
