"""``python -m cliprs_embedder`` runs the online embedding HTTP server."""

import logging

import uvicorn

from cliprs_embedder.app import create_app
from cliprs_embedder.settings import EmbedderSettings

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = EmbedderSettings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
