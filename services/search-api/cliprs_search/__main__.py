"""``python -m cliprs_search`` runs the search-api HTTP server."""

import logging

import uvicorn

from cliprs_search.app import create_app
from cliprs_search.settings import SearchSettings

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = SearchSettings()
    uvicorn.run(create_app(settings=settings), host=settings.host, port=settings.port, log_level="info")
