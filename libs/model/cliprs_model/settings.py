"""Which CLIP to load and how to run it (env prefix ``CLIP_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelSettings(BaseSettings):
    """Which CLIP to load (env prefix ``CLIP_``: ``CLIP_MODEL``, ``CLIP_DEVICE``...)."""

    model_config = SettingsConfigDict(env_prefix="CLIP_", extra="ignore")

    model: str = "flax-community/clip-rsicd-v2"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # When the named model cannot be loaded, fall back to a small generated CLIP instead of
    # failing. `make up` turns this on so the platform runs offline; production leaves it off.
    fallback: bool = False
    fallback_dir: Path = Path(".cache/models/fallback-clip")
    # The real CLIP vocabulary the fallback is built with: an open_clip_torch wheel, its
    # bpe_simple_vocab_16e6.txt.gz, or a folder holding the wheel. Unset: a wheels/ folder
    # beside fallback_dir, filled with `pip download` when empty (needs the network once).
    vocab: Path | None = None
    # Which loader builds the encoder: a name in cliprs_model.loader.BACKENDS ("hf-clip") or
    # "package.module:function" for a backend that lives in another package.
    backend: str = "hf-clip"
    # Images per forward pass; 0 = auto (sized to the free GPU memory on CUDA, 64 on CPU).
    batch_size: int = 0
    # Compile the image tower with torch.compile (CUDA: with graph capture). Off by default: the
    # first batch then waits for the compiler (a minute or more).
    compile: bool = False
    # auto = fp16 weights on CUDA, fp32 on CPU; fp32 | fp16 | bf16 force one.
    precision: str = "auto"
    # torch's intra-op threads (the device preprocessing and the model, on a CPU host).
    # 0 = auto (every CPU this process may use); with N workers on one host, give each 1/N.
    torch_threads: int = 0
