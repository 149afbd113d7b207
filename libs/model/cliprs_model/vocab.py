"""The real CLIP BPE vocabulary, taken from the `open_clip_torch` wheel on PyPI.

Hugging Face CLIP tokenizers need `vocab.json` and `merges.txt`; OpenAI's original release ships
the same vocabulary as `bpe_simple_vocab_16e6.txt.gz`, which the open_clip wheel carries. We read
that file out of the wheel (never installing open_clip, which would pull a CUDA torch) and write
the two Hugging Face files from it.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

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


def find_bpe_file(cache_dir: Path) -> bytes:
    """Bytes of the gzipped BPE file: from ``CLIPRS_CLIP_VOCAB`` (a .gz or the wheel), a wheel
    already in ``cache_dir``, or a wheel fetched from the package index with ``pip download``."""
    explicit = os.environ.get("CLIPRS_CLIP_VOCAB")
    if explicit:
        return _read_bpe(Path(explicit))
    wheels = sorted(cache_dir.glob("open_clip_torch-*.whl"))
    if not wheels:
        cache_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "-d",
                str(cache_dir),
                OPEN_CLIP_WHEEL,
            ],
            check=True,
        )
        wheels = sorted(cache_dir.glob("open_clip_torch-*.whl"))
    return _read_bpe(wheels[-1])


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
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
