"""The search-api's routers, one module per feature (the API's table of contents):

- `search`: text to image, image to image, find similar;
- `zeroshot`: labels for an image (classify) and where in a tile is X (heat map);
- `areas`: areas, their ingest jobs and the live index;
- `projects`: projects, labels and refine; `runs`: detection runs; `exports`: a run's files and
  vector tiles;
- `admin`: API keys and the audit trail; `health`: liveness and readiness.

Each feature has a router per access rule (read, write, search, ...), the rule declared on the
router; handlers parse the request, call `cliprs_search.service` and return its response model.
`API_ROUTERS` is what the app mounts under ``/v1``.
"""

from __future__ import annotations

from fastapi import APIRouter

from cliprs_search.routes import admin, areas, exports, projects, runs, search, zeroshot

API_ROUTERS: list[APIRouter] = [
    search.router,
    search.uploads,
    zeroshot.router,
    zeroshot.classify_router,
    areas.router,
    areas.writes,
    projects.router,
    projects.writes,
    projects.searches,
    exports.router,
    runs.router,
    runs.writes,
    admin.router,
]
