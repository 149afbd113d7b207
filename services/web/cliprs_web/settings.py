"""Settings of the web service (env prefix ``WEB_``)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class WebSettings(BaseSettings):
    """Where the web service listens and which public URLs the browser should call."""

    model_config = SettingsConfigDict(env_prefix="WEB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    # Public URLs, as seen from the user's browser (handed to the page via /config.json).
    search_api_url: str = "http://127.0.0.1:8000"
    tiler_url: str = "http://127.0.0.1:8001"
    # Public browser token by design (sent to the page), but never logged: SecretStr hides it
    # from repr() and str().
    mapbox_token: SecretStr | None = None
    # URL this service itself uses for its readiness check of the search-api, when it differs
    # from the public one (e.g. inside a container network). Defaults to ``search_api_url``.
    search_api_internal_url: str | None = None

    @property
    def search_api_check_url(self) -> str:
        """Base URL of the search-api as reachable from this service."""
        return (self.search_api_internal_url or self.search_api_url).rstrip("/")
