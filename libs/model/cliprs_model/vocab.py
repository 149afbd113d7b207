"""The real CLIP BPE vocabulary, taken from the `open_clip_torch` wheel on PyPI.

Hugging Face CLIP tokenizers need `vocab.json` and `merges.txt`; OpenAI's original release ships
the same vocabulary as `bpe_simple_vocab_16e6.txt.gz`, which the open_clip wheel carries. We read
that file out of the wheel (never installing open_clip, which would pull a CUDA torch) and write
the two Hugging Face files from it. Used by the generated fallback CLIP at run time (``make up``
offline, containers without the model) as much as by the tests.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from cliprs.errors import Unavailable

OPEN_CLIP_WHEEL = "open_clip_torch==3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable unicode table used by CLIP's BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=False))


def find_bpe_file(source: Path) -> bytes:
    """Bytes of the gzipped BPE file. ``source`` is the ``.txt.gz`` itself, an open_clip wheel,
    or a folder holding one; an empty folder gets the wheel with ``pip download`` (network)."""
    source = Path(source)
    if source.is_file():
        return _read_bpe(source)
    wheels = sorted(source.glob("open_clip_torch-*.whl"))
    if not wheels:
        _download_wheel(source)
        wheels = sorted(source.glob("open_clip_torch-*.whl"))
    if not wheels:
        raise Unavailable(f"pip download of {OPEN_CLIP_WHEEL} left no wheel in {source}")
    return _read_bpe(wheels[-1])


def _download_wheel(folder: Path) -> None:
    """Fetch the open_clip wheel (no dependencies, not installed) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), OPEN_CLIP_WHEEL]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()
        raise Unavailable(
            f"cannot fetch the CLIP vocabulary ({OPEN_CLIP_WHEEL}) into {folder}: "
            f"{detail[-1] if detail else type(exc).__name__}. Put the wheel there "
            "(pip download --no-deps) or point CLIP_VOCAB at it"
        ) from exc


def _read_bpe(path: Path) -> bytes:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            return zf.read(BPE_MEMBER)
    return path.read_bytes()


def write_hf_vocab(bpe_gz: bytes, out_dir: Path) -> None:
    """Write `vocab.json` and `merges.txt` for a Hugging Face CLIP tokenizer."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_tokens = list(_bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != VOCAB_SIZE:
        raise ValueError(f"the BPE file gives {len(tokens)} tokens, CLIP has {VOCAB_SIZE}; is it CLIP's?")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
