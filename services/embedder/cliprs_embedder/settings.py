"""Embedder settings (env prefix ``EMBEDDER_``)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # Online endpoint limits.
    max_text_chars: int = 1000
    max_texts: int = 256
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_side: int = 8192

    def scales_for_zoom(self, z: int) -> list[float]:
        return self.window_scales + (self.fine_scales if z >= self.fine_min_zoom else [])
