"""Client of the embedder's online endpoints.

The embedder answers errors as ``{"error": {"code", "message"}}`` (the `cliprs_http`
vocabulary). The client maps them by ``code``, never by the English message: what the caller
got wrong (``invalid_input``, ``invalid_request``, ``too_large``) is re-raised as the same domain
error with the embedder's message, so it reaches the caller unchanged; anything else (the
embedder ``unavailable``, crashing, unreachable, or answering something that is not its error
shape) is `Unavailable`.
"""

from __future__ import annotations

import httpx
import numpy as np

from cliprs.errors import ClipRSError, InvalidInput, TooLarge, Unavailable
from cliprs_http.observability import forward_request_id

# The embedder's error code -> the domain error raised here. ``invalid_request`` (a request the
# embedder's schema refuses) is built from the caller's input, e.g. a form without the file.
CALLER_ERRORS: dict[str, type[ClipRSError]] = {
    "invalid_input": InvalidInput,
    "invalid_request": InvalidInput,
    "too_large": TooLarge,
}


def error_from(resp: httpx.Response) -> ClipRSError:
    """The domain error for an embedder error answer."""
    try:
        error = resp.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return Unavailable(f"the embedder failed with HTTP {resp.status_code}")
    if resp.is_client_error and code in CALLER_ERRORS:
        return CALLER_ERRORS[code](message)
    return Unavailable(f"the embedder failed ({code}): {message}")


class EmbedderClient:
    def __init__(
        self,
        base_url: str,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        token: str | None = None,
    ):
        """``token``: the embedder's service token (EMBEDDER_SERVICE_TOKEN), sent on every request."""
        # Keep-alive connections: a search must not pay a TCP handshake for its embedding.
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout_s,
            transport=transport,
            headers={"Authorization": f"Bearer {token}"} if token else None,
            event_hooks={"request": [forward_request_id]},  # X-Request-ID across services
        )

    async def _post(self, path: str, **kwargs) -> dict:
        try:
            resp = await self.client.post(path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the embedder is not reachable ({type(exc).__name__})") from None
        if resp.is_error:
            raise error_from(resp)
        try:
            return resp.json()
        except ValueError:
            raise Unavailable("the embedder answered something that is not JSON") from None

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
        """The embedder's readiness answer (its body, whether ready or not)."""
        try:
            resp = await self.client.get("/readyz", timeout=3)
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise Unavailable(f"the embedder is not reachable ({type(exc).__name__})") from None
        if not isinstance(body, dict):
            raise Unavailable("the embedder's readiness answer is not a JSON object")
        return body

    async def aclose(self) -> None:
        await self.client.aclose()
