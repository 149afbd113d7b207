"""Evaluation and training data read from local folders; nothing is downloaded.

Layouts (see the README's "Evaluation and fine-tuning" section):

- **Scene classification, ImageFolder**: ``root/{category}/*.{jpg,png,tif}``; the folder name is
  the label and must be one of the categories scored.
- **Scene classification, multilabel JSON**: ``{"images": [{"filename": "a.jpg",
  "labels": ["beach", "river"], "split": "test"}]}`` (``split`` optional), images relative to
  the images folder.
- **Captioned images, RSICD / UCM-captions / Sydney-captions JSON**: ``{"images": [{"filename":
  "airport_1.jpg", "split": "train|val|test", "sentences": [{"raw": "..."}, ...]}]}``. Used for
  retrieval and fine-tuning; when it is given as a classification set, each image's label is
  its file-name prefix (``airport_1.jpg`` -> ``airport``), as RSICD names its images.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from cliprs.errors import InvalidInput

PROMPT = "An aerial photograph of {category}"

# The 30 RSICD scene categories of the source study, in its order.
RSICD_CATEGORIES: tuple[str, ...] = (
    "stadium",
    "railwaystation",
    "mediumresidential",
    "sparseresidential",
    "viaduct",
    "center",
    "airport",
    "playground",
    "church",
    "square",
    "beach",
    "school",
    "mountain",
    "bareland",
    "resort",
    "baseballfield",
    "denseresidential",
    "river",
    "forest",
    "desert",
    "bridge",
    "storagetanks",
    "port",
    "commercial",
    "parking",
    "industrial",
    "meadow",
    "park",
    "pond",
    "farmland",
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


@dataclass
class ClassificationSet:
    """Images with one or more category labels each (indices into ``categories``)."""

    categories: list[str]
    paths: list[Path]
    labels: list[list[int]]
    name: str = "classification"

    @property
    def multilabel(self) -> bool:
        return any(len(ls) > 1 for ls in self.labels)


@dataclass
class CaptionedImage:
    path: Path
    captions: list[str]
    split: str = "test"


@dataclass
class CaptionSet:
    """Images with up to five captions each (one split of an RSICD-style JSON)."""

    items: list[CaptionedImage] = field(default_factory=list)
    name: str = "retrieval"

    @property
    def texts(self) -> list[str]:
        return [c for it in self.items for c in it.captions]

    @property
    def text_owner(self) -> list[int]:
        """For each caption in ``texts``, the index of its image."""
        return [i for i, it in enumerate(self.items) for _ in it.captions]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InvalidInput(f"dataset file {path} does not exist; check the path") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"dataset file {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InvalidInput(
            f'{path} must hold {{"images": [{{"filename": ..., ...}}]}} (the RSICD dataset_rsicd.json layout)'
        )
    return data


def default_images_dir(json_path: Path) -> Path:
    """``images/`` beside the JSON when it exists (the layout we document), else the JSON's folder."""
    beside = Path(json_path).parent / "images"
    return beside if beside.is_dir() else Path(json_path).parent


def _check_files(paths: list[Path], images_dir: Path, flag: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p.name) for p in missing[:3])
        raise InvalidInput(
            f"{len(missing)} of {len(paths)} images are missing from {images_dir} (e.g. {shown}); "
            f"put the images there or pass {flag} with the folder that holds them"
        )


def _in_split(entry: dict, split: str) -> bool:
    return split == "all" or entry.get("split", split) == split


def load_captions(
    json_path: Path, images_dir: Path | None = None, split: str = "test", max_captions: int = 5
) -> CaptionSet:
    """One split (``train``, ``val``, ``test`` or ``all``) of an RSICD-style captions JSON."""
    data = _read_json(json_path)
    images_dir = Path(images_dir) if images_dir else default_images_dir(json_path)
    items = []
    for entry in data["images"]:
        if not _in_split(entry, split):
            continue
        captions = [s["raw"].strip().rstrip(" .").strip() for s in entry.get("sentences", []) if s.get("raw")]
        captions = [c for c in captions if c][:max_captions]
        if not captions:
            continue
        items.append(CaptionedImage(images_dir / entry["filename"], captions, entry.get("split", split)))
    if not items:
        splits = sorted({str(e.get("split")) for e in data["images"]})
        raise InvalidInput(f"no captioned images in split {split!r} of {json_path}; its splits are {splits}")
    _check_files([it.path for it in items], images_dir, "--images-dir")
    return CaptionSet(items, name=Path(json_path).stem)


def _category_index(categories: list[str], label: str, where: str) -> int:
    try:
        return categories.index(label)
    except ValueError:
        raise InvalidInput(
            f"label {label!r} ({where}) is not among the {len(categories)} categories scored; "
            "rename it to one of them or pass --categories with your own list"
        ) from None


def load_image_folder(root: Path, categories: list[str]) -> ClassificationSet:
    """ImageFolder layout: ``root/{category}/*.jpg``."""
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            continue
        idx = _category_index(categories, folder.name, f"folder {folder}")
        paths += files
        labels += [[idx]] * len(files)
    if not paths:
        raise InvalidInput(f"no images found under {root}; expected {root}/{{category}}/*.jpg")
    return ClassificationSet(list(categories), paths, labels, name=root.name)


_PREFIX = re.compile(r"^([a-zA-Z]+)")


def load_labelled_json(
    json_path: Path, categories: list[str], images_dir: Path | None = None, split: str = "test"
) -> ClassificationSet:
    """Multilabel JSON (``labels`` per image), or an RSICD JSON labelled by file-name prefix."""
    data = _read_json(json_path)
    images_dir = Path(images_dir) if images_dir else default_images_dir(json_path)
    paths, labels = [], []
    for entry in data["images"]:
        if not _in_split(entry, split):
            continue
        if "labels" in entry:
            names = list(entry["labels"])
        else:
            match = _PREFIX.match(Path(entry["filename"]).stem)
            if not match or match.group(1).lower() not in categories:
                continue  # RSICD also holds images named by number only: they carry no category
            names = [match.group(1).lower()]
        if not names:
            continue
        paths.append(images_dir / entry["filename"])
        labels.append(sorted({_category_index(categories, n, entry["filename"]) for n in names}))
    if not paths:
        raise InvalidInput(
            f'no labelled images in split {split!r} of {json_path}: give each image a "labels" list '
            "or name files {category}_N.jpg"
        )
    _check_files(paths, images_dir, "--images-dir")
    return ClassificationSet(list(categories), paths, labels, name=Path(json_path).stem)


def load_classification(
    path: Path, categories: list[str] | None = None, images_dir: Path | None = None, split: str = "test"
) -> ClassificationSet:
    """A classification set from a folder (ImageFolder) or a JSON file (see the module doc)."""
    path = Path(path)
    categories = list(categories or RSICD_CATEGORIES)
    if not path.exists():
        raise InvalidInput(f"classification set {path} does not exist; check the path")
    if path.is_dir():
        return load_image_folder(path, categories)
    if path.suffix.lower() == ".json":
        return load_labelled_json(path, categories, images_dir, split)
    raise InvalidInput(f"{path} is neither a folder of category folders nor a .json file")
