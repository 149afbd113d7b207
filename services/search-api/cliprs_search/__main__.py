"""``python -m cliprs_search`` runs the search-api HTTP server."""

import logging

import uvicorn

from cliprs_search.app import create_app
from cliprs_search.settings import SearchSettings

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = SearchSettings()
    # proxy_headers=False: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1; which
    # proxies are believed is SEARCH_TRUSTED_PROXIES' to say (cliprs_search.access.principal).
    uvicorn.run(
        create_app(settings=settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        proxy_headers=False,
    )
