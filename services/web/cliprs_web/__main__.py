"""``python -m cliprs_web``: run the web service with uvicorn, configured from ``WEB_*``."""

from __future__ import annotations

import logging

import uvicorn

from cliprs_web.app import create_app
from cliprs_web.settings import WebSettings

log = logging.getLogger("cliprs_web")


def main() -> None:
    """Read the settings from the environment and serve the page until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = WebSettings()
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
