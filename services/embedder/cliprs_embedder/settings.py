"""Embedder settings (env prefix ``EMBEDDER_``)."""

from __future__ import annotations

import json

from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cliprs.windows import WINDOWS_PER_TILE_LIMIT, count_windows


def checked_tile_sides(max_tile_side: int) -> list[int]:
    """The tile sides the window configuration is checked at: the usual ones (256 px, 512 px @2x
    and every power of two up to the largest) and the largest itself. Rounding makes the count
    differ a little between sides, so the largest alone is not enough."""
    sides = {max_tile_side}
    side = 256
    while side < max_tile_side:
        sides.add(side)
        side *= 2
    return sorted(sides)


class EmbedderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8002
    # Window sides as fractions of the tile side; a stride of a quarter of the window keeps
    # objects on window edges inside some other window's centre, where CLIP looks.
    window_scales: list[float] = [1.0, 0.5]
    stride_ratio: float = 0.25
    # Finer windows ("sub-segmenting") for high-zoom tiles only, where small objects are visible.
    fine_scales: list[float] = [0.25]
    fine_min_zoom: int = 17
    # Windows with a smaller share of valid (not no-data) pixels are not embedded.
    min_valid: float = 0.9
    # Work units: tiles a worker leases at once and streams through one pipeline; the lease
    # (seconds) is renewed every lease_s / 3 while the worker works, and another worker takes the
    # tiles over once it expires (a dead worker delays its tiles, never loses them).
    lease_tiles: int = 256
    lease_s: float = 60
    # Window rows per write transaction (one COPY each).
    write_windows: int = 16384
    # Processes decoding tiles; 0 = auto (1 on a CPU host, up to 4 on a GPU host).
    decode_workers: int = 0
    # The largest tile side (pixels) the window configuration must fit in the id space for.
    max_tile_side: int = 1024
    # Online endpoint limits.
    max_text_chars: int = 1000
    max_texts: int = 256
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_side: int = 8192
    # A shared secret the callers of /v1/embed/* send as "Authorization: Bearer <token>" (the
    # search-api's SEARCH_EMBEDDER_TOKEN). Unset: the endpoints answer anyone who can reach the
    # port, so set it wherever the embedder is reachable from more than the search-api.
    service_token: SecretStr | None = None

    @field_validator("service_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # EMBEDDER_SERVICE_TOKEN= (empty) is no token, not a token anyone can send.
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> EmbedderSettings:
        if not 0 <= self.min_valid <= 1:
            raise ValueError(f"EMBEDDER_MIN_VALID must be within 0..1, not {self.min_valid}")
        if self.lease_tiles < 1:
            raise ValueError(f"EMBEDDER_LEASE_TILES must be at least 1, not {self.lease_tiles}")
        if not self.lease_s > 0:
            raise ValueError(f"EMBEDDER_LEASE_S must be above 0 seconds, not {self.lease_s}")
        if self.write_windows < 1:
            raise ValueError(f"EMBEDDER_WRITE_WINDOWS must be at least 1, not {self.write_windows}")
        if self.decode_workers < 0:
            raise ValueError(f"EMBEDDER_DECODE_WORKERS must be 0 (auto) or more, not {self.decode_workers}")
        if self.service_token is not None and len(self.service_token.get_secret_value()) < 16:
            raise ValueError(
                "EMBEDDER_SERVICE_TOKEN is shorter than 16 characters: use a long random string "
                "(e.g. `openssl rand -hex 32`), or leave it unset"
            )
        if self.max_tile_side < 1:
            raise ValueError(f"EMBEDDER_MAX_TILE_SIDE must be at least 1, not {self.max_tile_side}")
        # Every window of a tile needs an id below WINDOWS_PER_TILE_LIMIT (window id = tile id *
        # limit + index): refuse now what would otherwise fail every tile at embedding time.
        scales = self.window_scales + self.fine_scales
        count, side = max(
            (count_windows(side, scales, self.stride_ratio), side)
            for side in checked_tile_sides(self.max_tile_side)
        )
        if count > WINDOWS_PER_TILE_LIMIT:
            raise ValueError(
                f"the window configuration cuts {count} windows from a {side} px tile, more than the "
                f"{WINDOWS_PER_TILE_LIMIT} windows per tile that window ids allow (checked at start-up); "
                "change EMBEDDER_WINDOW_SCALES, EMBEDDER_FINE_SCALES or EMBEDDER_STRIDE_RATIO "
                "(fewer or larger scales, or a larger stride)"
            )
        return self

    def window_config(self) -> str:
        """What window ids depend on, as a stable string recorded on each job."""
        return json.dumps(
            {
                "scales": self.window_scales,
                "fine_scales": self.fine_scales,
                "fine_min_zoom": self.fine_min_zoom,
                "stride_ratio": self.stride_ratio,
            },
            sort_keys=True,
        )

    def scales_for_zoom(self, z: int) -> list[float]:
        return self.window_scales + (self.fine_scales if z >= self.fine_min_zoom else [])
