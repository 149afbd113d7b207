"""Batched image preprocessing that reproduces a CLIP image processor's output, on the model's device.

`transformers`' processor converts, resizes (Pillow, antialiased bicubic), crops, rescales and
normalises one image at a time on the CPU: about 1.1 ms of a core per window, most of it the
resize. Here whole decoded tiles go to the model's device once as uint8, and the windows are
resized there with torch's antialiased bicubic (Pillow's filter), batched per window size: when
the windows of one size sit on whole pixels of the resized tile (always, for a stride of a
quarter window on 256 or 512 px tiles), the tile is resized once and the windows are cut from the
result. Rescale and normalisation are one multiply-add with constants kept on the device.
The same code runs on the CPU and on CUDA, for tiles (`windows_input`) and for uploaded query
images (`image_input`); tests hold the vectors to the processor's (cosine >= 0.999).

The Pillow path (`resize_crop`, `prepare`) stays for fine-tuning's per-image augmentation and as
the reference the tests and the benchmark compare with.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


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
    _constants: dict = field(default_factory=dict, init=False, compare=False, repr=False)

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

    # -- on the model's device (what the embedder and the online endpoints run) ----------------

    def _affine(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(x * rescale - mean) / std as one scale and one shift per channel, on ``device``.

        Cached per device: copying the constants on every batch was a blocking transfer."""
        cached = self._constants.get(device)
        if cached is None:
            scale = torch.full((3,), self.rescale or 1.0, dtype=torch.float32)
            shift = torch.zeros(3, dtype=torch.float32)
            if self.mean is not None and self.std is not None:
                std = torch.tensor(self.std, dtype=torch.float32)
                scale = scale / std
                shift = -torch.tensor(self.mean, dtype=torch.float32) / std
            cached = (scale.view(1, 3, 1, 1).to(device), shift.view(1, 3, 1, 1).to(device))
            self._constants[device] = cached
        return cached

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """(n, H, W, 3) uint8 on any device -> (n, 3, H, W) float32 model input, on that device.

        The permuted view keeps the NHWC memory (channels-last), which convolutions like.
        """
        return self.normalise_planar(batch.permute(0, 3, 1, 2).float())

    def normalise_planar(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) float pixel values in 0..255 -> model input (in place)."""
        scale, shift = self._affine(x.device)
        return x.mul_(scale).add_(shift)

    def _resize(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Antialiased bicubic resize of (n, 3, h, w) float pixels, rounded to 0..255 as the
        processor's uint8 resize is (Pillow's filter: a = -0.5, support widened when shrinking)."""
        if (height, width) == tuple(x.shape[-2:]):
            return x
        mode = "bicubic" if self.resample == Image.Resampling.BICUBIC else "bilinear"
        out = F.interpolate(x, size=(height, width), mode=mode, antialias=True, align_corners=False)
        return out.clamp_(0, 255).round_()

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        """Centre crop with transformers' offsets, zero padded where the image is smaller."""
        if not self.crop:
            return x
        ch, cw = self.crop
        h, w = x.shape[-2:]
        top, left = (h - ch) // 2, (w - cw) // 2
        if (top, left, ch, cw) == (0, 0, h, w):
            return x
        # F.pad with negative amounts crops, positive ones pad with zeros: both in one call.
        return F.pad(x, (-left, left + cw - w, -top, top + ch - h))

    def image_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """One image, (H, W, 3) uint8 on the model's device -> (1, 3, h, w) model input."""
        x = pixels.permute(2, 0, 1).unsqueeze(0).float()
        width, height = self._resize_size(x.shape[-1], x.shape[-2])
        return self.normalise_planar(self._crop(self._resize(x, height, width)))

    def windows_input(self, tile: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
        """The model input of square windows of one tile: (n, 3, h, w), rows in ``boxes`` order.

        ``tile`` is (H, W, 3) uint8 on the model's device, ``boxes`` (n, 4) x0, y0, x1, y1.
        Windows of one size are resized together: when the resize factor puts every window on
        whole pixels of the resized tile (a stride of a quarter window on 256/512 px tiles
        does), the tile is resized once and the windows are cut from it, which does the work
        of all the overlapping resizes at once; otherwise each window is cut, then resized.
        Both equal the processor on each window except at window borders, where the one-pass
        resize sees the real neighbouring pixels instead of Pillow's clamped edge.
        """
        x = tile.permute(2, 0, 1).unsqueeze(0).float()
        out_h, out_w = self.output_size
        out = torch.empty((len(boxes), 3, out_h, out_w), dtype=torch.float32, device=tile.device)
        sides = boxes[:, 2] - boxes[:, 0]
        if len(boxes) and not np.array_equal(sides, boxes[:, 3] - boxes[:, 1]):
            raise ValueError("windows must be square")
        for side in np.unique(sides):
            self._cut(x, boxes, np.flatnonzero(sides == side), int(side), out)
        return out

    def _cut(
        self, tile: torch.Tensor, boxes: np.ndarray, rows: np.ndarray, side: int, out: torch.Tensor
    ) -> None:
        """Write the model input of the windows ``rows`` (all of one side) into ``out``."""
        width, height = self._resize_size(side, side)
        factor = width / side
        h, w = self.output_size
        top, left = (height - h) // 2, (width - w) // 2
        tile_h, tile_w = tile.shape[-2:]
        scaled = boxes[rows, :2] * factor
        if not (
            width == height
            and top >= 0
            and left >= 0
            and _whole(tile_w * factor)
            and _whole(tile_h * factor)
            and _whole(scaled)
        ):
            crops = torch.cat([tile[..., y0:y1, x0:x1] for x0, y0, x1, y1 in boxes[rows].tolist()])
            out[torch.from_numpy(rows).to(out.device)] = self.normalise_planar(
                self._crop(self._resize(crops, height, width))
            )
            return
        # Normalising is per channel, so it commutes with cutting: do it once on the resized
        # tile (a few times fewer pixels than its overlapping windows), then copy windows out.
        resized = self.normalise_planar(self._resize(tile, round(tile_h * factor), round(tile_w * factor)))[0]
        origins = np.rint(scaled).astype(np.int64) + np.array([left, top])
        grid = _grid(origins, rows)
        if grid is not None:  # a row-major grid of windows: one strided copy for all of them
            (x0, y0, step_x, step_y, nx, ny), first = grid, int(rows[0])
            view = resized[:, y0:, x0:].unfold(1, h, step_y).unfold(2, w, step_x)[:, :ny, :nx]
            out[first : first + ny * nx].view(ny, nx, 3, h, w).copy_(view.permute(1, 2, 0, 3, 4))
            return
        for row, (x, y) in zip(rows.tolist(), origins.tolist(), strict=True):
            out[row].copy_(resized[:, y : y + h, x : x + w])


def _grid(origins: np.ndarray, rows: np.ndarray) -> tuple[int, int, int, int, int, int] | None:
    """(x0, y0, step x, step y, columns, rows) when the windows, in order, are consecutive rows
    of a row-major grid with even steps (how `plan_windows` lays them out); else None."""
    xs, ys = np.unique(origins[:, 0]), np.unique(origins[:, 1])
    if len(origins) != len(xs) * len(ys) or not np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        return None
    step_x = int(xs[1] - xs[0]) if len(xs) > 1 else 1
    step_y = int(ys[1] - ys[0]) if len(ys) > 1 else 1
    if np.any(np.diff(xs) != step_x) or np.any(np.diff(ys) != step_y):
        return None
    expected = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)  # row-major: x fastest
    if not np.array_equal(origins, expected):
        return None
    return int(xs[0]), int(ys[0]), step_x, step_y, len(xs), len(ys)


def _whole(values: float | np.ndarray) -> bool:
    return bool(np.all(np.abs(np.asarray(values) - np.rint(values)) < 1e-9))


# Fixed pseudo-random odd multipliers, one per input element (made on first use per size and
# device): the same on every worker and every run, so fingerprints compare across both.
_FINGERPRINT_WEIGHTS: dict[tuple[int, torch.device], torch.Tensor] = {}
_FINGERPRINT_ROWS = 64  # rows hashed at once: bounds the int64 temporary on a large batch


def input_fingerprint(inputs: torch.Tensor) -> torch.Tensor:
    """A 64-bit hash per model input ((n, ...) float32 on any device -> (n,) int64, same device).

    The bits of every element times a fixed odd multiplier, summed with int64 wrap-around:
    integer addition is exact and order-free, so the hash is the same on CPU and CUDA and in any
    batch. Equal inputs give equal fingerprints (and so identical vectors); different inputs
    collide with probability about 2^-64."""
    flat = inputs.reshape(len(inputs), -1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    size = flat.shape[1]
    key = (size, flat.device)
    weights = _FINGERPRINT_WEIGHTS.get(key)
    if weights is None:
        generator = torch.Generator().manual_seed(0x5EED)
        weights = torch.randint(-(2**62), 2**62, (size,), generator=generator, dtype=torch.int64) * 2 + 1
        weights = _FINGERPRINT_WEIGHTS.setdefault(key, weights.to(flat.device))
    bits = flat.contiguous().view(torch.int32)
    out = torch.empty(len(flat), dtype=torch.int64, device=flat.device)
    for start in range(0, len(flat), _FINGERPRINT_ROWS):
        rows = bits[start : start + _FINGERPRINT_ROWS].to(torch.int64)
        out[start : start + _FINGERPRINT_ROWS] = rows.mul_(weights).sum(dim=1)
    return out
