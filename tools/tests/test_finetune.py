"""Fine-tuning on a separable toy set (solid colours captioned with their names) with the tiny
generated CLIP: the loss, the retrieval figures, resuming after an interruption, the
augmentations, the caption hook and the output folder that the embedder loads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cliprs.errors import InvalidInput
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_tools.evaluation import metrics
from cliprs_tools.evaluation.datasets import load_captions, load_classification
from cliprs_tools.evaluation.runner import embed_image_files, embed_texts
from cliprs_tools.finetune.augment import BackTranslation, ImageAugment, load_hook, shift_hue
from cliprs_tools.finetune.cli import main
from cliprs_tools.finetune.data import CaptionTrainSet, epoch_batches
from cliprs_tools.finetune.settings import FinetuneSettings
from cliprs_tools.finetune.trainer import Trainer, info_nce

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 50, 220),
    "yellow": (240, 220, 30),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
}


@pytest.fixture(scope="module")
def toy_json(tmp_path_factory) -> Path:
    """Six colours x (4 train + 2 val) noisy solid-colour images, RSICD layout."""
    root = tmp_path_factory.mktemp("colours")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for name, rgb in COLOURS.items():
        for i in range(6):
            arr = np.clip(np.array(rgb)[None, None] + rng.normal(0, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / "images" / f"{name}_{i}.png")
            captions = [f"{name}", f"a {name} image", f"the colour {name}"]
            entries.append(
                {
                    "filename": f"{name}_{i}.png",
                    "split": "train" if i < 4 else "val",
                    "sentences": [{"raw": c} for c in captions],
                }
            )
    (root / "dataset_rsicd.json").write_text(json.dumps({"images": entries}))
    return root / "dataset_rsicd.json"


def _encoder(model_dir: Path):
    return load_encoder(ModelSettings(model=str(model_dir), device="cpu"))


def _settings(out: Path, **kw) -> FinetuneSettings:
    base = dict(out=out, batch_size=8, epochs=2, lr=1e-3, warmup_ratio=0.2, log_every=100, device="cpu")
    return FinetuneSettings(**{**base, **kw})


def test_info_nce_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    row0 = -np.log(np.exp(2) / (np.exp(2) + 1))
    row1 = -np.log(np.e / (1 + np.e))
    # The matrix is symmetric, so both directions give the same mean.
    assert info_nce(logits).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    asym = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    i2t = (-np.log(np.e / (np.e + np.e**3)) + np.log(2)) / 2
    t2i = (-np.log(np.e / (np.e + 1)) - np.log(np.exp(0) / (np.exp(3) + 1))) / 2
    assert info_nce(asym).item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)


def test_epoch_batches_are_a_seeded_partition() -> None:
    a = epoch_batches(17, 4, seed=3, epoch=1)
    assert a == epoch_batches(17, 4, seed=3, epoch=1) and a != epoch_batches(17, 4, seed=3, epoch=2)
    flat = [i for b in a for i, e in b]
    assert sorted(flat) == sorted(set(flat)) and len(flat) == 16  # a last batch of one is dropped
    assert all(e == 1 for b in a for _, e in b)


def test_image_augmentations() -> None:
    arr = np.zeros((40, 60, 3), dtype=np.uint8)
    arr[:, :30] = (255, 0, 0)  # left half red, right half black
    arr[:20, :, 2] = 90  # top half has some blue
    image = Image.fromarray(arr)
    aug = ImageAugment(size=24)
    out = aug(image, random.Random(1))
    assert out.size == (24, 24) and out.mode == "RGB"
    assert np.array_equal(np.array(out), np.array(aug(image, random.Random(1))))  # seeded
    assert not all(np.array_equal(np.array(out), np.array(aug(image, random.Random(s)))) for s in range(2, 6))

    # Flips only (full-frame crop, no jitter): exactly the mirrored pixels.
    flip = ImageAugment(
        size=60,
        scale=(1, 1),
        ratio=(1.5, 1.5),
        brightness=0,
        contrast=0,
        saturation=0,
        hue=0,
        hflip=1,
        vflip=1,
    )
    resized = np.array(image.resize((60, 60), Image.Resampling.BICUBIC))
    assert np.array_equal(np.array(flip(image, random.Random(0))), resized[::-1, ::-1])

    # A third of a turn of hue takes pure red to green.
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    r, g, b = np.array(shift_hue(red, 1 / 3))[0, 0]
    assert g > 200 and r < 30 and b < 30


def test_caption_hook_any_text_function(toy_json: Path, tiny_model_dir: Path) -> None:
    assert load_hook("string:capwords")("a red image") == "A Red Image"
    items = load_captions(toy_json, split="train").items
    encoder = _encoder(tiny_model_dir)
    seen = []

    def shout(text: str) -> str:
        seen.append(text)
        return text.upper()

    always = CaptionTrainSet(items, encoder.transform, caption_hook=shout, caption_hook_p=1.0)
    pixels, caption = always[(0, 0)]
    assert pixels.shape == (224, 224, 3) and caption == seen[-1].upper() and seen[-1] in items[0].captions
    never = CaptionTrainSet(items, encoder.transform, caption_hook=shout, caption_hook_p=0.0)
    assert never[(0, 0)][1] in items[0].captions
    with pytest.raises(ValueError, match="module:attribute"):
        load_hook("capwords")


def test_back_translation_round_trips_through_the_pivot_and_caches(monkeypatch) -> None:
    table = {("en-fr", "a red roof"): "un toit rouge", ("fr-en", "un toit rouge"): "a roof that is red"}
    calls = []

    def translate(self, name, text):
        calls.append(name)
        return table[(name, text)]

    monkeypatch.setattr(BackTranslation, "_translate", translate)
    hook = BackTranslation("en-fr", "fr-en")
    assert hook("a red roof") == "a roof that is red" and hook("a red roof") == "a roof that is red"
    assert calls == ["en-fr", "fr-en"]  # the second call came from the cache


def test_training_lowers_loss_raises_retrieval_and_loads_in_the_embedder(
    tmp_path: Path, toy_json: Path, tiny_model_dir: Path
) -> None:
    train = load_captions(toy_json, split="train")
    val = load_captions(toy_json, split="val")
    settings = _settings(tmp_path / "run", epochs=6)
    result = Trainer(settings, _encoder(tiny_model_dir), train, val).run()

    losses = result.losses
    assert len(losses) == 6 * 3
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    history = result.state.history
    assert [h["epoch"] for h in history] == list(range(7))  # epoch 0 is the model before training
    assert history[-1]["train_loss"] < history[1]["train_loss"]
    assert max(h["retrieval"]["mR"] for h in history[1:]) > history[0]["retrieval"]["mR"]
    assert json.loads((settings.out / "history.json").read_text())[-1]["step"] == 18

    # best/ is a Hugging Face folder that load_encoder (the embedder's loader) takes as CLIP_MODEL,
    # and it is the best epoch's model.
    best = _encoder(result.best_dir)
    assert best.info.dim == 512 and not best.info.fallback
    sim = embed_image_files(best, [it.path for it in val.items]) @ embed_texts(best, val.texts).T
    assert metrics.retrieval_metrics(sim, val.text_owner)["mR"] == pytest.approx(result.state.best_metric)
    meta = json.loads((result.best_dir / "cliprs_finetune.json").read_text())
    assert meta["step"] == result.state.best_step
    assert len(list((settings.out / "checkpoints").glob("step-*.pt"))) == settings.keep_checkpoints


def test_accumulated_micro_batches_are_contrasted_as_one_batch(
    tmp_path: Path, toy_json: Path, tiny_model_dir: Path
) -> None:
    # One step over all 24 training images: one batch of 24, or three micro-batches of 8
    # (the same images in the same order: batches are consecutive slices of one permutation).
    train = load_captions(toy_json, split="train")
    runs = {}
    for name, batch, accum in (("whole", 24, 1), ("micro", 8, 3)):
        settings = _settings(tmp_path / name, batch_size=batch, grad_accum=accum, max_steps=1, epochs=1)
        trainer = Trainer(settings, _encoder(tiny_model_dir), train)
        runs[name] = (trainer, trainer.run().losses)
    (whole, whole_loss), (micro, micro_loss) = runs["whole"], runs["micro"]
    # Same loss: each image had all 23 others as negatives, not just the 7 of its micro-batch.
    assert micro_loss == pytest.approx(whole_loss, rel=1e-5)
    assert whole_loss[0] > np.log(8) + 0.3  # ~log(24) for an untrained model, far above log(8)
    # Same gradients: Adam's first moment after one step is (1 - beta1) x the (clipped) gradient.
    for group_w, group_m in zip(whole.optimizer.param_groups, micro.optimizer.param_groups, strict=True):
        for pw, pm in zip(group_w["params"], group_m["params"], strict=True):
            torch.testing.assert_close(
                micro.optimizer.state[pm]["exp_avg"],
                whole.optimizer.state[pw]["exp_avg"],
                rtol=1e-3,
                atol=1e-9,
            )


def _snapshot(trainer: Trainer) -> dict:
    return {
        "model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "state": trainer.state,
    }


def test_interrupted_run_resumes_to_the_same_state(
    tmp_path: Path, toy_json: Path, tiny_model_dir: Path
) -> None:
    train = load_captions(toy_json, split="train")
    val = load_captions(toy_json, split="val")
    # 24 images, batches of 8 -> 3 micro-batches an epoch; accumulating 2 -> steps of 2 and 1.
    kw = dict(epochs=2, grad_accum=2)

    straight = Trainer(_settings(tmp_path / "straight", **kw), _encoder(tiny_model_dir), train, val)
    straight.run()
    assert straight.state.step == 4

    def interrupt(state, loss):
        if state.step == 3:  # mid-epoch 2, after the epoch-1 checkpoint
            raise KeyboardInterrupt

    first = Trainer(
        _settings(tmp_path / "resumed", **kw), _encoder(tiny_model_dir), train, val, on_step=interrupt
    )
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert (tmp_path / "resumed" / "checkpoints" / "step-00000003.pt").exists()
    resumed = Trainer(_settings(tmp_path / "resumed", **kw), _encoder(tiny_model_dir), train, val)
    resumed.run()

    a, b = _snapshot(straight), _snapshot(resumed)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=1e-7, msg=name)
    for pid, st in a["optimizer"]["state"].items():
        for key, value in st.items():
            torch.testing.assert_close(b["optimizer"]["state"][pid][key], value, rtol=0, atol=1e-7)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    assert (a["state"].step, a["state"].epoch) == (b["state"].step, b["state"].epoch)
    assert a["state"].history == b["state"].history


def test_resume_refuses_other_settings(tmp_path: Path, toy_json: Path, tiny_model_dir: Path) -> None:
    train = load_captions(toy_json, split="train")
    Trainer(_settings(tmp_path, epochs=1), _encoder(tiny_model_dir), train).run()
    with pytest.raises(InvalidInput, match=r"batch_size.*--no-resume"):
        Trainer(_settings(tmp_path, epochs=1, batch_size=4), _encoder(tiny_model_dir), train).run()


def test_cli_with_caption_hook(tmp_path: Path, toy_json: Path, tiny_model_dir: Path, capsys) -> None:
    out = tmp_path / "cli"
    args = ["--model", str(tiny_model_dir), "--data", str(toy_json), "--out", str(out), "--device", "cpu"]
    args += [
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--caption-augment",
        "string:capwords",
        "--caption-augment-p",
        "1",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| epoch | step |" in printed and f"CLIP_MODEL={(out / 'best').resolve()}" in printed
    assert (out / "best" / "config.json").exists() and (out / "best" / "preprocessor_config.json").exists()
    assert main([*args[:-4], "--caption-augment", "nosuchmodule:fn"]) == 2


def test_without_data_it_tunes_on_the_generated_sample_and_says_so(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("CLIP_MODEL", str(tiny_model_dir))
    args = ["--out", str(tmp_path / "run"), "--sample-dir", str(tmp_path / "sample"), "--device", "cpu"]
    assert main([*args, "--epochs", "1", "--max-steps", "1", "--batch-size", "16"]) == 0
    assert "GENERATED sample" in capsys.readouterr().out
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 1]
    # The sample's file names carry categories, so zero-shot classification is measured too.
    assert history[-1]["retrieval"]["mR"] > 0
    # Top-k accuracy (percent) of the sample's evaluated images: one value per k up to the number
    # of categories, each a whole number of those images, never falling as k grows.
    evaluated = load_classification(tmp_path / "sample" / "dataset_rsicd.json", split="val")
    accuracy = {int(k): v for k, v in history[-1]["classification"]["topk_accuracy"].items()}
    assert sorted(accuracy) == [k for k in metrics.CLASSIFICATION_KS if k <= len(evaluated.categories)]
    values = [accuracy[k] for k in sorted(accuracy)]
    assert 0 <= values[0] and values == sorted(values) and values[-1] <= 100, values
    counts = [v * len(evaluated.paths) / 100 for v in values]
    assert counts == pytest.approx([round(c) for c in counts], abs=1e-6), counts
