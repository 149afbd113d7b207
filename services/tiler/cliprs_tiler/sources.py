"""Tile sources behind one interface: give (z, x, y), get the image bytes or a clear failure.

Templates are stored and logged as written (``${MAPBOX_TOKEN}`` stays a placeholder); secrets are
expanded only when a request is made, and stripped from every error message.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import re
import string
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol

import httpx
from aiolimiter import AsyncLimiter
from PIL import Image
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from cliprs.errors import InvalidInput
from cliprs.settings import CoreSettings
from cliprs_tiler.settings import TilerSettings

_PIL_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
_ENV_REF = re.compile(r"\$\{(\w+)\}")


class TileFetchError(Exception):
    """A tile could not be had; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class TileNotFound(TileFetchError):
    """The source has no tile there (404, or no file)."""


@dataclass
class FetchedTile:
    data: bytes
    ext: str
    size: int  # side in pixels


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
        return check_image(await asyncio.to_thread(path.read_bytes))

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
        self.secrets = [os.environ.get(v, "") for v in _ENV_REF.findall(template)]
        self.limiter = AsyncLimiter(max(settings.rate_limit, 0.001), time_period=1.0)
        self.client = httpx.AsyncClient(
            timeout=settings.timeout_s,
            headers={"User-Agent": settings.user_agent},
            follow_redirects=True,
            limits=httpx.Limits(max_connections=settings.concurrency * 2),
        )
        self.requests = 0  # attempts sent, for progress and tests

    def url(self, z: int, x: int, y: int) -> str:
        expanded = string.Template(self.template).safe_substitute(os.environ)
        sub = self.subdomains[(x + y) % len(self.subdomains)] if self.subdomains else ""
        return expanded.replace("{s}", sub).format(z=z, x=x, y=y)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

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
        return check_image(resp.content)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TileFetchError) and exc.retry_after is not None:
            return min(exc.retry_after, self.settings.backoff_max_s)
        base = self.settings.backoff_base_s * 2 ** (state.attempt_number - 1)
        return min(self.settings.backoff_max_s, base) * (0.5 + random.random() / 2)  # jitter

    async def fetch(self, z: int, x: int, y: int) -> FetchedTile:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.retries + 1),
            wait=self._wait,
            retry=retry_if_exception(lambda e: isinstance(e, TileFetchError) and e.retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(z, x, y)
        except TileFetchError as exc:
            raise type(exc)(self.redact(str(exc)), exc.retryable) from None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.client.aclose()


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


def open_source(name: str, core: CoreSettings, settings: TilerSettings) -> TileSource:
    """The configured source called ``name``."""
    template = core.tile_sources.get(name)
    if template is None:
        known = ", ".join(sorted(core.tile_sources)) or "none"
        raise InvalidInput(f"unknown tile source {name!r}; configured sources: {known}")
    if template.startswith("file://"):
        return FolderSource(name, template)
    if template.startswith(("http://", "https://")):
        return XyzSource(name, template, settings)
    raise InvalidInput(f"tile source {name!r} has an unsupported scheme; use http(s):// or file://")
