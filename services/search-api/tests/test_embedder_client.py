"""The embedder client maps the embedder's error answers by code, not by their wording."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from cliprs.errors import ClipRSError, InvalidInput, TooLarge, Unavailable
from cliprs_search.embedder_client import EmbedderClient


def client_answering(status: int, body: object | None = None, content: bytes | None = None) -> EmbedderClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if body is not None:
            return httpx.Response(status, json=body)
        return httpx.Response(status, content=content or b"")

    return EmbedderClient("http://embedder.test", transport=httpx.MockTransport(handler))


def error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (400, "invalid_input", "the upload is not a readable image", InvalidInput),
        # The wording does not decide: a 400 that mentions a limit is still the caller's input...
        (400, "invalid_input", "over the limit of what the model reads", InvalidInput),
        # ...and a limit the message does not call one is still too_large.
        (422, "too_large", "the image has too many pixels", TooLarge),
        (422, "invalid_request", "file: Field required", InvalidInput),
    ],
)
async def test_caller_errors_keep_their_kind_and_message(
    status: int, code: str, message: str, expected: type[ClipRSError]
) -> None:
    client = client_answering(status, error(code, message))
    try:
        with pytest.raises(ClipRSError) as caught:
            await client.embed_image(b"x", "x.png", "image/png")
        assert type(caught.value) is expected and str(caught.value) == message
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("status", "body", "content"),
    [
        (503, error("unavailable", "the model is still loading"), None),
        (500, error("internal", "internal error; see the service log"), None),
        (502, None, b"<html>bad gateway</html>"),  # a proxy's answer, not the embedder's
        (404, error("not_found", "Not Found"), None),  # a wrong embedder URL is not the caller's fault
    ],
)
async def test_everything_else_is_unavailable(status: int, body: object, content: bytes | None) -> None:
    client = client_answering(status, body, content)
    try:
        with pytest.raises(Unavailable):
            await client.embed_text("boats")
    finally:
        await client.aclose()


async def test_transport_errors_are_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = EmbedderClient("http://embedder.test", transport=httpx.MockTransport(refuse))
    try:
        with pytest.raises(Unavailable, match="not reachable"):
            await client.embed_text("boats")
        with pytest.raises(Unavailable, match="not reachable"):
            await client.readyz()
    finally:
        await client.aclose()


async def test_vectors_are_parsed() -> None:
    client = client_answering(
        200, {"model": {"loaded": "tiny"}, "vectors": [[1.0, 0.0], [0.0, 1.0]], "tokens": [3, 4]}
    )
    try:
        vectors, body = await client.embed_texts(["a", "b"])
        assert vectors.shape == (2, 2) and vectors.dtype == np.float32
        assert body["model"] == {"loaded": "tiny"}
    finally:
        await client.aclose()
