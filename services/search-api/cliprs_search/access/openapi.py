"""What OpenAPI says about access: the error answers a router's routes may give, declared with
the router (``APIRouter(responses=...)``) next to its access rule."""

from __future__ import annotations

from typing import Any

from cliprs_http.schemas import ErrorResponse

Responses = dict[int | str, dict[str, Any]]

ACCESS_RESPONSES: Responses = {
    401: {"model": ErrorResponse, "description": "No API key, or an unknown or revoked one (unauthorized)"},
    403: {"model": ErrorResponse, "description": "The key lacks the scope this endpoint needs (forbidden)"},
}
QUOTA_RESPONSES: Responses = {
    429: {
        "model": ErrorResponse,
        "description": "Over a quota (rate_limited, tile_budget_exceeded); see Retry-After",
    }
}
# The answers of a route behind a rule that spends a quota (or the tile budget).
LIMITED_RESPONSES: Responses = {**ACCESS_RESPONSES, **QUOTA_RESPONSES}


def responses_of(quota: str | None) -> Responses:
    """The access answers of a rule: 401/403, and 429 when it spends a quota."""
    return LIMITED_RESPONSES if quota else ACCESS_RESPONSES
