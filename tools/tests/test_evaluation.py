"""Evaluation: metric functions against hand-computed values, the dataset layouts, and a small
end-to-end run of the CLI with two tiny CLIPs side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliprs.errors import InvalidInput
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_model.tiny import build_tiny_clip
from cliprs_tools.evaluation import metrics
from cliprs_tools.evaluation.cli import main
from cliprs_tools.evaluation.datasets import PROMPT, load_captions, load_classification
from cliprs_tools.evaluation.report import slug
from cliprs_tools.evaluation.runner import embed_image_files, embed_texts

# -- metrics on constructed score matrices ---------------------------------------------------

# 4 images x 4 categories. Rank of the true category: img0 -> 0, img1 -> 1, img2 -> 3, img3 -> 0.
SCORES = np.array(
    [
        [0.9, 0.1, 0.2, 0.3],
        [0.5, 0.4, 0.1, 0.0],
        [0.1, 0.2, 0.3, 0.05],
        [0.2, 0.1, 0.0, 0.8],
    ]
)
LABELS = [[0], [1], [3], [3]]


def test_topk_accuracy_by_hand() -> None:
    target = metrics.multi_hot(LABELS, 4)
    assert metrics.topk_accuracy(SCORES, target, (1, 2, 3, 4)) == {1: 50.0, 2: 75.0, 3: 75.0, 4: 100.0}


def test_topk_accuracy_multilabel_counts_any_true_label() -> None:
    # img2 is labelled {2, 3}: category 2 is its best-scored, so it is now a top-1 hit.
    target = metrics.multi_hot([[0], [1], [2, 3], [3]], 4)
    assert metrics.topk_accuracy(SCORES, target, (1, 2)) == {1: 75.0, 2: 100.0}


def test_multilabel_metrics_by_hand() -> None:
    target = metrics.multi_hot(LABELS, 4)
    # k=1 predictions: img0 {0}, img1 {0}, img2 {2}, img3 {3}.
    # category 0: tp 1, fp 1, fn 0 -> P .5, R 1, F1 2/3; category 1: tp 0, fn 1 -> 0, 0, 0;
    # category 2: fp 1 -> 0, 0, 0 (no true images: recall counts 0); category 3: tp 1, fn 1 -> 1, .5, 2/3.
    m1 = metrics.multilabel_metrics(SCORES, target, 1)
    assert m1["precision"] == pytest.approx(100 * (0.5 + 1) / 4)
    assert m1["recall"] == pytest.approx(100 * (1 + 0.5) / 4)
    assert m1["f1"] == pytest.approx(100 * (2 / 3 + 2 / 3) / 4)
    # 16 cells; wrong: img1 (cat 0 predicted, cat 1 missed), img2 (2 predicted, 3 missed) -> 4.
    assert m1["hamming_loss"] == pytest.approx(4 / 16)
    # k=2: img0 {0,3}, img1 {0,1}, img2 {2,1}, img3 {3,0}.
    # cat0: tp1 fp2 -> P 1/3 R 1; cat1: tp1 fp1 -> P .5 R 1; cat2: fp1 -> 0 0; cat3: tp1 fp1 fn1 -> .5 .5.
    m2 = metrics.multilabel_metrics(SCORES, target, 2)
    assert m2["precision"] == pytest.approx(100 * (1 / 3 + 0.5 + 0 + 0.5) / 4)
    assert m2["recall"] == pytest.approx(100 * (1 + 1 + 0 + 0.5) / 4)
    assert m2["f1"] == pytest.approx(100 * (0.5 + 2 / 3 + 0 + 0.5) / 4)
    assert m2["hamming_loss"] == pytest.approx(6 / 16)


def test_per_class_accuracy_by_hand() -> None:
    target = metrics.multi_hot(LABELS, 4)
    acc = metrics.per_class_accuracy(SCORES, target, 1)
    assert acc[0] == 100.0 and acc[1] == 0.0 and np.isnan(acc[2]) and acc[3] == 50.0


def test_ties_rank_in_column_order() -> None:
    assert metrics.column_ranks(np.array([[0.5, 0.5, 0.9]])).tolist() == [[1, 2, 0]]


def test_retrieval_metrics_by_hand() -> None:
    # 3 images, 5 captions: captions 0,1 -> image 0; 2,3 -> image 1; 4 -> image 2.
    owner = [0, 0, 1, 1, 2]
    sim = np.array(
        [
            [0.9, 0.1, 0.8, 0.0, 0.3],  # image 0
            [0.2, 0.7, 0.5, 0.6, 0.1],  # image 1
            [0.1, 0.2, 0.3, 0.4, 0.2],  # image 2
        ]
    )
    t2i, i2t = metrics.retrieval_ranks(sim, owner)
    # caption columns: c0 -> img0 rank 0; c1 -> img0 (0.1) below 0.7, 0.2 -> rank 2; c2 -> img1 (0.5)
    # below 0.8 -> rank 1; c3 -> img1 (0.6) best -> 0; c4 -> img2 (0.2) below 0.3 -> rank 1.
    assert t2i.tolist() == [0, 2, 1, 0, 1]
    # image rows: img0 best own caption c0 at rank 0; img1 order c1 .7, c3 .6 -> rank 1 (c3);
    # img2 order c3 .4, c2 .3, c4/c1 .2 (tie, column order: c1 then c4) -> c4 at rank 3.
    assert i2t.tolist() == [0, 1, 3]
    m = metrics.retrieval_metrics(sim, owner, ks=(1, 2, 3))
    assert m["text_to_image"] == {1: 40.0, 2: 80.0, 3: 100.0}
    assert m["image_to_text"] == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 200 / 3})
    assert m["mR"] == pytest.approx((40 + 80 + 100 + 100 / 3 + 200 / 3 + 200 / 3) / 6)


# -- dataset layouts -------------------------------------------------------------------------

COLOURS = {
    "beach": (230, 210, 160),
    "forest": (30, 90, 30),
    "river": (40, 80, 170),
    "desert": (210, 180, 110),
}


def _image(path: Path, colour, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour)[None, None] + rng.normal(0, 12, (40, 40, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "scenes"
    for i, (cat, colour) in enumerate(COLOURS.items()):
        for j in range(3):
            _image(root / cat / f"{j}.png", colour, 10 * i + j)
    (root / "README.txt").write_text("ignored: not a category folder")
    return root


@pytest.fixture
def rsicd_json(tmp_path: Path) -> Path:
    root = tmp_path / "rsicd"
    entries = []
    for i, (cat, colour) in enumerate(COLOURS.items()):
        for j in range(3):
            name = f"{cat}_{j + 1}.jpg"
            _image(root / "images" / name, colour, 100 + 10 * i + j)
            sentences = [{"raw": f"a {cat} seen from above ."}, {"raw": f"this is a {cat} ."}]
            entries.append({"filename": name, "split": "test" if j < 2 else "train", "sentences": sentences})
    entries.append({"filename": "00042.jpg", "split": "test", "sentences": [{"raw": "no category prefix"}]})
    _image(root / "images" / "00042.jpg", (128, 128, 128), 7)
    (root / "dataset_rsicd.json").write_text(json.dumps({"images": entries}))
    return root / "dataset_rsicd.json"


def test_image_folder_layout(image_folder: Path) -> None:
    data = load_classification(image_folder)
    assert len(data.paths) == 12 and not data.multilabel
    assert {data.categories[ls[0]] for ls in data.labels} == set(COLOURS)


def test_image_folder_unknown_category_says_how_to_fix(image_folder: Path) -> None:
    (image_folder / "volcano").mkdir()
    _image(image_folder / "volcano" / "0.png", (200, 0, 0), 1)
    with pytest.raises(InvalidInput, match=r"'volcano'.*--categories"):
        load_classification(image_folder)
    assert len(load_classification(image_folder, [*COLOURS, "volcano"]).paths) == 13


def test_rsicd_json_as_captions_and_as_classes(rsicd_json: Path) -> None:
    test = load_captions(rsicd_json, split="test")
    assert len(test.items) == 9 and test.items[0].captions == ["a beach seen from above", "this is a beach"]
    assert test.text_owner[:4] == [0, 0, 1, 1] and len(test.texts) == 17
    assert len(load_captions(rsicd_json, split="all").items) == 13
    classes = load_classification(rsicd_json, split="test")  # labels from file-name prefixes
    assert len(classes.paths) == 8  # 00042.jpg carries no category
    with pytest.raises(InvalidInput, match="no captioned images in split 'val'"):
        load_captions(rsicd_json, split="val")


def test_multilabel_json_and_missing_images(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png", (0, 0, 255), 1)
    spec = {
        "images": [
            {"filename": "a.png", "labels": ["river", "forest"]},
            {"filename": "b.png", "labels": ["beach"]},
        ]
    }
    (tmp_path / "labels.json").write_text(json.dumps(spec))
    with pytest.raises(InvalidInput, match=r"1 of 2 images are missing.*--images-dir"):
        load_classification(tmp_path / "labels.json")
    _image(tmp_path / "images" / "b.png", (0, 0, 255), 2)
    data = load_classification(tmp_path / "labels.json")
    assert data.multilabel and data.labels[0] == sorted(
        [data.categories.index("river"), data.categories.index("forest")]
    )


# -- end to end ------------------------------------------------------------------------------


def test_cli_compares_models_and_matches_the_metric_functions(
    tmp_path: Path, tiny_model_dir: Path, image_folder: Path, rsicd_json: Path
) -> None:
    other = build_tiny_clip(
        tmp_path / "tiny-seed1", seed=1, vocab_cache=tiny_model_dir.parent.parent / "wheels"
    )
    out = tmp_path / "out"
    args = ["--model", str(tiny_model_dir), "--model", str(other), "--device", "cpu", "--out", str(out)]
    assert main([*args, "--classification", str(image_folder), "--retrieval", str(rsicd_json)]) == 0

    results = json.loads((out / "results.json").read_text())["models"]
    assert [r["model"] for r in results] == [str(tiny_model_dir), str(other)]
    md = (out / "results.md").read_text()
    assert "| top-1 % | top-3 % | top-5 % | top-10 % |" in md and "| mR |" in md
    for png in ("topk.png", "per_class.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The CLI's figures are the metric functions applied to the embedder's vectors.
    encoder = load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu"))
    data = load_classification(image_folder)
    scores = (
        embed_image_files(encoder, data.paths)
        @ embed_texts(encoder, [PROMPT.format(category=c) for c in data.categories]).T
    )
    target = metrics.multi_hot(data.labels, len(data.categories))
    cls = results[0]["classification"]
    assert cls["topk_accuracy"] == {str(k): v for k, v in metrics.topk_accuracy(scores, target).items()}
    assert cls["multilabel"]["5"] == pytest.approx(metrics.multilabel_metrics(scores, target, 5))
    captions = load_captions(rsicd_json)
    sim = (
        embed_image_files(encoder, [it.path for it in captions.items])
        @ embed_texts(encoder, captions.texts).T
    )
    assert results[0]["retrieval"]["mR"] == pytest.approx(
        metrics.retrieval_metrics(sim, captions.text_owner)["mR"]
    )

    # Every failed query is listed, worst first, with what came back instead.
    failures = json.loads((out / "failures" / f"{slug(str(tiny_model_dir))}.json").read_text())
    n_wrong = int(np.sum(metrics.best_target_rank(scores, target) > 0))
    assert len(failures["classification"]) == n_wrong
    ranks = [f["rank_of_label"] for f in failures["classification"]]
    assert ranks == sorted(ranks, reverse=True) and all(
        len(f["predicted"]) == 5 for f in failures["classification"]
    )
    t2i, _ = metrics.retrieval_ranks(sim, captions.text_owner)
    assert len(failures["text_to_image"]) == int(np.sum(t2i > 0))


def test_without_data_it_runs_the_generated_sample_and_says_so(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("CLIP_MODEL", str(tiny_model_dir))
    out = tmp_path / "out"
    assert main(["--out", str(out), "--sample-dir", str(tmp_path / "sample"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "GENERATED sample" in printed and "dataset_rsicd.json" in printed
    result = json.loads((out / "results.json").read_text())["models"][0]
    assert result["classification"]["images"] == 24 and result["retrieval"]["captions"] == 120


def test_bad_model_or_option_is_a_one_line_error(tmp_path: Path, rsicd_json: Path, capsys) -> None:
    assert (
        main(["--model", str(tmp_path / "nope"), "--retrieval", str(rsicd_json), "--out", str(tmp_path)]) == 2
    )
    assert "cannot load CLIP model" in capsys.readouterr().err
    assert main(["--batch-size", "-1"]) == 2
    assert "--batch-size: Input should be greater than or equal to 0" in capsys.readouterr().err
