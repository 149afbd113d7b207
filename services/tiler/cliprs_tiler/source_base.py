"""What every tile source shares: the fetched tile (and the STAC items it was drawn from), the
fetch errors, the formats with transparency, the tile options of rendered sources, and the log
filter that strips secrets, and the ``${VAR}`` references of a template (found, expanded only when
a request is made, stripped from messages)."""

from __future__ import annotations

import logging
import os
import string
from dataclasses import dataclass
from datetime import datetime

from cliprs.errors import InvalidInput
from cliprs_raster.render import tile_format

ALPHA_FORMATS = ("PNG", "WEBP")  # tile formats that carry transparency (the no-data mask)


def secret_values(text: str) -> list[str]:
    """The values of the environment variables ``text`` refers to (``${VAR}`` or ``$VAR``, as
    `expand` replaces them), the set ones only: what every message must be stripped of."""
    found = (m.group("braced") or m.group("named") for m in string.Template.pattern.finditer(text))
    return [os.environ[n] for n in dict.fromkeys(found) if n and os.environ.get(n)]


def expand(text: str) -> str:
    """``${VAR}`` replaced by the environment's value (only when a request is made)."""
    return string.Template(text).safe_substitute(os.environ)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class _RedactSecrets(logging.Filter):
    """Strips tile-source secrets from the HTTP clients' own log records (httpx logs every URL,
    pystac-client every request's headers)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = redacted = record.getMessage()
            for secret in self.secrets:
                redacted = redacted.replace(secret, "***")
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


_REDACT = _RedactSecrets()
_HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")
for _name in (*_HTTP_LOGGERS, "pystac_client.stac_api_io", "urllib3.connectionpool"):
    logging.getLogger(_name).addFilter(_REDACT)


class TileFetchError(Exception):
    """A tile could not be had; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class TileNotFound(TileFetchError):
    """The source has no tile there (404, or no file)."""


@dataclass(frozen=True)
class ItemRecord:
    """A STAC item a tile was drawn from, as PostGIS records it (``stac_items``)."""

    id: str
    collection: str | None
    acquired_at: datetime | None  # the item's datetime, or its start_datetime
    cloud_cover: float | None  # eo:cloud_cover, percent
    footprint_wkt: str | None  # a lon/lat MultiPolygon


@dataclass
class FetchedTile:
    data: bytes
    ext: str
    size: int  # side in pixels
    # A STAC source's items the tile was drawn from, in mosaic order (empty for other sources).
    drawn_from: tuple[ItemRecord, ...] = ()
    # The tile's mask sidecar (`cliprs.cloud_masks`; a STAC source with mask=), else None.
    mask: bytes | None = None

    @property
    def items(self) -> tuple[str, ...]:
        """The ids of the items the tile was drawn from, in mosaic order."""
        return tuple(r.id for r in self.drawn_from)


def tile_options(name: str, options: dict[str, str]) -> tuple[int, str]:
    """A rendered source's ``tile_size`` (64..1024, default 256) and ``format`` (default png)."""
    try:
        tile_size = int(options.get("tile_size", 256))
        fmt = options.get("format", "png")
        tile_format(fmt)
    except ValueError as exc:
        raise InvalidInput(f"tile source {name!r}: {exc}; options are ?tile_size=256&format=png") from None
    if not 64 <= tile_size <= 1024:
        raise InvalidInput(f"tile source {name!r}: tile_size must be within 64..1024, got {tile_size}")
    return tile_size, fmt
