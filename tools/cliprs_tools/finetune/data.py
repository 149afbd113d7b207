"""Training batches: a seeded plan of which images each batch holds, and the samples themselves.

Nothing here keeps hidden state between batches: epoch ``e``'s order comes from (seed, e) and a
sample's augmentation and caption choice from (seed, e, index). A resumed run therefore sees
exactly the batches the uninterrupted run would have, whatever the number of workers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cliprs_model import ImageTransform
from cliprs_tools.evaluation.datasets import CaptionedImage
from cliprs_tools.finetune.augment import CaptionHook, ImageAugment


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """Epoch ``epoch``'s batches as lists of (index, epoch); a last batch of one image (which has
    no negatives to contrast with) is dropped."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches[-1]) < 2:
        batches.pop()
    return [[(i, epoch) for i in b] for b in batches]


class CaptionTrainSet(Dataset):
    """(uint8 pixels, caption) for an (index, epoch) key.

    Pixels are resized and cropped by the embedder's own `ImageTransform` and stay uint8 (a
    quarter of the bytes between processes and to the GPU); the trainer normalises them on the
    device with the same transform, as the embedder does.
    """

    def __init__(
        self,
        items: Sequence[CaptionedImage],
        transform: ImageTransform,
        augment: ImageAugment | None = None,
        caption_hook: CaptionHook | None = None,
        caption_hook_p: float = 0.5,
        seed: int = 0,
    ):
        self.items = list(items)
        self.transform = transform
        self.augment = augment
        self.caption_hook = caption_hook
        self.caption_hook_p = caption_hook_p
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, str]:
        index, epoch = key
        # A string seed is hashed deterministically (unlike hash() of a tuple across processes).
        rng = random.Random(f"{self.seed}:{epoch}:{index}")
        item = self.items[index]
        with Image.open(item.path) as im:
            image = im.convert("RGB")
        if self.augment is not None:
            image = self.augment(image, rng)
        pixels = self.transform.resize_crop(image)
        caption = rng.choice(item.captions)
        if self.caption_hook is not None and rng.random() < self.caption_hook_p:
            caption = self.caption_hook(caption)
        return pixels, caption


class Collate:
    """Stacks uint8 pixels and tokenizes captions (in the worker, off the training loop)."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self, batch: list[tuple[np.ndarray, str]]) -> dict[str, torch.Tensor]:
        pixels, captions = zip(*batch, strict=True)
        tokens = self.tokenizer(
            list(captions), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        return {"pixels": torch.from_numpy(np.stack(pixels)), **tokens}


def batch_loader(
    dataset: CaptionTrainSet, batches: list[list[tuple[int, int]]], collate: Collate, num_workers: int = 0
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )
