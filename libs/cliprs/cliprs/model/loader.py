"""Load a CLIP by Hugging Face id or local folder, with a loud offline fallback.

Backends are looked up in a registry so another family (open_clip, a remote-sensing model with
its own code) can be added without touching callers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from transformers import AutoTokenizer, CLIPModel
from transformers.models.clip import CLIPImageProcessorPil

from cliprs.errors import Unavailable
from cliprs.model.encoder import ClipEncoder, ModelInfo
from cliprs.model.tiny import build_tiny_clip
from cliprs.settings import ModelSettings

log = logging.getLogger("cliprs.model")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_hf_clip(name_or_path: str, device: torch.device) -> ClipEncoder:
    """A `transformers` CLIP (e.g. flax-community/clip-rsicd-v2 or a local folder)."""
    model = CLIPModel.from_pretrained(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    processor = CLIPImageProcessorPil.from_pretrained(name_or_path)
    info = ModelInfo(
        requested=name_or_path,
        loaded=name_or_path,
        device=str(device),
        dim=int(model.config.projection_dim),
    )
    return ClipEncoder(model, tokenizer, processor, device, info)


BACKENDS: dict[str, Callable[[str, torch.device], ClipEncoder]] = {"hf-clip": load_hf_clip}


def load_encoder(settings: ModelSettings | None = None, backend: str = "hf-clip") -> ClipEncoder:
    """The configured model; on failure the generated fallback if allowed, else `Unavailable`."""
    settings = settings or ModelSettings()
    device = resolve_device(settings.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    load = BACKENDS[backend]
    try:
        encoder = load(settings.model, device)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        if not settings.fallback:
            raise Unavailable(f"cannot load CLIP model {settings.model!r}: {reason}") from exc
        log.warning(
            "!!! CLIP model %r could not be loaded (%s). FALLING BACK to a small generated CLIP "
            "with random weights: search results are NOT meaningful. Put the model in the "
            "Hugging Face cache or point CLIP_MODEL at a local folder.",
            settings.model,
            reason,
        )
        encoder = load(str(build_tiny_clip(settings.fallback_dir)), device)
        encoder.info.requested = settings.model
        encoder.info.fallback = True
        encoder.info.reason = reason
    log.info("CLIP model ready: %s", encoder.info.as_dict())
    return encoder
