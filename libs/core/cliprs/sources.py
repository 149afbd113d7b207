"""What a tile source's template says about its cost, for the tiler (which fetches) and the
search-api (which spends the daily tile budget when it plans an area)."""

from __future__ import annotations

# Sources whose tiles come over the network, each request one a provider may meter (or sign, or
# rate-limit): XYZ providers, and STAC APIs, whose items' COGs are read from remote servers (many
# requests per tile). A local folder, MBTiles file, raster or static STAC catalog costs nothing.
REMOTE_SCHEMES = ("http://", "https://", "stac+http://", "stac+https://")


def is_remote(template: str) -> bool:
    """Whether a source's tiles come from a remote provider (each request may be billed)."""
    return template.lower().startswith(REMOTE_SCHEMES)
