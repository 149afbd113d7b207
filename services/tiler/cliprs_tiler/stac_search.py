"""What a ``stac+…`` tile source asks for, and where its items come from.

A template such as
``stac+file:///data/catalog.json?collections=a,b&assets=visual&datetime=2020-01-01/2020-12-31&max_cloud=20``
is parsed into a `StacQuery`; a `StaticCatalog` (a catalog on disk, walked with pystac) or an
`ApiCatalog` (a STAC API, searched with pystac-client) answers it for a lon/lat box. ``${VAR}``
references (in the URL or a ``header.NAME=`` option) are expanded only when a request is made,
and the values never appear in an error or a log line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import pystac
from pystac_client import Client
from pystac_client.errors import ClientTypeError
from pystac_client.exceptions import APIError
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from cliprs.errors import InvalidInput, Unavailable
from cliprs_tiler.source_base import expand, redact, secret_values

log = logging.getLogger("cliprs.tiler")

STAC_SCHEMES = ("stac+file://", "stac+http://", "stac+https://")
COMBINES = ("least-cloudy", "one-date")
OPTIONS = (
    "collections",
    "assets",
    "datetime",
    "max_cloud",
    "combine",
    "rescale",
    "bbox",
    "tile_size",
    "format",
)
MAX_ITEMS = 500  # items one API search returns at most (narrow it with datetime and max_cloud)

Box = tuple[float, float, float, float]
Limits = tuple[float, float]


@dataclass(frozen=True)
class StacQuery:
    """A parsed ``stac+…`` template. ``location`` and ``headers`` are kept as written (with
    their ``${VAR}`` placeholders); `expand` gives the values a request uses."""

    location: str  # the catalog's path, or the API's URL
    is_api: bool
    assets: tuple[str, ...]
    collections: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    max_cloud: float | None = None
    combine: str = "least-cloudy"
    rescale: tuple[Limits, ...] | None = None
    bbox: Box | None = None
    options: dict[str, str] = field(default_factory=dict)  # tile_size, format
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self, bbox: Box | None = None) -> str:
        """The search in words, for errors (never a secret: placeholders stay as written)."""
        where = bbox or self.bbox
        parts = [
            f"collections {','.join(self.collections)}" if self.collections else "any collection",
            f"bbox {','.join(f'{v:.4f}' for v in where)}" if where else "anywhere",
            f"datetime {self.datetime_range() or 'any'}",
            f"eo:cloud_cover <= {self.max_cloud:g}" if self.max_cloud is not None else "any cloud cover",
        ]
        return f"{'STAC API' if self.is_api else 'catalog'} {self.location} ({'; '.join(parts)})"

    def datetime_range(self) -> str | None:
        """The STAC ``datetime`` parameter (``start/end``, ``..`` for an open end), or None."""
        if self.start is None and self.end is None:
            return None
        return "/".join(_iso(v) if v else ".." for v in (self.start, self.end))

    def secrets(self) -> list[str]:
        """The values of the variables the template refers to (to strip from every message)."""
        return secret_values(self.location + "".join(self.headers.values()))

    def redact(self, text: str) -> str:
        return redact(text, self.secrets())


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- parsing


def parse_template(name: str, template: str) -> StacQuery:
    """``stac+file:///catalog.json?…`` or ``stac+https://host/api?…`` -> its query; InvalidInput
    naming the option and how to write it."""
    scheme = next((s for s in STAC_SCHEMES if template.startswith(s)), None)
    if scheme is None:
        raise InvalidInput(f"tile source {name!r}: a STAC source starts with {' or '.join(STAC_SCHEMES)}")
    rest, _, query = template.removeprefix(scheme).partition("?")
    is_api = scheme != "stac+file://"
    location = f"{scheme.removeprefix('stac+')}{rest}" if is_api else rest
    if not rest:
        raise InvalidInput(f"tile source {name!r}: give the catalog's path or the API's URL after {scheme}")
    options = dict(parse_qsl(query, keep_blank_values=True))
    headers = {k.removeprefix("header."): v for k, v in options.items() if k.startswith("header.")}
    unknown = sorted(k for k in options if k not in OPTIONS and not k.startswith("header."))
    if unknown:
        raise InvalidInput(
            f"tile source {name!r}: unknown option(s) {', '.join(unknown)}; the options are "
            f"{', '.join(OPTIONS)} and header.NAME=value (a request header, e.g. "
            "header.Authorization=Bearer%20${STAC_TOKEN})"
        )
    start, end = parse_datetime_range(name, options.get("datetime", ""))
    return StacQuery(
        location=location,
        is_api=is_api,
        assets=_assets(name, options.get("assets", "")),
        collections=tuple(c for c in options.get("collections", "").split(",") if c),
        start=start,
        end=end,
        max_cloud=_max_cloud(name, options.get("max_cloud")),
        combine=_combine(name, options.get("combine", "least-cloudy")),
        rescale=_rescale(name, options.get("rescale")),
        bbox=_bbox(name, options.get("bbox")),
        options={k: options[k] for k in ("tile_size", "format") if k in options},
        headers=headers,
    )


def _assets(name: str, text: str) -> tuple[str, ...]:
    assets = tuple(a for a in text.split(",") if a)
    if len(assets) not in (1, 3):
        raise InvalidInput(
            f"tile source {name!r}: assets= takes one RGB asset (assets=visual) or three band "
            f"assets in R,G,B order (assets=red,green,blue), got {text!r}"
        )
    return assets


def _max_cloud(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise InvalidInput(f"tile source {name!r}: max_cloud is a percentage within 0..100, got {text!r}")
    return value


def _combine(name: str, text: str) -> str:
    if text not in COMBINES:
        raise InvalidInput(f"tile source {name!r}: combine is one of {', '.join(COMBINES)}, got {text!r}")
    return text


def _rescale(name: str, text: str | None) -> tuple[Limits, ...] | None:
    """``a,b`` (every band) or ``a,b,c,d,e,f`` (R, G, B) -> three (min, max) pairs."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 2:
        values *= 3
    pairs = tuple(zip(values[::2], values[1::2], strict=True)) if len(values) == 6 else ()
    if not pairs or any(hi <= lo for lo, hi in pairs):
        raise InvalidInput(
            f"tile source {name!r}: rescale is min,max for every band (rescale=0,3000) or six "
            f"numbers for R, G and B, each max above its min; got {text!r}"
        )
    return pairs


def _bbox(name: str, text: str | None) -> Box | None:
    if text is None:
        return None
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError:
        raise InvalidInput(f"tile source {name!r}: bbox is min_lon,min_lat,max_lon,max_lat") from None
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise InvalidInput(f"tile source {name!r}: bbox {text!r} is not min_lon,min_lat,max_lon,max_lat")
    return w, s, e, n


def parse_datetime_range(name: str, text: str) -> tuple[datetime | None, datetime | None]:
    """STAC's ``datetime``: ``start/end`` (``..`` or nothing for an open end) or one date or
    instant; a date alone covers its whole day (UTC). InvalidInput when unparsable or backwards."""
    if not text:
        return None, None
    parts = text.split("/")
    try:
        if len(parts) == 1 and parts[0].strip() not in ("", ".."):
            start, end = _when(parts[0], end=False), _when(parts[0], end=True)
        elif len(parts) == 2:
            start, end = _when(parts[0], end=False), _when(parts[1], end=True)
        else:
            raise ValueError(text)
    except ValueError:
        raise InvalidInput(
            f"tile source {name!r}: datetime {text!r} is not a date range; write "
            "datetime=2020-01-01/2020-12-31 (ISO dates or times, .. for an open end)"
        ) from None
    if start and end and start > end:
        raise InvalidInput(
            f"tile source {name!r}: datetime {text!r} runs backwards (its start is after its end); "
            "write the earlier date first"
        )
    return start, end


def _when(text: str, *, end: bool) -> datetime | None:
    """One side of a range: None for ``..`` or nothing; a date is its first (or last) instant."""
    text = text.strip()
    if text in ("", ".."):
        return None
    if len(text) == 10:
        day = date.fromisoformat(text)
        moment = datetime.combine(day, time.min, UTC)
        return moment + timedelta(days=1, microseconds=-1) if end else moment
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class Found:
    """An item a search found, with what ordering and coverage need."""

    item: pystac.Item
    footprint: BaseGeometry
    cloud: float | None
    when: datetime | None

    @property
    def id(self) -> str:
        return self.item.id

    def order(self) -> tuple[bool, float, float]:
        """Least cloudy first (unknown cover last), then the newest."""
        stamp = self.when.timestamp() if self.when else 0.0
        return (self.cloud is None, self.cloud or 0.0, -stamp)


def found(item: pystac.Item) -> Found:
    cloud = item.properties.get("eo:cloud_cover")
    when = item.datetime or item.common_metadata.start_datetime
    geometry = shape(item.geometry) if item.geometry else box(*item.bbox) if item.bbox else box(0, 0, 0, 0)
    return Found(item, geometry, float(cloud) if cloud is not None else None, when)


def matches(item: Found, query: StacQuery) -> bool:
    """Whether an item meets the query's collections, dates and cloud limit (not its bbox)."""
    if query.collections and item.item.collection_id not in query.collections:
        return False
    if query.max_cloud is not None and (item.cloud is None or item.cloud > query.max_cloud):
        return False
    start = item.when
    end = item.item.common_metadata.end_datetime or start
    if start is None:
        return query.start is None and query.end is None
    return (query.end is None or start <= query.end) and (query.start is None or end >= query.start)


class StaticCatalog:
    """A STAC catalog on disk: every item is read once, when the source opens, and the query's
    collections, dates and cloud limit are applied then."""

    def __init__(self, name: str, query: StacQuery):
        path = Path(query.location)
        if not path.is_file():
            raise Unavailable(
                f"tile source {name!r}: no STAC catalog at {path} (tried to read that file); build the "
                "demo one with `python -m cliprs_tools.stac_demo --out var/demo-stac`"
            )
        try:
            root = pystac.read_file(str(path))
            if not isinstance(root, pystac.Catalog):
                raise ValueError(f"it is a STAC {type(root).__name__}, not a catalog or collection")
            items = list(root.get_items(recursive=True))
        except (pystac.STACError, pystac.STACTypeError, ValueError, KeyError, TypeError, OSError) as exc:
            raise InvalidInput(
                f"tile source {name!r}: {path} is not a readable STAC catalog ({exc})"
            ) from None
        self.items = sorted((f for f in map(found, items) if matches(f, query)), key=Found.order)

    def search(self, bbox: Box) -> list[Found]:
        area = box(*bbox)
        return [f for f in self.items if f.footprint.intersects(area)]


class ApiCatalog:
    """A STAC API, searched with pystac-client (collections, bbox, datetime, and the cloud limit
    as ``query={"eo:cloud_cover": {"lte": …}}``); headers and URL expanded per request."""

    def __init__(self, name: str, query: StacQuery, timeout_s: float):
        self.name = name
        self.query = query
        try:
            self.client = Client.open(
                expand(query.location),
                headers={k: expand(v) for k, v in query.headers.items()},
                timeout=timeout_s,
            )
        except ClientTypeError as exc:
            # An answer that is STAC (or JSON) but no API's landing page: a collection's URL, the
            # API's OpenAPI document, an item list. It was reached, so it is bad input, not 503.
            raise InvalidInput(
                f"tile source {name!r}: {query.location} is not a STAC API's landing page "
                f"({query.redact(str(exc))[:300]}); give the API's root URL, the one whose landing "
                "page links to /search (for a catalog on disk write stac+file:///path/catalog.json)"
            ) from None
        except (APIError, OSError, ValueError, pystac.STACError) as exc:
            raise Unavailable(
                f"tile source {name!r}: the STAC API at {query.location} could not be reached or read "
                f"(tried GET {query.location}): {query.redact(str(exc))[:300]}"
            ) from None

    def search(self, bbox: Box | None, max_items: int = MAX_ITEMS) -> list[Found]:
        """The items over ``bbox``; APIError (or OSError) when the API fails."""
        q = self.query
        result = self.client.search(
            collections=list(q.collections) or None,
            bbox=list(bbox) if bbox else None,
            datetime=q.datetime_range(),
            query={"eo:cloud_cover": {"lte": q.max_cloud}} if q.max_cloud is not None else None,
            max_items=max_items,
        )
        items = [found(item) for item in result.items()]
        if max_items == MAX_ITEMS and len(items) >= max_items:  # not the one-item probe on opening
            log.warning(
                "tile source %r: the search %s stopped at %d items", self.name, q.describe(bbox), max_items
            )
        # The API did the filtering; checking again here also covers APIs that ignore `query`.
        return sorted((f for f in items if matches(f, q)), key=Found.order)
