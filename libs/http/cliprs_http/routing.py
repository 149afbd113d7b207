"""Walking an app's endpoints (the access rules and the layout test check every one)."""

from __future__ import annotations

from fastapi.routing import APIRoute


def api_routes(routes: list) -> list[APIRoute]:
    """Every endpoint, descending into included routers (FastAPI keeps them nested); static
    mounts, OpenAPI and docs pages are left out."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found.extend(api_routes(route.original_router.routes))
    return found
