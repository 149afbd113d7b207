"""Client of the embedder's online endpoints; its 4xx messages reach the caller unchanged."""

from __future__ import annotations

import httpx
import numpy as np

from cliprs.errors import InvalidInput, TooLarge, Unavailable


class EmbedderClient:
    def __init__(
        self, base_url: str, timeout_s: float = 30.0, transport: httpx.AsyncBaseTransport | None = None
    ):
        # Keep-alive connections: a search must not pay a TCP handshake for its embedding.
        self.client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport)

    async def _post(self, path: str, **kwargs) -> dict:
        try:
            resp = await self.client.post(path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the embedder is not reachable ({type(exc).__name__})") from None
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:200]
            if resp.status_code == 422 and "limit" in message:
                raise TooLarge(message)
            if 400 <= resp.status_code < 500:
                raise InvalidInput(message)
            raise Unavailable(f"the embedder failed: {message}")
        return resp.json()

    async def embed_text(self, text: str) -> tuple[np.ndarray, dict]:
        vectors, body = await self.embed_texts([text])
        return vectors[0], body

    async def embed_texts(self, texts: list[str]) -> tuple[np.ndarray, dict]:
        """(n, dim) unit vectors; the body also says the model and each text's token count."""
        body = await self._post("/v1/embed/text", json={"texts": texts})
        return np.asarray(body["vectors"], dtype=np.float32).reshape(len(texts), -1), body

    async def embed_image(self, data: bytes, filename: str, content_type: str) -> tuple[np.ndarray, dict]:
        body = await self._post("/v1/embed/image", files={"file": (filename, data, content_type)})
        return np.asarray(body["vectors"][0], dtype=np.float32), body

    async def readyz(self) -> dict:
        try:
            resp = await self.client.get("/readyz", timeout=3)
            return resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise Unavailable(f"the embedder is not reachable ({type(exc).__name__})") from None

    async def aclose(self) -> None:
        await self.client.aclose()
