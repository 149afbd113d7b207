"""CLIP-RS web page: serves the static map page and tells it where the search-api and tiler are."""

__version__ = "0.1.0"
