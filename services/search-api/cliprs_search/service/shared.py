"""What several parts of the API share: checking a text query, an indexed window's vector, an
uploaded file, and a window row as a GeoJSON feature."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy.ext.asyncio import AsyncConnection

from cliprs.errors import InvalidInput, NotFound, TooLarge, Unavailable
from cliprs.queue import enqueue
from cliprs_search.context import Context
from cliprs_search.schemas.search import HitFeature, HitProperties, Place, TileRef

_MEANINGFUL = re.compile(r"\w", re.UNICODE)
_WORD = re.compile(r"\w+", re.UNICODE)
# Words that carry no visual meaning on their own: a query made only of them is refused.
FILLER_WORDS = frozenset(
    "a an the of and or in on at to for with without near by from into onto over under above below "
    "this that these those some any it its is are be there here what where which who show find me "
    "please image photo picture".split()
)


T = TypeVar("T")


def found(row: T | None, missing: str) -> T:
    """``row``, or `NotFound` with ``missing`` (what is not there, and where to look) when it is None."""
    if row is None:
        raise NotFound(missing)
    return row


async def queue_or_undo(
    ctx: Context, task: str, args: list, undo: Callable[[AsyncConnection], Awaitable[Any]]
) -> Any:
    """Queue ``task``; when the queue is down, ``undo`` (in a transaction of its own) what was
    written for it and re-raise, so the 503 means "nothing happened". Returns Celery's result."""
    try:
        return await asyncio.to_thread(enqueue, ctx.celery, task, args)
    except Unavailable:
        async with ctx.engine.begin() as conn:
            await undo(conn)
        raise


@dataclass(frozen=True)
class Upload:
    """An uploaded image, read (up to the limit) by the route."""

    data: bytes
    filename: str
    content_type: str


# Control characters in a text query: tab, line feed, vertical tab, form feed and carriage return
# are whitespace (each becomes a space); any other (Unicode category Cc: U+0000-U+001F and
# U+007F-U+009F, NUL and ESC included) is refused with 400, naming it and where it is.
_WHITESPACE_CONTROLS = str.maketrans({c: " " for c in "\t\n\v\f\r"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def validate_query(q: str, max_chars: int) -> str:
    """The stripped query, or `InvalidInput` when there is nothing the model could look for
    (or it holds a control character other than whitespace)."""
    q = q.translate(_WHITESPACE_CONTROLS)
    bad = _CONTROL.search(q)
    if bad:
        raise InvalidInput(
            f"the query holds the control character U+{ord(bad.group()):04X} at position {bad.start() + 1}; "
            "send plain text (tabs and line breaks are read as spaces)"
        )
    q = q.strip()
    if not q:
        raise InvalidInput("the query is empty; describe what to look for, e.g. 'boats near a pier'")
    if len(q) > max_chars:
        raise TooLarge(f"the query has {len(q)} characters; the limit is {max_chars}")
    if not _MEANINGFUL.search(q):
        raise InvalidInput("the query has no letters or digits; describe what to look for in words")
    words = [w.lower() for w in _WORD.findall(q)]
    if all(w in FILLER_WORDS for w in words):
        raise InvalidInput(
            f"the query has only filler words ({' '.join(words)!r}); say what to look for, e.g. 'boats near a pier'"
        )
    return q


def check_upload_size(data: bytes, max_bytes: int) -> bytes:
    """``data`` (read up to ``max_bytes + 1``), or `TooLarge` when it is over the limit."""
    if len(data) > max_bytes:
        raise TooLarge(f"the upload is over the limit of {max_bytes} bytes")
    return data


def parse_geojson_text(value: str | None) -> dict | None:
    """A GeoJSON polygon sent as text (a form field), parsed; None when not given."""
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        raise InvalidInput('polygon must be GeoJSON text, e.g. {"type": "Polygon", ...}') from None
    except RecursionError:
        # Thousands of nested brackets: Python's parser gives up before any GeoJSON check could.
        raise InvalidInput(
            "polygon is nested too deeply to be GeoJSON; a Polygon is "
            '{"type": "Polygon", "coordinates": [[[lon, lat], ...]]}'
        ) from None


def window_vector(ctx: Context, window_id: int) -> np.ndarray:
    """The indexed vector of a window, or `NotFound`."""
    vector = ctx.index().vector_of(window_id)
    if vector is None:
        raise NotFound(f"window {window_id} is not in the index")
    return vector


def hit_feature(
    row: dict,
    score: float,
    rank: int,
    tiler_url: str,
    merged: list[int] | None = None,
    place: Place | None = None,
    pixels: bool = False,
    identical: list[int] | None = None,
    max_identical_ids: int = 100,
) -> HitFeature:
    """One window row as a GeoJSON feature (``merged``: windows merged into it; ``identical``:
    windows with identical pixels collapsed into it, the first ``max_identical_ids`` listed;
    ``pixels``: give the window's pixel box in its tile)."""
    props = HitProperties(
        window_id=row["id"],
        score=round(float(score), 6),
        rank=rank,
        z=row["z"],
        scale=row["scale"],
        tile=TileRef(source=row["source"], z=row["tz"], x=row["tx"], y=row["ty"]),
        center=[round(row["lon"], 7), round(row["lat"], 7)],
        image_url=f"{tiler_url.rstrip('/')}/windows/{row['id']}.png",
        cloud_score=_fraction(row.get("cloud_score")),
        valid_fraction=_fraction(row.get("valid_fraction")),
    )
    if merged is not None:
        props.merged, props.merged_ids = len(merged), merged
    if identical is not None:
        props.identical, props.identical_ids = len(identical), identical[:max_identical_ids]
    if place is not None:
        props.place = place
        props.address = place.label
    if pixels:
        props.pixels = [row["px_x0"], row["px_y0"], row["px_x1"], row["px_y1"]]
    return HitFeature(type="Feature", id=row["id"], geometry=json.loads(row["footprint"]), properties=props)


def _fraction(value: float | None) -> float | None:
    """A real column's share, rounded to what float32 holds (0.9 stays 0.9, not 0.8999999762)."""
    return None if value is None else round(float(value), 6)
