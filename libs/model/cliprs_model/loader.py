"""Load a CLIP by Hugging Face id or local folder, with a loud offline fallback.

Backends are the extension point for other model families (open_clip, a remote-sensing model
with its own code): a backend is a function ``(name_or_path, device) -> ClipEncoder``. Register
one under a name with ``@register_backend("name")`` and select it with ``CLIP_BACKEND=name``, or
point ``CLIP_BACKEND`` at ``package.module:function`` in any installed package; callers keep
calling `load_encoder` and never change. The encoder needs a model with CLIP's
``get_image_features(pixel_values=...)`` / ``get_text_features(**tokens)``, a tokenizer and an
image processor that `cliprs_model.preprocess.ImageTransform` reads (a `transformers` one).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

import torch
from transformers import AutoTokenizer, CLIPModel
from transformers.models.clip import CLIPImageProcessorPil

from cliprs.errors import Unavailable
from cliprs_model.encoder import ClipEncoder, ModelInfo, available_cpus
from cliprs_model.settings import ModelSettings
from cliprs_model.tiny import build_tiny_clip

log = logging.getLogger("cliprs_model")

Backend = Callable[[str, torch.device], ClipEncoder]
BACKENDS: dict[str, Backend] = {}
DEFAULT_BACKEND = "hf-clip"


def register_backend(name: str) -> Callable[[Backend], Backend]:
    """Decorator: make a loader available as ``CLIP_BACKEND=name``."""

    def add(fn: Backend) -> Backend:
        BACKENDS[name] = fn
        return fn

    return add


def get_backend(name: str) -> Backend:
    """A registered backend, or ``module:function`` imported on demand."""
    if name in BACKENDS:
        return BACKENDS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise Unavailable(f"cannot import CLIP backend {name!r}: {exc}") from exc
    raise Unavailable(
        f"unknown CLIP backend {name!r}; set CLIP_BACKEND to one of {sorted(BACKENDS)} "
        "or to 'package.module:function'"
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Unavailable(f"CLIP_DEVICE={name} but no CUDA device is available; use auto or cpu")
    return device


@register_backend(DEFAULT_BACKEND)
def load_hf_clip(name_or_path: str, device: torch.device) -> ClipEncoder:
    """A `transformers` CLIP (e.g. flax-community/clip-rsicd-v2 or a local folder)."""
    # sdpa: attention through torch's fused scaled-dot-product kernels (flash / memory-efficient
    # on CUDA), instead of materialising the attention matrix.
    model = CLIPModel.from_pretrained(name_or_path, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    processor = CLIPImageProcessorPil.from_pretrained(name_or_path)
    info = ModelInfo(
        requested=name_or_path,
        loaded=name_or_path,
        device=str(device),
        dim=int(model.config.projection_dim),
    )
    return ClipEncoder(model, tokenizer, processor, device, info)


def load_encoder(settings: ModelSettings | None = None, backend: str | None = None) -> ClipEncoder:
    """The configured model; on failure the generated fallback if allowed, else `Unavailable`."""
    settings = settings or ModelSettings()
    device = resolve_device(settings.device)
    # One intra-op thread per CPU we may use (not per hardware thread of the host): several
    # workers on one machine should split the CPUs with CLIP_TORCH_THREADS.
    torch.set_num_threads(settings.torch_threads or available_cpus())
    load = get_backend(backend or settings.backend)
    try:
        encoder = load(settings.model, device)
    except Exception as exc:
        first_line = next(iter(str(exc).splitlines()), "")  # some exceptions have no message
        reason = f"{type(exc).__name__}: {first_line[:300]}"
        if not settings.fallback:
            raise Unavailable(f"cannot load CLIP model {settings.model!r}: {reason}") from exc
        log.warning(
            "!!! CLIP model %r could not be loaded (%s). FALLING BACK to a small generated CLIP "
            "with random weights: search results are NOT meaningful. Put the model in the "
            "Hugging Face cache or point CLIP_MODEL at a local folder.",
            settings.model,
            reason,
        )
        try:
            # The fallback is a transformers checkpoint, whatever backend was asked for.
            tiny_dir = build_tiny_clip(settings.fallback_dir, vocab_cache=settings.vocab)
            encoder = load_hf_clip(str(tiny_dir), device)
        except Exception as fallback_exc:
            raise Unavailable(
                f"cannot load CLIP model {settings.model!r}: {reason}; the fallback failed too: "
                f"{type(fallback_exc).__name__}: {fallback_exc}"
            ) from fallback_exc
        encoder.info.requested = settings.model
        encoder.info.fallback = True
        encoder.info.reason = reason
    encoder.configure(
        batch_size=settings.batch_size,
        precision=settings.precision,
        compile=settings.compile,
    )
    log.info(
        "CLIP model ready: %s (batch %d, precision %s, %d torch threads)",
        encoder.info.as_dict(),
        encoder.batch_size,
        encoder.precision or "fp32",
        torch.get_num_threads(),
    )
    return encoder
