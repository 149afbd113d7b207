"""``python -m cliprs_tiler`` runs the tiler's HTTP server."""

import uvicorn

from cliprs_tiler.app import create_app
from cliprs_tiler.settings import TilerSettings

if __name__ == "__main__":
    settings = TilerSettings()
    uvicorn.run(create_app(settings=settings), host=settings.host, port=settings.port, log_level="info")
