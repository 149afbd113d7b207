"""The model loader on the tiny generated CLIP: real vocabulary, unit vectors, loud fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliprs.errors import Unavailable
from cliprs.model import load_encoder
from cliprs.settings import ModelSettings


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path):
    return load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu"))


def test_tokenizer_uses_the_real_clip_vocabulary(encoder) -> None:
    ids = encoder.tokenizer("boats near a pier")["input_ids"]
    # OpenAI CLIP ids: <|startoftext|>=49406, "a</w>"=320, <|endoftext|>=49407.
    assert ids[0] == 49406 and ids[-1] == 49407 and 320 in ids
    assert encoder.tokenizer.convert_ids_to_tokens(ids[1:-1]) == [
        "boats</w>",
        "near</w>",
        "a</w>",
        "pier</w>",
    ]


def test_vectors_are_unit_length_and_distinct(encoder) -> None:
    texts = encoder.embed_texts(["boats near a pier", "a red car in a parking lot"])
    rng = np.random.default_rng(1)
    images = encoder.embed_images(
        [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(3)]
    )
    for v in (texts, images):
        assert v.dtype == np.float32 and v.shape[1] == 512
        assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert texts[0] @ texts[1] < 0.999
    assert encoder.info.dim == 512 and not encoder.info.fallback


def test_batching_does_not_change_vectors(encoder) -> None:
    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)) for _ in range(5)]
    assert np.allclose(
        encoder.embed_images(images, batch_size=2), encoder.embed_images(images, batch_size=5), atol=1e-5
    )


def test_unloadable_model_fails_clearly_without_fallback(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot load CLIP model"):
        load_encoder(ModelSettings(model=str(tmp_path / "missing"), device="cpu"))


def test_fallback_is_loud_and_reported(tmp_path: Path, tiny_model_dir: Path, caplog, monkeypatch) -> None:
    fallback_dir = tmp_path / "fallback"
    monkeypatch.setenv("CLIPRS_CLIP_VOCAB", str(next((tiny_model_dir.parents[1] / "wheels").glob("*.whl"))))
    enc = load_encoder(
        ModelSettings(model=str(tmp_path / "missing"), device="cpu", fallback=True, fallback_dir=fallback_dir)
    )
    assert enc.info.fallback and enc.info.requested == str(tmp_path / "missing")
    assert enc.info.loaded == str(fallback_dir) and enc.info.reason
    assert any("FALLING BACK" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
