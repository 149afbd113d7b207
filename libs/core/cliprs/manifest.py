"""The versioned index manifest: which shard files make up index version N, how to search each
shard, which versions the searchers hold, and removing the versions nobody holds any more.

The indexer writes `manifests/v{N:08d}.json` and then the `CURRENT` pointer, each atomically;
searchers read `CURRENT`, then the manifest it names, then the shards. Shard files are immutable
and shared between versions (a version that changes one area reuses every other area's file).

Searchers announce the versions they hold (the live one and the one they are loading) in Redis
under ``{namespace}:searchers:{id}`` with a TTL they keep refreshing, so a crashed searcher stops
holding anything once its key expires. The indexer removes every version that is older than the
newest and held by no live searcher, then every shard file no remaining version refers to.

Reading and searching the shard files is `cliprs_index` (it needs faiss, which only the indexer and
the search-api install).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cliprs.fsutil import atomic_write_bytes

log = logging.getLogger("cliprs.manifest")

_VERSION_FILE = re.compile(r"^v(\d{8})\.json$")


@dataclass
class Shard:
    """One shard: windows of a compact region (tiles in Morton order), at most the shard size.

    Its files are ``{stem}.faiss`` (the FAISS index: exact flat or IVF-PQ codes), ``{stem}.f16``
    (float16 vectors, one row per window, re-ranking and vectors by id read them memory-mapped)
    and ``{stem}.ids.npy`` (the window ids of the rows, ascending), all relative to the index dir.
    """

    stem: str
    count: int
    kind: str  # "flat" (exact inner product) or "ivfpq" (the index's shared IVF-PQ codec)
    envelope: list[float] = field(default_factory=list)  # [west, south, east, north] of its tiles
    zooms: list[int] = field(default_factory=list)
    area_ids: list[int] = field(default_factory=list)  # areas whose tiles it holds
    tiles: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> Shard:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def files(self) -> list[str]:
        """Its files; flat shards have no FAISS file (their exact index is built when loaded)."""
        files = [f"{self.stem}.ids.npy", f"{self.stem}.f16"]
        return [*files, f"{self.stem}.faiss"] if self.kind == "ivfpq" else files


@dataclass
class Codec:
    """The trained IVF-PQ codec every compressed shard shares (one coarse quantiser, one product
    quantiser), with the search parameters tuned for it."""

    file: str  # the trained, empty index, relative to the index dir
    nlist: int
    pq: int
    nprobe: int
    k_factor: int
    trained_on: int  # vectors in the index when it was trained
    recall_at_10: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # Text queries' own tuning (None: tuned before text queries had one; see ShardSet.probe).
    text_nprobe: int | None = None
    text_k_factor: int | None = None
    text_recall_at_10: float | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Codec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Manifest:
    version: int
    model_id: str
    dim: int
    shards: list[Shard] = field(default_factory=list)
    codec: Codec | None = None
    created_at: float = 0.0  # unix time

    @property
    def vector_count(self) -> int:
        return sum(s.count for s in self.shards)

    def files(self) -> set[str]:
        out = {f for s in self.shards for f in s.files()}
        if self.codec is not None:
            out.add(self.codec.file)
        return out

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["shards"] = [Shard.from_dict(s) for s in data.get("shards", [])]
        data["codec"] = Codec.from_dict(data["codec"]) if data.get("codec") else None
        return cls(**data)


def manifest_path(index_dir: Path, version: int) -> Path:
    return Path(index_dir) / "manifests" / f"v{version:08d}.json"


def publish(index_dir: Path, manifest: Manifest) -> Path:
    """Write the manifest, then point CURRENT at it (both atomic)."""
    if not manifest.created_at:
        manifest.created_at = time.time()
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


def list_versions(index_dir: Path) -> list[int]:
    """Every version whose manifest is on disk, oldest first."""
    folder = Path(index_dir) / "manifests"
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _VERSION_FILE.match(p.name)))


# ---------------------------------------------------------------- searcher registry (Redis)


def searcher_key(namespace: str, searcher_id: str) -> str:
    return f"{namespace}:searchers:{searcher_id}"


def register_searcher(client, namespace: str, searcher_id: str, versions: set[int], ttl_s: float) -> None:
    """Say (for ``ttl_s`` seconds) that this searcher holds ``versions``; call again to renew."""
    value = ",".join(str(v) for v in sorted(versions))
    client.set(searcher_key(namespace, searcher_id), value, px=max(1, int(ttl_s * 1000)))


def unregister_searcher(client, namespace: str, searcher_id: str) -> None:
    client.delete(searcher_key(namespace, searcher_id))


def held_versions(client, namespace: str) -> set[int]:
    """Every version some live searcher holds."""
    held: set[int] = set()
    for key in client.scan_iter(match=searcher_key(namespace, "*"), count=500):
        raw = client.get(key)
        if raw:
            held.update(int(v) for v in raw.decode().split(",") if v)
    return held


# ---------------------------------------------------------------- garbage collection


@dataclass
class GarbageReport:
    removed_versions: list[int] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    kept_versions: list[int] = field(default_factory=list)  # older than CURRENT, still held

    def as_dict(self) -> dict:
        return asdict(self)


def collect_garbage(
    index_dir: Path, held: set[int], min_age_s: float = 60.0, orphan_age_s: float = 3600.0
) -> GarbageReport:
    """Remove the versions older than CURRENT that no searcher holds, then unreferenced shards.

    ``min_age_s`` spares versions published moments ago (a searcher may be about to register
    the version it was just told about); ``orphan_age_s`` spares shard files no manifest names
    yet, which an indexer may have just written and not published.
    """
    index_dir = Path(index_dir)
    report = GarbageReport()
    newest = current_version(index_dir)
    if newest is None:
        return report
    now = time.time()
    versions = list_versions(index_dir)
    keep: set[int] = {newest}
    for v in versions:
        if v >= newest:
            keep.add(v)
        elif v in held or now - manifest_path(index_dir, v).stat().st_mtime < min_age_s:
            keep.add(v)
            report.kept_versions.append(v)
    kept_files: set[str] = set()
    dropped_files: set[str] = set()
    for v in versions:
        try:
            manifest = load_manifest(index_dir, v)
        except FileNotFoundError:  # removed by a concurrent collector
            continue
        if manifest is None:
            continue
        (kept_files if v in keep else dropped_files).update(manifest.files())
    for v in versions:
        if v not in keep:
            manifest_path(index_dir, v).unlink(missing_ok=True)
            report.removed_versions.append(v)
    for rel in sorted(dropped_files - kept_files):
        _remove(index_dir / rel, report, rel)
    shard_dir = index_dir / "shards"
    if shard_dir.is_dir():
        for path in shard_dir.iterdir():
            rel = f"shards/{path.name}"
            if (
                rel not in kept_files
                and rel not in dropped_files
                and now - path.stat().st_mtime > orphan_age_s
            ):
                _remove(path, report, rel)
    return report


def _remove(path: Path, report: GarbageReport, rel: str) -> None:
    try:
        path.unlink()
        report.removed_files.append(rel)
    except FileNotFoundError:
        pass
