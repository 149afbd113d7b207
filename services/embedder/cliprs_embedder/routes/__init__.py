"""The embedder's HTTP routers: health and readiness, and the embedding endpoints."""

from cliprs_embedder.routes import embed, health

ROUTERS = [health.router, embed.router]

__all__ = ["ROUTERS"]
