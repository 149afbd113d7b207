"""The web service's logic: the page's runtime config and the readiness checks (no FastAPI here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from cliprs_web.schemas import PageConfig
from cliprs_web.settings import WebSettings

STATIC_DIR = Path(__file__).parent / "static"
# Files build.sh copies from node_modules; without them the page cannot draw a map.
VENDOR_FILES = ("vendor/maplibre-gl.js", "vendor/maplibre-gl.css")
READY_TIMEOUT_S = 2.0


def page_config(settings: WebSettings) -> PageConfig:
    """What the page reads on load: the public URLs it must call, and the Mapbox token."""
    token = settings.mapbox_token
    return PageConfig(
        search_api_url=settings.search_api_url.rstrip("/"),
        tiler_url=settings.tiler_url.rstrip("/"),
        mapbox_token=token.get_secret_value() if token else None,
    )


def _check(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": ok, "detail": detail}


def check_vendor(static_dir: Path) -> dict[str, Any]:
    """Is the vendored MapLibre bundle in place (``build.sh`` has run)?"""
    missing = [name for name in VENDOR_FILES if not (static_dir / name).is_file()]
    if missing:
        return _check(False, f"missing {', '.join(missing)}: run services/web/build.sh")
    return _check(True, "maplibre-gl bundle present")


async def check_search_api(base_url: str, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Does the search-api's ``/readyz`` answer with a 2xx status within the timeout?"""
    url = f"{base_url}/readyz"
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(url)
    except httpx.TimeoutException:
        return _check(False, f"{url}: no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return _check(False, f"{url}: {type(exc).__name__}: {exc}")
    if not response.is_success:
        return _check(False, f"{url}: HTTP {response.status_code}")
    return _check(True, f"{url}: HTTP {response.status_code}")


async def readiness_checks(settings: WebSettings, static_dir: Path) -> tuple[bool, dict[str, dict[str, Any]]]:
    """(all ok, each check's ``ok`` and ``detail``): the bundle exists, the search-api is ready."""
    checks = {
        "vendor": check_vendor(static_dir),
        "search_api": await check_search_api(settings.search_api_check_url),
    }
    return all(check["ok"] for check in checks.values()), checks
