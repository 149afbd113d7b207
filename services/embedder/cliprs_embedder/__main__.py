"""``python -m cliprs_embedder`` runs the online embedding HTTP server.

It takes no arguments: everything is configured from the environment (``EMBEDDER_*`` for the
service, ``CLIP_*`` for the model), like the Celery worker (``celery -A cliprs_embedder.tasks``).
"""

from __future__ import annotations

import logging

import uvicorn

from cliprs_embedder.app import create_app
from cliprs_embedder.settings import EmbedderSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = EmbedderSettings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
