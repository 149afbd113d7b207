"""Image and caption augmentation for fine-tuning.

Images: random resized crop, colour jitter (brightness, contrast, saturation, hue) and
horizontal and vertical flips (aerial images have no "up"), written with PIL and numpy since
torchvision has no CPU build we may install. Every random draw comes from the
``random.Random`` passed in, so a sample's augmentation depends only on (seed, epoch, index):
the same after a resume and in any DataLoader worker.

Captions: any text -> text callable (``CaptionHook``), applied with a probability; back-translation
is one (`BackTranslation`), a paraphraser, a synonym swapper or a lookup table are others.
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

CaptionHook = Callable[[str], str]


@dataclass
class ImageAugment:
    """Random resized crop to ``size`` px, colour jitter and flips."""

    size: int = 224
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05
    hflip: float = 0.5
    vflip: float = 0.5

    def __call__(self, image: Image.Image, rng: random.Random) -> Image.Image:
        image = image.convert("RGB")
        image = self.random_resized_crop(image, rng)
        image = self.colour_jitter(image, rng)
        if rng.random() < self.hflip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < self.vflip:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        return image

    def random_resized_crop(self, image: Image.Image, rng: random.Random) -> Image.Image:
        """A crop of random area fraction and aspect ratio, resized to ``size`` (as torchvision's)."""
        w, h = image.size
        area = w * h
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
                break
        else:  # fall back to the largest centred crop
            cw = ch = min(w, h)
            x, y = (w - cw) // 2, (h - ch) // 2
        return image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=(x, y, x + cw, y + ch))

    def colour_jitter(self, image: Image.Image, rng: random.Random) -> Image.Image:
        """Brightness, contrast, saturation and hue, each by a random factor, in random order."""
        ops = []
        for amount, enhancer in (
            (self.brightness, ImageEnhance.Brightness),
            (self.contrast, ImageEnhance.Contrast),
            (self.saturation, ImageEnhance.Color),
        ):
            if amount > 0:
                factor = rng.uniform(max(0.0, 1 - amount), 1 + amount)
                ops.append(lambda im, e=enhancer, f=factor: e(im).enhance(f))
        if self.hue > 0:
            shift = rng.uniform(-self.hue, self.hue)
            ops.append(lambda im, s=shift: shift_hue(im, s))
        rng.shuffle(ops)
        for op in ops:
            image = op(image)
        return image


def shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by ``shift`` of a full turn (-0.5..0.5)."""
    hsv = np.array(image.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(shift * 255)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def load_hook(spec: str) -> CaptionHook:
    """The caption hook named ``module:attribute`` (a text -> text callable), or
    ``module:factory()`` to call a zero-argument factory that returns one."""
    module_name, _, attr = spec.partition(":")
    call = attr.endswith("()")
    attr = attr.removesuffix("()")
    if not module_name or not attr:
        raise ValueError(f"caption hook {spec!r} must be written module:attribute or module:factory()")
    obj = getattr(importlib.import_module(module_name), attr)
    hook = obj() if call else obj
    if not callable(hook):
        raise ValueError(f"caption hook {spec!r} is not a text -> text callable")
    return hook


class BackTranslation:
    """Caption augmentation by translating to a pivot language and back (e.g. with MarianMT).

    ``forward`` and ``backward`` are Hugging Face translation models (ids or local folders, e.g.
    ``Helsinki-NLP/opus-mt-en-fr`` and ``Helsinki-NLP/opus-mt-fr-en`` saved locally: nothing is
    downloaded here). Translations are cached, since each caption recurs every epoch.
    """

    def __init__(self, forward: str, backward: str, device: str = "cpu", max_length: int = 77):
        self.forward, self.backward, self.device, self.max_length = forward, backward, device, max_length
        self._models: dict[str, tuple] = {}
        self._cache: dict[str, str] = {}

    def _translate(self, name: str, text: str) -> str:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        if name not in self._models:
            self._models[name] = (
                AutoTokenizer.from_pretrained(name),
                AutoModelForSeq2SeqLM.from_pretrained(name).to(self.device).eval(),
            )
        tokenizer, model = self._models[name]
        batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=self.max_length)
        out = model.generate(**batch.to(self.device), max_new_tokens=self.max_length)
        return tokenizer.decode(out[0], skip_special_tokens=True)

    def __call__(self, caption: str) -> str:
        if caption not in self._cache:
            self._cache[caption] = self._translate(self.backward, self._translate(self.forward, caption))
        return self._cache[caption]
