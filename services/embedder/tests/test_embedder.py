"""Embedder: window cutting, online endpoints and their limits, batch == online vectors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cliprs.errors import InvalidInput, TooLarge, Unavailable
from cliprs.windows import plan_windows, window_plan
from cliprs_embedder.app import create_app
from cliprs_embedder.images import decode_image
from cliprs_embedder.service import validate_texts
from cliprs_embedder.settings import EmbedderSettings
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_raster.render import render_tile
from cliprs_raster.samples import demo_band_paths


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


def test_window_plan_is_the_windows_as_arrays() -> None:
    boxes, scales = window_plan(256, (1.0, 0.5), 0.25)
    windows = plan_windows(256, [1.0, 0.5], 0.25)
    assert boxes.shape == (26, 4) and boxes.dtype == np.int32
    assert boxes.tolist() == [[w.x0, w.y0, w.x1, w.y1] for w in windows]
    assert scales.tolist() == [w.scale for w in windows]
    assert window_plan(256, (1.0, 0.5), 0.25)[0] is boxes  # computed once per configuration


def test_fine_windows_only_at_high_zoom() -> None:
    s = EmbedderSettings(window_scales=[1.0, 0.5], fine_scales=[0.25], fine_min_zoom=17)
    assert s.scales_for_zoom(16) == [1.0, 0.5]
    assert s.scales_for_zoom(18) == [1.0, 0.5, 0.25]


def test_batch_embedding_equals_the_online_endpoint(
    encoder, client: TestClient, real_tile: Image.Image
) -> None:
    # The batch path cuts windows from the tile resized once; the endpoint resizes the window's
    # pixels alone: the same vector up to the window borders.
    tile = real_tile.convert("RGB")
    boxes, _ = window_plan(tile.width, (1.0, 0.5), 0.25)
    [(_, batch, _)] = list(encoder.embed_tiles([(0, np.asarray(tile), boxes)], batch_size=16))
    crops = [tile.crop(tuple(b)) for b in boxes.tolist()]
    for i in (0, 5, 25):
        buf = io.BytesIO()
        crops[i].save(buf, format="PNG")
        resp = client.post("/v1/embed/image", files={"file": ("w.png", buf.getvalue(), "image/png")})
        assert resp.status_code == 200, resp.text
        online = np.asarray(resp.json()["vectors"][0], dtype=np.float32)
        assert np.allclose(online, encoder.embed_images([crops[i]])[0], atol=1e-5)
        assert float(online @ batch[i]) > 0.999


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


# -- every error carries the code a client reads (cliprs_http's vocabulary) ---------------------


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"texts": []}, 400, "invalid_input"),
        ({"texts": ["  "]}, 400, "invalid_input"),
        ({"texts": ["x" * 51]}, 422, "too_large"),
        ({"texts": ["a"] * 257}, 422, "too_large"),
        ({"text": "wrong field"}, 422, "invalid_request"),
        ({"texts": "not a list"}, 422, "invalid_request"),
    ],
)
def test_text_errors_carry_their_code(client: TestClient, payload: dict, status: int, code: str) -> None:
    resp = client.post("/v1/embed/text", json=payload)
    assert (resp.status_code, resp.json()["error"]["code"]) == (status, code)


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "invalid_input"),
        (b"GIF89a nope", 400, "invalid_input"),
        (b"\0" * 200_001, 422, "too_large"),
        (None, 422, "invalid_request"),
    ],
)
def test_image_errors_carry_their_code(
    client: TestClient, data: bytes | None, status: int, code: str
) -> None:
    files = {"file": ("a.png", data, "image/png")} if data is not None else None
    resp = client.post("/v1/embed/image", files=files)
    assert (resp.status_code, resp.json()["error"]["code"]) == (status, code)


def test_an_image_over_the_side_limit_is_too_large(encoder) -> None:
    app = create_app(EmbedderSettings(max_image_side=100), encoder=encoder)
    with TestClient(app) as c:
        resp = c.post("/v1/embed/image", files={"file": ("a.png", _png(101, 10), "image/png")})
    assert (resp.status_code, resp.json()["error"]["code"]) == (422, "too_large")
    assert "101x10" in resp.json()["error"]["message"]


def test_without_a_model_it_stays_up_and_answers_unavailable(tmp_path: Path) -> None:
    missing = ModelSettings(model=str(tmp_path / "missing"), device="cpu", fallback=False)
    with TestClient(create_app(model_settings=missing)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        assert (
            ready.json()["model"] is None
            and "cannot load CLIP model" in ready.json()["checks"]["model"]["error"]
        )
        for resp in (
            c.post("/v1/embed/text", json={"texts": ["boats"]}),
            c.post("/v1/embed/image", files={"file": ("a.png", _png(8, 8), "image/png")}),
        ):
            assert resp.status_code == 503 and resp.headers["Retry-After"]
            assert resp.json()["error"]["code"] == "unavailable"
            assert "cannot load CLIP model" in resp.json()["error"]["message"]


def test_a_model_out_of_memory_answers_unavailable(encoder, client: TestClient, monkeypatch) -> None:
    # What ClipEncoder raises when the device runs out of memory (see libs/model's test of it).
    def out_of_memory(texts):
        raise Unavailable(
            "the model ran out of memory on cuda:0; retry shortly, or send fewer inputs at once"
        )

    monkeypatch.setattr(encoder, "embed_texts", out_of_memory)
    resp = client.post("/v1/embed/text", json={"texts": ["boats"]})
    assert (resp.status_code, resp.json()["error"]["code"]) == (503, "unavailable")
    assert resp.headers["Retry-After"]
