"""Tile sources behind one interface: give (z, x, y), get the image bytes or a clear failure.

Templates are stored and logged as written (``${MAPBOX_TOKEN}`` stays a placeholder); secrets are
expanded only when a request is made, and stripped from every error message.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import threading
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl

import httpx
import rasterio.errors
from aiolimiter import AsyncLimiter
from PIL import Image
from rio_tiler.errors import RioTilerError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from cliprs.errors import InvalidInput
from cliprs.settings import CoreSettings
from cliprs.sources import is_remote
from cliprs_raster.render import Limits, RasterScene, tile_format
from cliprs_tiler.settings import TilerSettings
from cliprs_tiler.source_base import (
    _REDACT,
    ALPHA_FORMATS,
    FetchedTile,
    TileFetchError,
    TileNotFound,
    expand,
    redact,
    secret_values,
    tile_options,
)
from cliprs_tiler.stac import StacSource
from cliprs_tiler.stac_search import STAC_SCHEMES

_PIL_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


def check_image(data: bytes) -> FetchedTile:
    """Decode fully (catches truncated or corrupt bodies) and check the tile is square."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
            im.load()
            width, height = im.size
    except Exception as exc:
        raise TileFetchError(f"corrupt or truncated image ({type(exc).__name__})", retryable=True) from None
    if fmt not in _PIL_EXT:
        raise TileFetchError(f"unsupported image format {fmt or 'unknown'}")
    if width != height:
        raise TileFetchError(f"tile is {width}x{height}, expected a square")
    return FetchedTile(data, _PIL_EXT[fmt], width)


class TileSource(Protocol):
    name: str

    async def fetch(self, z: int, x: int, y: int) -> FetchedTile: ...

    async def aclose(self) -> None: ...


class FolderSource:
    """A local folder laid out as ``{z}/{x}/{y}.{ext}``."""

    def __init__(self, name: str, template: str):
        self.name = name
        self.template = template.removeprefix("file://")

    async def fetch(self, z: int, x: int, y: int) -> FetchedTile:
        path = Path(self.template.format(z=z, x=x, y=y))
        if not path.exists():
            raise TileNotFound(f"no tile file {z}/{x}/{y} in source {self.name!r}")
        return await asyncio.to_thread(lambda: check_image(path.read_bytes()))

    async def aclose(self) -> None:
        return None


class XyzSource:
    """An HTTP XYZ template (``{z}``, ``{x}``, ``{y}``, optional ``{s}`` subdomains), fetched with
    a token-bucket rate limit, a timeout, and retries with exponential backoff and jitter on
    timeouts, connection errors, 429 (honouring Retry-After) and 5xx; never on other 4xx."""

    def __init__(self, name: str, template: str, settings: TilerSettings, subdomains: str = "abc"):
        self.name = name
        self.template = template
        self.settings = settings
        self.subdomains = subdomains
        self.secrets = secret_values(template)
        _REDACT.secrets.update(self.secrets)
        self.limiter = AsyncLimiter(max(settings.rate_limit, 0.001), time_period=1.0)
        self.client = httpx.AsyncClient(
            timeout=settings.timeout_s,
            headers={"User-Agent": settings.user_agent},
            follow_redirects=True,
            limits=httpx.Limits(max_connections=settings.concurrency * 2),
        )
        self.requests = 0  # attempts sent, for progress and tests

    def url(self, z: int, x: int, y: int) -> str:
        expanded = expand(self.template)
        sub = self.subdomains[(x + y) % len(self.subdomains)] if self.subdomains else ""
        return expanded.replace("{s}", sub).format(z=z, x=x, y=y)

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    async def _attempt(self, z: int, x: int, y: int) -> FetchedTile:
        async with self.limiter:
            self.requests += 1
            try:
                resp = await self.client.get(self.url(z, x, y))
            except httpx.TimeoutException:
                raise TileFetchError("timed out", retryable=True) from None
            except httpx.TransportError as exc:
                raise TileFetchError(f"connection error ({type(exc).__name__})", retryable=True) from None
        if resp.status_code == 404:
            raise TileNotFound(f"source {self.name!r} has no tile {z}/{x}/{y} (HTTP 404)")
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TileFetchError(
                f"HTTP {resp.status_code}", retryable=True, retry_after=_retry_after(resp.headers)
            )
        if resp.status_code >= 400:
            raise TileFetchError(f"HTTP {resp.status_code}")
        # Decoding takes milliseconds: off the event loop, so other tiles keep downloading.
        return await asyncio.to_thread(check_image, resp.content)

    async def fetch(self, z: int, x: int, y: int) -> FetchedTile:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.retries + 1),
            wait=WaitRetryAfter(self.settings.backoff_base_s, self.settings.backoff_max_s),
            retry=retry_if_exception(lambda e: isinstance(e, TileFetchError) and e.retryable),
            reraise=True,
        )
        try:
            return await retrying(self._attempt, z, x, y)
        except TileFetchError as exc:
            raise type(exc)(self.redact(str(exc)), exc.retryable) from None

    async def aclose(self) -> None:
        await self.client.aclose()


class WaitRetryAfter(wait_base):
    """Wait as the server asked (Retry-After, capped at ``max_s``), else back off exponentially
    with "equal jitter": a uniform wait between half and all of ``base_s * 2**(attempt - 1)``
    (itself capped at ``max_s``), so clients that failed together do not retry together."""

    def __init__(self, base_s: float, max_s: float):
        self.max_s = max_s
        half_base, half_max = base_s / 2, max_s / 2
        self.backoff = wait_exponential(multiplier=half_base, max=half_max) + wait_random_exponential(
            multiplier=half_base, max=half_max
        )

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(exc, TileFetchError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_s)
        return self.backoff(retry_state)


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            from datetime import datetime

            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


class MBTilesSource:
    """An MBTiles file (SQLite; rows numbered bottom-up, TMS style, so y is flipped)."""

    def __init__(self, name: str, path: Path):
        self.name = name
        if not path.is_file():
            raise InvalidInput(f"tile source {name!r}: no MBTiles file at {path}")
        # Read-only, shared by the worker threads; the lock serialises use of the one connection.
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self.lock = threading.Lock()
        try:
            meta = dict(self.db.execute("SELECT name, value FROM metadata").fetchall())
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise InvalidInput(f"tile source {name!r}: {path} is not an MBTiles file ({exc})") from None
        if meta.get("format") == "pbf":
            self.db.close()
            raise InvalidInput(
                f"tile source {name!r}: {path} holds vector tiles (pbf); give a raster MBTiles"
            )

    def _read(self, z: int, x: int, y: int) -> bytes | None:
        with self.lock:
            row = self.db.execute(
                "SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ? AND tile_row = ?",
                (z, x, (1 << z) - 1 - y),
            ).fetchone()
        return None if row is None else bytes(row[0])

    async def fetch(self, z: int, x: int, y: int) -> FetchedTile:
        data = await asyncio.to_thread(self._read, z, x, y)
        if data is None:
            raise TileNotFound(f"source {self.name!r} has no tile {z}/{x}/{y}")
        return await asyncio.to_thread(check_image, data)

    async def aclose(self) -> None:
        self.db.close()


class RasterSource:
    """A georeferenced raster (GeoTIFF, COG, JP2; any CRS) cut into Web-Mercator tiles on demand.

    One file with R, G, B as its first bands, or three single-band files (red, green, blue).
    8-bit imagery is taken as it is; anything else is stretched to its scene-wide 2–98
    percentiles, computed once, so every tile has the same brightness (no seams). No-data
    (the raster's nodata value, mask or alpha) is transparent in PNG and WebP tiles; JPEG has no
    alpha, so there it is black (configure ``CLIPRS_TILE_NODATA`` for such a source).
    """

    def __init__(self, name: str, paths: list[Path], tile_size: int = 256, fmt: str = "png"):
        self.name = name
        self.paths = paths
        self.tile_size = tile_size
        self.pil_format, self.ext = tile_format(fmt)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise InvalidInput(f"tile source {name!r}: no raster file at {', '.join(missing)}")
        self._local = threading.local()  # GDAL handles must not be shared between threads
        self._scenes: list[RasterScene] = []
        self._lock = threading.Lock()
        self._stretch: list[Limits] | None = None
        try:
            scene = self._scene()
        except (rasterio.errors.RasterioError, RioTilerError, ValueError) as exc:
            raise InvalidInput(f"tile source {name!r}: {exc}") from None
        self.nodata = scene.nodata

    def _scene(self) -> RasterScene:
        """This thread's open scene (opened on first use)."""
        scene = getattr(self._local, "scene", None)
        if scene is None:
            scene = RasterScene(self.paths)
            self._local.scene = scene
            with self._lock:
                self._scenes.append(scene)
        return scene

    def _limits(self, scene: RasterScene) -> list[Limits]:
        with self._lock:
            if self._stretch is None:
                self._stretch = scene.default_stretch()
            return self._stretch

    def render(self, z: int, x: int, y: int) -> bytes | None:
        """The encoded tile, or None where the raster has no data."""
        scene = self._scene()
        image = scene.render(
            z, x, y, self.tile_size, stretch=self._limits(scene), alpha=self.pil_format in ALPHA_FORMATS
        )
        if image is None:
            return None
        buf = io.BytesIO()
        image.save(buf, format=self.pil_format)
        return buf.getvalue()

    async def fetch(self, z: int, x: int, y: int) -> FetchedTile:
        data = await asyncio.to_thread(self.render, z, x, y)
        if data is None:
            raise TileNotFound(f"source {self.name!r} has no data in tile {z}/{x}/{y}")
        return FetchedTile(data, self.ext, self.tile_size)

    def close(self) -> None:
        """Close every thread's scene; a later render opens a fresh one."""
        with self._lock:
            scenes, self._scenes = self._scenes, []
            self._local = threading.local()  # drops the closed scenes of every thread
        for scene in scenes:
            scene.close()

    async def aclose(self) -> None:
        self.close()


SCHEMES = (
    "http(s)://, file://, mbtiles:// or geotiff://, or a STAC catalog (stac+file:///catalog.json) "
    "or API (stac+https://host/api)"
)


def _location(template: str, scheme: str) -> tuple[list[Path], dict[str, str]]:
    """``scheme:///abs/a.tif,/abs/b.tif?opt=v`` -> ([paths], {opt: v}); ``scheme://rel`` is relative."""
    rest = template.removeprefix(scheme)
    rest, _, query = rest.partition("?")
    return [Path(p) for p in rest.split(",") if p], dict(parse_qsl(query))


def open_source(name: str, core: CoreSettings, settings: TilerSettings) -> TileSource:
    """The configured source called ``name``, chosen by the scheme of its template."""
    template = core.tile_sources.get(name)
    if template is None:
        known = ", ".join(sorted(core.tile_sources)) or "none"
        raise InvalidInput(f"unknown tile source {name!r}; configured sources: {known}")
    if template.startswith("file://"):
        return FolderSource(name, template)
    if template.startswith(STAC_SCHEMES):
        return StacSource(name, template, settings)
    if is_remote(template):
        return XyzSource(name, template, settings)
    if template.startswith("mbtiles://"):
        paths, _ = _location(template, "mbtiles://")
        if len(paths) != 1:
            raise InvalidInput(f"tile source {name!r}: give one file, mbtiles:///path/to/file.mbtiles")
        return MBTilesSource(name, paths[0])
    if template.startswith("geotiff://"):
        paths, options = _location(template, "geotiff://")
        if len(paths) not in (1, 3):
            raise InvalidInput(
                f"tile source {name!r}: give one RGB raster (geotiff:///path/a.tif) or three band files "
                "in R,G,B order (geotiff:///path/B04.tif,/path/B03.tif,/path/B02.tif)"
            )
        tile_size, fmt = tile_options(name, options)
        return RasterSource(name, paths, tile_size, fmt)
    raise InvalidInput(f"tile source {name!r} has an unsupported scheme; use {SCHEMES}")


class SourcePool:
    """Sources opened once and reused by a long-lived process (the HTTP app): a raster stays
    open with its stretch computed, an HTTP source keeps its connections and its rate limit."""

    def __init__(self, core: CoreSettings, settings: TilerSettings):
        self.core = core
        self.settings = settings
        self._sources: dict[str, TileSource] = {}

    def get(self, name: str) -> TileSource:
        if name not in self._sources:
            self._sources[name] = open_source(name, self.core, self.settings)
        return self._sources[name]

    async def aclose(self) -> None:
        sources, self._sources = self._sources, {}
        for source in sources.values():
            await source.aclose()
