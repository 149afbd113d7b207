"""The daily budget of tiles from remote (metered) sources: spent by the areas service when it
has checked an area's plan, given back when the area's creation then fails."""

from __future__ import annotations

from cliprs.sources import is_remote
from cliprs_search.access.principal import AccessDenied, Principal
from cliprs_search.access.quotas import Quotas, TileSpend, seconds_to_midnight
from cliprs_search.settings import SearchSettings


async def spend_tile_budget(
    quotas: Quotas, settings: SearchSettings, principal: Principal, template: str, planned: int
) -> TileSpend | None:
    """Take ``planned`` tiles of a remote ``template`` from the caller's budget for today (UTC);
    None when nothing is spent (access control off, a local source, no tiles). 429 with
    Retry-After (seconds to midnight UTC) when they do not fit."""
    if settings.auth == "off" or not planned or not is_remote(template):
        return None
    budget = (
        principal.daily_tile_budget if principal.daily_tile_budget is not None else settings.daily_tile_budget
    )
    answer = await quotas.spend_tiles(principal.who, planned, budget)
    if not answer.allowed:
        left = max(0, budget - answer.used)
        owner = f"API key {principal.prefix}" if principal.prefix else "requests without a key"
        raise AccessDenied(
            429,
            "tile_budget_exceeded",
            f"this area needs {planned} tiles from a remote source but {owner} has {left} of its "
            f"{budget} left today (UTC); choose fewer zooms or a smaller area, or wait until tomorrow",
            headers={"Retry-After": str(seconds_to_midnight())},
        )
    return TileSpend(quotas, principal.who, planned)
