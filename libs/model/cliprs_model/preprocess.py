"""Fast, batched image preprocessing that reproduces a CLIP image processor's output.

`transformers`' PIL processor converts, resizes, crops, rescales and normalises one image at a
time in NumPy float64. Here only what must be done per image (RGB conversion, the bicubic resize
and the centre crop, on uint8 pixels with Pillow, which releases the GIL so threads use every
core) runs per image, in a thread pool; the arithmetic (rescale, mean, std) runs once on a
stacked uint8 batch, on the model's device (a quarter of the bytes cross to a GPU). The result
equals the processor's to float32 rounding; a test checks it for ViT-B/32's configuration.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

T = TypeVar("T")
R = TypeVar("R")


def _field(size: Any, key: str) -> Any:
    """A key of a processor size (a `SizeDict` in transformers 5, a dict before)."""
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


@dataclass(frozen=True)
class ImageTransform:
    """A CLIP-style image processor's steps: RGB, resize, centre crop, rescale, normalise."""

    shortest_edge: int | None  # resize so the shorter side has this length (aspect kept)...
    resize_to: tuple[int, int] | None  # ...or to exactly (height, width)
    crop: tuple[int, int] | None  # centre crop (height, width), zero padded if larger
    resample: int  # a PIL resampling filter (3 = bicubic for CLIP)
    rescale: float | None  # e.g. 1/255
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

    @classmethod
    def from_processor(cls, processor: Any) -> ImageTransform:
        """Read the steps from a `transformers` image processor; refuse what they cannot express."""
        size = processor.size if getattr(processor, "do_resize", True) else None
        unsupported = [k for k in ("longest_edge", "max_height", "max_width") if _field(size, k)]
        if getattr(processor, "do_pad", None):
            unsupported.append("do_pad")
        if unsupported:
            raise ValueError(
                f"{type(processor).__name__} uses {unsupported}, which cliprs_model.preprocess does "
                "not implement; add it there (and to its equality test)"
            )
        shortest = _field(size, "shortest_edge")
        height, width = _field(size, "height"), _field(size, "width")
        crop_size = processor.crop_size if getattr(processor, "do_center_crop", False) else None
        crop = (int(_field(crop_size, "height")), int(_field(crop_size, "width"))) if crop_size else None
        resize_to = (int(height), int(width)) if height and width and not shortest else None
        if crop is None and resize_to is None:
            raise ValueError("the image processor yields images of varying size; batches need one size")
        normalise = getattr(processor, "do_normalize", True)
        return cls(
            shortest_edge=int(shortest) if shortest else None,
            resize_to=resize_to,
            crop=crop,
            resample=int(getattr(processor, "resample", Image.Resampling.BICUBIC)),
            rescale=float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else None,
            mean=tuple(float(m) for m in processor.image_mean) if normalise else None,
            std=tuple(float(s) for s in processor.image_std) if normalise else None,
        )

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of every prepared image."""
        return self.crop or self.resize_to  # type: ignore[return-value]

    def _resize_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing, computed exactly as transformers does."""
        if self.resize_to:
            return self.resize_to[1], self.resize_to[0]
        if not self.shortest_edge:
            return width, height
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long / short)
        return (self.shortest_edge, new_long) if width <= height else (new_long, self.shortest_edge)

    @staticmethod
    def to_rgb(image: Image.Image) -> Image.Image:
        """RGB as the processor makes it: transparency composited onto white."""
        if image.mode == "RGB":
            return image
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")

    def resize_crop(self, image: Image.Image) -> np.ndarray:
        """One image resized and centre-cropped: (height, width, 3) uint8."""
        image = self.to_rgb(image)
        size = self._resize_size(*image.size)
        if size != image.size:
            image = image.resize(size, resample=self.resample)
        if self.crop:
            ch, cw = self.crop
            # Same offsets as transformers' center_crop; PIL pads with zeros outside the image.
            top, left = (image.height - ch) // 2, (image.width - cw) // 2
            if (top, left, ch, cw) != (0, 0, image.height, image.width):
                image = image.crop((left, top, left + cw, top + ch))
        return np.asarray(image, dtype=np.uint8)

    def prepare(self, images: Sequence[Image.Image], executor: Executor | None = None) -> np.ndarray:
        """Images resized and cropped, stacked: (n, height, width, 3) uint8."""
        h, w = self.output_size
        out = np.empty((len(images), h, w, 3), dtype=np.uint8)
        arrays = executor.map(self.resize_crop, images) if executor else map(self.resize_crop, images)
        for i, arr in enumerate(arrays):
            out[i] = arr
        return out

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """(n, H, W, 3) uint8 on any device -> (n, 3, H, W) float32 model input, on that device.

        The permuted view keeps the NHWC memory (channels-last), which convolutions like.
        """
        x = batch.permute(0, 3, 1, 2).float()
        # (x * rescale - mean) / std as one multiply and one add per element.
        scale = torch.full((3,), self.rescale or 1.0, dtype=torch.float32)
        shift = torch.zeros(3, dtype=torch.float32)
        if self.mean is not None and self.std is not None:
            std = torch.tensor(self.std, dtype=torch.float32)
            scale = scale / std
            shift = -torch.tensor(self.mean, dtype=torch.float32) / std
        scale, shift = scale.to(x.device).view(1, 3, 1, 1), shift.to(x.device).view(1, 3, 1, 1)
        return x.mul_(scale).add_(shift)


def prefetch_map(executor: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """``fn`` over ``items`` in the executor's threads, results in input order, with at most
    ``ahead`` calls in flight: the consumer never waits for work that could have run already,
    and memory stays bounded however many items there are."""
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(executor.submit(fn, item))
            if len(pending) >= max(1, ahead):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:  # the consumer stopped early: drop what has not started
            f.cancel()
