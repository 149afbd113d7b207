"""The versioned index manifest: which shard files make up index version N.

The indexer writes `manifests/v{N:08d}.json` and then the `CURRENT` pointer, each atomically;
searchers read `CURRENT`, then the manifest it names, then the shards.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cliprs.fsutil import atomic_write_bytes


@dataclass
class Shard:
    area_id: int
    file: str  # relative to the index dir
    count: int
    kind: str  # "flat" (exact inner product) or "ivfpq"


@dataclass
class Manifest:
    version: int
    model_id: str
    dim: int
    shards: list[Shard] = field(default_factory=list)

    @property
    def vector_count(self) -> int:
        return sum(s.count for s in self.shards)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        data["shards"] = [Shard(**s) for s in data["shards"]]
        return cls(**data)


def manifest_path(index_dir: Path, version: int) -> Path:
    return Path(index_dir) / "manifests" / f"v{version:08d}.json"


def publish(index_dir: Path, manifest: Manifest) -> Path:
    """Write the manifest, then point CURRENT at it (both atomic)."""
    path = manifest_path(index_dir, manifest.version)
    atomic_write_bytes(path, manifest.to_json())
    atomic_write_bytes(Path(index_dir) / "CURRENT", str(manifest.version).encode())
    return path


def current_version(index_dir: Path) -> int | None:
    pointer = Path(index_dir) / "CURRENT"
    if not pointer.exists():
        return None
    return int(pointer.read_text().strip())


def load_manifest(index_dir: Path, version: int | None = None) -> Manifest | None:
    """The manifest of ``version`` (default: CURRENT), or None when nothing is published."""
    version = current_version(index_dir) if version is None else version
    if version is None:
        return None
    return Manifest.from_json(manifest_path(index_dir, version).read_bytes())
