"""The model loader on the tiny generated CLIP: real vocabulary, unit vectors, loud fallback,
fast preprocessing equal to the processor, batching, precision, the backend registry."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.clip import CLIPImageProcessorPil

from cliprs.errors import Unavailable
from cliprs_model import BACKENDS, ImageTransform, load_encoder, register_backend
from cliprs_model.loader import load_hf_clip
from cliprs_model.settings import ModelSettings
from cliprs_model.vocab import find_bpe_file


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
    monkeypatch.setenv("CLIP_VOCAB", str(next((tiny_model_dir.parents[1] / "wheels").glob("*.whl"))))
    enc = load_encoder(
        ModelSettings(model=str(tmp_path / "missing"), device="cpu", fallback=True, fallback_dir=fallback_dir)
    )
    assert enc.info.fallback and enc.info.requested == str(tmp_path / "missing")
    assert enc.info.loaded == str(fallback_dir) and enc.info.reason
    assert any("FALLING BACK" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_vocabulary_comes_from_a_wheel_a_gz_or_a_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    wheel = next((tiny_model_dir.parents[1] / "wheels").glob("*.whl"))
    from_wheel = find_bpe_file(wheel)
    assert find_bpe_file(wheel.parent) == from_wheel
    gz = tmp_path / "bpe.txt.gz"
    gz.write_bytes(from_wheel)
    assert find_bpe_file(gz) == from_wheel


def test_a_vocabulary_that_cannot_be_fetched_is_unavailable(tmp_path: Path, monkeypatch) -> None:
    def offline(command, **_):
        raise subprocess.CalledProcessError(1, command, stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(Unavailable, match=r"cannot fetch the CLIP vocabulary.*No matching distribution"):
        find_bpe_file(tmp_path / "empty")


def test_a_failing_fallback_is_unavailable_and_says_both_reasons(tmp_path: Path) -> None:
    not_a_vocab = tmp_path / "bpe.txt.gz"
    not_a_vocab.write_bytes(b"")
    settings = ModelSettings(
        model=str(tmp_path / "missing"),
        device="cpu",
        fallback=True,
        fallback_dir=tmp_path / "fallback",
        vocab=not_a_vocab,
    )
    with pytest.raises(Unavailable, match=r"cannot load CLIP model.*the fallback failed too"):
        load_encoder(settings)


def test_out_of_device_memory_is_unavailable(encoder, monkeypatch) -> None:
    def out_of_memory(*_, **__):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(encoder.model, "get_text_features", out_of_memory)
    monkeypatch.setattr(encoder.model, "get_image_features", out_of_memory)
    with pytest.raises(Unavailable, match="ran out of memory"):
        encoder.embed_texts(["boats"])
    with pytest.raises(Unavailable, match="ran out of memory"):
        encoder.embed_images([Image.new("RGB", (64, 64))])


# -- fast preprocessing == the model's image processor ------------------------------------------


def _images(rng: np.random.Generator) -> list[Image.Image]:
    """Window-like squares (smaller, equal and larger than 224 px), odd shapes, other modes."""
    sizes = [(64, 64), (128, 128), (224, 224), (256, 256), (512, 512), (300, 100), (99, 301), (225, 223)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    images.append(Image.fromarray(rng.integers(0, 256, (50, 70, 4), dtype=np.uint8), "RGBA"))
    images.append(Image.fromarray(rng.integers(0, 256, (80, 60), dtype=np.uint8), "L"))
    return images


@pytest.mark.parametrize("which", ["vit-b-32", "tiny-checkpoint"])
def test_fast_preprocessing_equals_the_processor(which: str, tiny_model_dir: Path) -> None:
    # CLIPImageProcessorPil's defaults are ViT-B/32's: shortest edge 224 bicubic, centre crop
    # 224, rescale 1/255, OpenAI CLIP mean/std; the tiny checkpoint saves the same settings.
    processor = (
        CLIPImageProcessorPil()
        if which == "vit-b-32"
        else CLIPImageProcessorPil.from_pretrained(str(tiny_model_dir))
    )
    transform = ImageTransform.from_processor(processor)
    assert (transform.shortest_edge, transform.crop, transform.resample) == (224, (224, 224), 3)
    images = _images(np.random.default_rng(3))
    reference = processor(images=images, return_tensors="pt")["pixel_values"]
    with ThreadPoolExecutor(2) as pool:
        fast = transform.normalise(torch.from_numpy(transform.prepare(images, pool)))
    assert fast.shape == reference.shape == (len(images), 3, 224, 224)
    assert fast.dtype == torch.float32
    assert (fast - reference).abs().max().item() < 1e-5


def test_device_preprocessing_is_close_to_the_processor(encoder) -> None:
    # torch's antialiased bicubic is Pillow's filter in float: pixels agree to a rounding step
    # almost everywhere, and the vectors agree.
    images = _images(np.random.default_rng(4))
    reference = encoder.image_processor(images=images, return_tensors="pt")["pixel_values"]
    device_path = encoder.preprocess(images)
    assert device_path.shape == reference.shape and device_path.dtype == torch.float32
    assert (device_path - reference).abs().mean().item() < 0.01
    with torch.inference_mode():
        a = encoder.model.get_image_features(pixel_values=reference)
        b = encoder.model.get_image_features(pixel_values=device_path)
    a, b = (torch.nn.functional.normalize(_features(v), dim=-1) for v in (a, b))
    assert (a * b).sum(-1).min().item() > 0.999


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.mark.parametrize(
    ("side", "scales", "stride"),
    [(256, [1.0, 0.5, 0.25], 0.25), (512, [1.0, 0.5], 0.25), (300, [0.5, 0.3], 0.3)],
)
def test_windows_cut_on_the_device_equal_each_window_alone_inside_the_borders(
    encoder, side: int, scales: list[float], stride: float
) -> None:
    from cliprs.windows import plan_windows

    rng = np.random.default_rng(side)
    tile = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    windows = plan_windows(side, scales, stride)
    boxes = np.array([(w.x0, w.y0, w.x1, w.y1) for w in windows], dtype=np.int32)
    cut = encoder.transform.windows_input(torch.from_numpy(tile), boxes)
    alone = torch.cat(
        [encoder.transform.image_input(torch.from_numpy(tile[y0:y1, x0:x1])) for x0, y0, x1, y1 in boxes]
    )
    assert cut.shape == alone.shape == (len(boxes), 3, 224, 224)
    # Only the resize near a window's border sees different pixels (its neighbours' instead of
    # Pillow's clamped edge): the centre is the same computation, up to a value rounding to
    # the other side of .5 (one grey level: 1 / 255 / std, 0.015 after normalisation).
    margin = 16
    inner = (cut - alone)[..., margin:-margin, margin:-margin].abs()
    assert inner.max().item() < 0.016 and (inner > 1e-4).float().mean().item() < 0.01


def test_unsupported_processor_options_are_refused() -> None:
    with pytest.raises(ValueError, match="longest_edge"):
        ImageTransform.from_processor(CLIPImageProcessorPil(size={"shortest_edge": 224, "longest_edge": 300}))


# -- batching --------------------------------------------------------------------------------


def test_groups_share_batches_and_come_back_in_order(encoder) -> None:
    rng = np.random.default_rng(5)
    sizes = [0, 3, 0, 7, 1, 0, 5]
    groups = [
        encoder.preprocess([_noise(rng) for _ in range(n)]) if n else torch.empty(0, 3, 224, 224)
        for n in sizes
    ]
    out = list(encoder.embed_inputs(((i, g) for i, g in enumerate(groups)), batch_size=4))
    assert [k for k, _ in out] == list(range(len(sizes)))
    assert [len(v) for _, v in out] == sizes
    # Each group's vectors equal embedding that group alone in one batch.
    for (_, vectors), inputs in zip(out, groups, strict=True):
        if len(inputs):
            alone = np.concatenate([v for _, v in encoder.embed_inputs([(0, inputs)], batch_size=64)])
            assert np.allclose(vectors, alone, atol=1e-5)


def test_embed_tiles_and_embed_images_agree(encoder) -> None:
    # A window's pixels uploaded alone and the same window cut from its tile: the same vector
    # up to the border pixels of the resize.
    rng = np.random.default_rng(8)
    tile = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    boxes = np.array([(0, 0, 256, 256), (64, 64, 192, 192), (128, 0, 256, 128)], dtype=np.int32)
    [(key, from_tile, _)] = list(encoder.embed_tiles([("t", tile, boxes)]))
    alone = encoder.embed_images([Image.fromarray(tile[y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes])
    assert key == "t" and from_tile.shape == (3, encoder.dim)
    assert np.sum(from_tile * alone, axis=1).min() > 0.999


def test_stage_clock_counts_device_work(encoder) -> None:
    encoder.clock.take()
    tile = np.zeros((256, 256, 3), dtype=np.uint8)
    list(encoder.embed_tiles([(0, tile, np.array([(0, 0, 128, 128)], dtype=np.int32))]))
    seconds = encoder.clock.take()
    assert set(seconds) == {"resize", "encode"} and all(v > 0 for v in seconds.values())
    assert encoder.clock.take() == {}


def test_auto_batch_size_on_cpu(encoder) -> None:
    assert encoder.batch_size == 64


def _noise(rng: np.random.Generator, side: int = 96) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


# -- precision and devices ---------------------------------------------------------------------


def test_bf16_on_cpu_is_close_to_fp32(tiny_model_dir: Path) -> None:
    fp32 = load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu"))
    bf16 = load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu", precision="bf16"))
    images = [_noise(np.random.default_rng(6)) for _ in range(4)]
    a, b = fp32.embed_images(images), bf16.embed_images(images)
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    assert np.min(np.sum(a * b, axis=1)) > 0.99
    with pytest.raises(ValueError, match="precision"):
        fp32.configure(precision="fp8")


def test_asking_for_cuda_without_one_fails_clearly(tiny_model_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(Unavailable, match="no CUDA device"):
        load_encoder(ModelSettings(model=str(tiny_model_dir), device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fp16_matches_cpu_and_sizes_its_batches(tiny_model_dir: Path, encoder) -> None:
    gpu = load_encoder(ModelSettings(model=str(tiny_model_dir), device="cuda"))
    assert gpu.precision == torch.float16 and 32 <= gpu.batch_size <= 1024
    images = [_noise(np.random.default_rng(7)) for _ in range(40)]
    on_gpu, on_cpu = gpu.embed_images(images, batch_size=16), encoder.embed_images(images)
    assert on_gpu.dtype == np.float32
    assert np.min(np.sum(on_gpu * on_cpu, axis=1)) > 0.99


# -- the backend registry ------------------------------------------------------------------------

CALLS: list[str] = []


def recording_backend(name_or_path: str, device: torch.device):
    """A backend living outside cliprs, selected as ``CLIP_BACKEND=module:function``."""
    CALLS.append(name_or_path)
    return load_hf_clip(name_or_path, device)


def test_backends_are_chosen_by_setting(tiny_model_dir: Path, monkeypatch) -> None:
    monkeypatch.setitem(BACKENDS, "recording", recording_backend)
    enc = load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu", backend="recording"))
    assert CALLS == [str(tiny_model_dir)] and enc.dim == 512
    monkeypatch.setenv("CLIP_BACKEND", f"{__name__}:recording_backend")
    monkeypatch.setenv("CLIP_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("CLIP_DEVICE", "cpu")
    load_encoder()
    assert len(CALLS) == 2


def test_register_backend_decorator(monkeypatch) -> None:
    monkeypatch.setattr("cliprs_model.loader.BACKENDS", dict(BACKENDS))
    from cliprs_model import loader

    @register_backend("other")
    def other(name_or_path: str, device: torch.device):
        raise RuntimeError("not this one")

    assert loader.BACKENDS["other"] is other and "other" not in BACKENDS


def test_unknown_backend_says_what_exists(tiny_model_dir: Path) -> None:
    with pytest.raises(Unavailable, match=r"unknown CLIP backend 'nope'.*hf-clip"):
        load_encoder(ModelSettings(model=str(tiny_model_dir), backend="nope"))
    with pytest.raises(Unavailable, match="cannot import"):
        load_encoder(ModelSettings(model=str(tiny_model_dir), backend="no_such_module:load"))
