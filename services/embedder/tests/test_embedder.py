"""Embedder: window cutting, online endpoints and their limits, batch == online vectors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cliprs.errors import InvalidInput, TooLarge
from cliprs_embedder.app import create_app, validate_texts
from cliprs_embedder.images import decode_image
from cliprs_embedder.pipeline import cut_tile
from cliprs_embedder.settings import EmbedderSettings
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_tiler.render import render_tile
from cliprs_tools.demo import demo_band_paths


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path):
    return load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu"))


@pytest.fixture(scope="module")
def client(encoder):
    with TestClient(
        create_app(EmbedderSettings(max_text_chars=50, max_image_bytes=200_000), encoder=encoder)
    ) as c:
        yield c


@pytest.fixture(scope="module")
def real_tile() -> Image.Image:
    image = render_tile(demo_band_paths(), 14, 4749, 6339)
    assert image is not None
    return image


def test_cut_tile_crops_match_the_window_boxes(real_tile: Image.Image) -> None:
    windows, crops = cut_tile(real_tile, [1.0, 0.5], 0.25)
    assert len(windows) == len(crops) == 26
    w = windows[7]
    assert crops[7].size == (w.size, w.size)
    assert crops[7].tobytes() == real_tile.crop((w.x0, w.y0, w.x1, w.y1)).tobytes()


def test_fine_windows_only_at_high_zoom() -> None:
    s = EmbedderSettings(window_scales=[1.0, 0.5], fine_scales=[0.25], fine_min_zoom=17)
    assert s.scales_for_zoom(16) == [1.0, 0.5]
    assert s.scales_for_zoom(18) == [1.0, 0.5, 0.25]


def test_batch_embedding_equals_the_online_endpoint(
    encoder, client: TestClient, real_tile: Image.Image
) -> None:
    _, crops = cut_tile(real_tile, [1.0, 0.5], 0.25)
    batch = encoder.embed_images(crops, batch_size=16)
    for i in (0, 5, 25):
        buf = io.BytesIO()
        crops[i].save(buf, format="PNG")
        resp = client.post("/v1/embed/image", files={"file": ("w.png", buf.getvalue(), "image/png")})
        assert resp.status_code == 200, resp.text
        online = np.asarray(resp.json()["vectors"][0], dtype=np.float32)
        assert np.allclose(online, batch[i], atol=1e-5)
        assert float(online @ batch[i]) > 0.9999


def test_text_endpoint(client: TestClient) -> None:
    resp = client.post("/v1/embed/text", json={"texts": ["boats near a pier", " forest "]})
    body = resp.json()
    assert resp.status_code == 200 and body["dim"] == 512 and len(body["vectors"]) == 2
    assert body["tokens"] == [6, 3]
    assert body["model"]["fallback"] is False


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"texts": []}, 400, "at least one"),
        ({"texts": ["  "]}, 400, "empty"),
        ({"texts": ["x" * 51]}, 422, "limit is 50"),
        ({"text": "wrong field"}, 422, "texts"),
    ],
)
def test_text_endpoint_errors(client: TestClient, payload: dict, status: int, fragment: str) -> None:
    resp = client.post("/v1/embed/text", json=payload)
    assert resp.status_code == status
    assert fragment in resp.json()["error"]["message"]


def test_image_endpoint_errors(client: TestClient) -> None:
    not_image = client.post("/v1/embed/image", files={"file": ("a.png", b"GIF89a nope", "image/png")})
    assert not_image.status_code == 400 and "not a readable image" in not_image.json()["error"]["message"]
    big = client.post("/v1/embed/image", files={"file": ("a.png", b"\0" * 200_001, "image/png")})
    assert big.status_code == 422 and "limit" in big.json()["error"]["message"]
    missing = client.post("/v1/embed/image")
    assert missing.status_code == 422 and "file" in missing.json()["error"]["message"]


def test_decode_image_limits() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (300, 10)).save(buf, format="PNG")
    with pytest.raises(TooLarge, match="300x10"):
        decode_image(buf.getvalue(), 10_000_000, 200)
    with pytest.raises(InvalidInput, match="empty"):
        decode_image(b"", 100, 100)
    truncated = buf.getvalue()[: len(buf.getvalue()) // 2]
    with pytest.raises(InvalidInput):
        decode_image(truncated, 10_000_000, 1000)
    rgba = io.BytesIO()
    Image.new("RGBA", (20, 20)).save(rgba, format="PNG")
    assert decode_image(rgba.getvalue(), 10_000, 100).mode == "RGB"


def test_validate_texts_strips() -> None:
    assert validate_texts([" a "], EmbedderSettings()) == ["a"]
    with pytest.raises(TooLarge):
        validate_texts(["a"] * 3, EmbedderSettings(max_texts=2))


def test_readyz_and_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"]["dim"] == 512
