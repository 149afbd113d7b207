"""Reverse geocoding of hit centres, pluggable: an offline gazetteer by default, Nominatim where a
network service is allowed. Every geocoder answers a batch of (lon, lat) points with a `Place`
or None each, and never fails a search: errors become None (or the offline answer)."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import logging
import math
import time
from pathlib import Path
from typing import Protocol

import faiss
import httpx
import numpy as np
from aiolimiter import AsyncLimiter
from cachetools import LRUCache

from cliprs_search.schemas.search import Place
from cliprs_search.settings import SearchSettings

log = logging.getLogger("cliprs.search.geocode")

BUNDLED_GAZETTEER = Path(__file__).parent / "data" / "gazetteer.csv.gz"
EARTH_RADIUS_KM = 6371.0088
_COMPASS = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"]


class Geocoder(Protocol):
    name: str

    async def reverse(self, points: list[tuple[float, float]]) -> list[Place | None]: ...

    async def aclose(self) -> None: ...


def _unit(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lon, lat = np.radians(lon), np.radians(lat)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1).astype(
        np.float32
    )


def haversine_km(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def bearing(lon1: float, lat1: float, lon2: float, lat2: float) -> str:
    """8-point compass direction from point 1 to point 2."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    x = math.sin(dl) * math.cos(p2)
    y = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    deg = (math.degrees(math.atan2(x, y)) + 360) % 360
    return _COMPASS[round(deg / 45) % 8]


class OfflineGeocoder:
    """Names the nearest place of a gazetteer (CSV ``lat,lon,name,admin1,admin2,cc``, gzip or not).

    Places are points on the unit sphere in a small FAISS IVF index (chord distance orders like
    great-circle distance); with 8 of 256 lists probed in 3-D it finds the true nearest place."""

    name = "offline"

    def __init__(self, path: Path | None = None, max_km: float = 100.0):
        path = Path(path or BUNDLED_GAZETTEER)
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
        if not rows:
            raise ValueError(f"the gazetteer {path} is empty")
        self.rows = [(r["name"], r.get("admin1", ""), r.get("admin2", ""), r.get("cc", "")) for r in rows]
        self.lon = np.array([float(r["lon"]) for r in rows])
        self.lat = np.array([float(r["lat"]) for r in rows])
        self.max_km = max_km
        points = _unit(self.lon, self.lat)
        nlist = int(min(256, max(1, len(points) // 64)))
        quantizer = faiss.IndexFlatL2(3)
        self.index = faiss.IndexIVFFlat(quantizer, 3, nlist)
        self.index.train(points)
        self.index.add(points)
        self.index.nprobe = min(8, nlist)
        self._quantizer = quantizer  # the IVF index does not own it

    def nearest(self, points: list[tuple[float, float]]) -> list[Place | None]:
        if not points:
            return []
        arr = np.asarray(points, dtype=np.float64)
        _, idx = self.index.search(_unit(arr[:, 0], arr[:, 1]), 1)
        out: list[Place | None] = []
        for (lon, lat), i in zip(points, idx[:, 0].tolist(), strict=True):
            if i < 0:
                out.append(None)
                continue
            plon, plat = float(self.lon[i]), float(self.lat[i])
            km = haversine_km(plon, plat, lon, lat)
            if km > self.max_km:
                out.append(None)
                continue
            name, admin1, admin2, cc = self.rows[i]
            out.append(
                Place(
                    name=name,
                    admin1=admin1,
                    admin2=admin2,
                    country=cc,
                    lon=plon,
                    lat=plat,
                    distance_km=round(km, 2),
                    bearing=bearing(plon, plat, lon, lat),
                    source="geonames",
                )
            )
        return out

    async def reverse(self, points: list[tuple[float, float]]) -> list[Place | None]:
        return self.nearest(points)

    async def aclose(self) -> None:
        return None


class NominatimGeocoder:
    """Asks a Nominatim server (``/reverse?format=jsonv2``), politely: one request at a time at
    most ``rate_per_s`` per second, answers cached by position (~11 m), and the offline
    gazetteer's answer whenever the server is slow, failing or out of budget for this request."""

    name = "nominatim"

    def __init__(
        self,
        base_url: str,
        user_agent: str,
        fallback: OfflineGeocoder | None,
        rate_per_s: float = 1.0,
        timeout_s: float = 3.0,
        cache_size: int = 10_000,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            headers={"User-Agent": user_agent},
            transport=transport,
        )
        self.fallback = fallback
        # At most one request per 1/rate_per_s seconds (0: no limit), and one at a time.
        self.limiter = AsyncLimiter(1, 1.0 / rate_per_s) if rate_per_s > 0 else None
        self._one_at_a_time = asyncio.Lock()
        self.timeout_s = timeout_s
        self.cache: LRUCache[tuple[float, float], Place | None] = LRUCache(maxsize=cache_size)

    async def _one(self, lon: float, lat: float) -> Place | None:
        key = (round(lon, 4), round(lat, 4))
        if key in self.cache:
            return self.cache[key]
        async with self._one_at_a_time:
            if self.limiter is not None:
                await self.limiter.acquire()
            resp = await self.client.get(
                "/reverse",
                params={"format": "jsonv2", "lat": lat, "lon": lon, "zoom": 16, "addressdetails": 1},
            )
        resp.raise_for_status()
        body = resp.json()
        place = None
        if "error" not in body:
            addr = body.get("address", {})
            name = body.get("name") or addr.get("road") or body.get("display_name", "").split(",")[0]
            place = Place(
                name=name,
                admin1=addr.get("state", ""),
                admin2=addr.get("county", ""),
                country=(addr.get("country_code") or "").upper(),
                lon=float(body["lon"]),
                lat=float(body["lat"]),
                distance_km=round(haversine_km(float(body["lon"]), float(body["lat"]), lon, lat), 2),
                bearing=bearing(float(body["lon"]), float(body["lat"]), lon, lat),
                source="nominatim",
            )
        self.cache[key] = place
        return place

    async def reverse(self, points: list[tuple[float, float]]) -> list[Place | None]:
        offline = self.fallback.nearest(points) if self.fallback else [None] * len(points)
        out: list[Place | None] = []
        deadline = time.monotonic() + self.timeout_s  # one search waits at most this long in all
        for (lon, lat), default in zip(points, offline, strict=True):
            budget = deadline - time.monotonic()
            try:
                if budget <= 0:
                    raise TimeoutError
                out.append(await asyncio.wait_for(self._one(lon, lat), budget) or default)
            except (httpx.HTTPError, ValueError, KeyError, TimeoutError) as exc:
                log.debug("nominatim failed (%s); offline answer used", type(exc).__name__)
                out.append(default)
        return out

    async def aclose(self) -> None:
        await self.client.aclose()


def make_geocoder(settings: SearchSettings) -> Geocoder | None:
    """The configured geocoder (None when turned off)."""
    if settings.geocoder == "none":
        return None
    offline = OfflineGeocoder(settings.gazetteer_path, settings.geocoder_max_km)
    if settings.geocoder == "offline":
        return offline
    return NominatimGeocoder(
        settings.nominatim_url,
        settings.nominatim_user_agent,
        offline,
        settings.nominatim_rate_per_s,
        settings.nominatim_timeout_s,
    )
