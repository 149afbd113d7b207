"""Image to text (zero-shot labels for an image or a window) and "where in this tile is X"."""

from __future__ import annotations

import time

import mercantile
import numpy as np
from fastapi import APIRouter, Depends, File, Form, Path, Query, UploadFile
from sqlalchemy import text

from cliprs.errors import InvalidInput, NotFound, TooLarge
from cliprs_search.analysis import DEFAULT_LABELS, heat_grid, prompts_for, rank_labels
from cliprs_search.context import Context, get_context
from cliprs_search.queries import WINDOW_COLUMNS, feature
from cliprs_search.routes.search import validate_query, window_vector

router = APIRouter(tags=["analysis"])


@router.post("/v1/classify")
async def classify(
    file: UploadFile | None = File(None, description="A PNG, JPEG or WebP image (or give window_id)"),
    window_id: int | None = Form(None, description="An indexed window to label (instead of a file)"),
    labels: list[str] | None = Form(
        None,
        description="Labels or captions to rank (repeat the field); default: the 30 RSICD scene categories",
    ),
    template: str | None = Form(
        None, description="Prompt around each label, with {label}; default 'An aerial photograph of {label}'"
    ),
    ctx: Context = Depends(get_context),
) -> dict:
    """Image to text: rank labels (or whole captions, with template ``{label}``) for an image,
    zero-shot: each label's cosine to the image and CLIP's softmax probability over the labels."""
    started = time.perf_counter()
    s = ctx.settings
    if (file is None) == (window_id is None):
        raise InvalidInput(
            "give either file (an image upload) or window_id (an indexed window), not both or neither"
        )
    names, prompts = prompts_for(
        labels or DEFAULT_LABELS,
        template or s.classify_template,
        s.classify_max_labels,
        s.classify_max_label_chars,
    )
    model = None
    if file is not None:
        data = await file.read(s.max_upload_bytes + 1)
        if len(data) > s.max_upload_bytes:
            raise TooLarge(f"the upload is over the limit of {s.max_upload_bytes} bytes")
        image, info = await ctx.embedder.embed_image(
            data, file.filename or "upload", file.content_type or "application/octet-stream"
        )
        model, query = info["model"], {"image": file.filename}
    else:
        image, query = window_vector(ctx, window_id), {"window_id": window_id}
    texts, info = await ctx.embedder.embed_texts(prompts)
    ranked = rank_labels(image, texts, names, prompts, s.classify_logit_scale)
    return {
        "labels": ranked,
        "best": ranked[0]["label"],
        "template": template or s.classify_template,
        "query": query,
        "model": model or info["model"],
        "took_ms": round((time.perf_counter() - started) * 1000, 1),
    }


@router.get("/v1/tiles/{source}/{z}/{x}/{y}/heatmap")
async def heatmap(
    source: str,
    z: int = Path(..., ge=0, le=30),
    x: int = Path(..., ge=0),
    y: int = Path(..., ge=0),
    q: str = Query(..., description="What to look for in the tile, e.g. 'a pier'"),
    grid: int | None = Query(None, ge=1, le=64, description="Cells per tile side (default 16)"),
    ctx: Context = Depends(get_context),
) -> dict:
    """Where in this tile is X: every window of the tile scored against the text (GeoJSON
    features, best first), plus ``grid``: the mean score of the windows covering each cell."""
    started = time.perf_counter()
    query = validate_query(q, ctx.settings.max_query_chars)
    async with ctx.engine.connect() as conn:
        tile = (
            await conn.execute(
                text("SELECT id, tile_size FROM tiles WHERE source = :s AND z = :z AND x = :x AND y = :y"),
                {"s": source, "z": z, "x": x, "y": y},
            )
        ).one_or_none()
        if tile is None:
            raise NotFound(f"tile {source}/{z}/{x}/{y} has not been ingested; create an area that covers it")
        rows = [
            dict(r._mapping)
            for r in await conn.execute(
                text(
                    f"SELECT {WINDOW_COLUMNS} FROM windows w JOIN tiles t ON t.id = w.tile_id "
                    "WHERE w.tile_id = :t ORDER BY w.id"
                ),
                {"t": tile.id},
            )
        ]
    index = ctx.index()
    found, vectors = index.vectors_of([r["id"] for r in rows])
    if not found:
        raise NotFound(f"tile {source}/{z}/{x}/{y} has no indexed windows yet; wait for its area's job")
    vector, info = await ctx.embedder.embed_text(query)
    scores = vectors @ vector
    by_id = {r["id"]: r for r in rows}
    order = np.argsort(-scores, kind="stable")
    tile_size = tile.tile_size or max(by_id[w]["px_x1"] for w in found)
    boxes = np.array([[by_id[w][c] for c in ("px_x0", "px_y0", "px_x1", "px_y1")] for w in found])
    cells = grid or ctx.settings.heatmap_grid
    features = []
    for rank, i in enumerate(order.tolist(), start=1):
        row = by_id[found[i]]
        f = feature(row, float(scores[i]), rank, ctx.settings.tiler_public_url)
        f["properties"]["pixels"] = [row["px_x0"], row["px_y0"], row["px_x1"], row["px_y1"]]
        features.append(f)
    b = mercantile.bounds(x, y, z)
    return {
        "type": "FeatureCollection",
        "features": features,
        "count": len(features),
        "tile": {
            "source": source,
            "z": z,
            "x": x,
            "y": y,
            "size": tile_size,
            "bounds": [b.west, b.south, b.east, b.north],
        },
        "grid": {"cells": cells, "values": heat_grid(boxes, scores, tile_size, cells)},
        "best": features[0]["properties"]["window_id"],
        "query": query,
        "model": info["model"],
        "index_version": index.version,
        "took_ms": round((time.perf_counter() - started) * 1000, 1),
    }
