"""Vector chunks, manifests and atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cliprs.fsutil import atomic_path, atomic_write_bytes
from cliprs.manifest import Codec, Manifest, Shard, current_version, load_manifest, publish
from cliprs.vectors import chunk_path, read_chunk, write_chunk


def test_chunk_round_trip(tmp_path: Path) -> None:
    ids = np.array([4096 * 5 + i for i in range(3)])
    vecs = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    write_chunk(tmp_path, 5, ids, vecs, "model-a")
    got_ids, got_vecs, model = read_chunk(tmp_path, 5)
    assert got_ids.dtype == np.int64 and (got_ids == ids).all()
    # Stored as float16: half the disk, within float16 rounding of what was written.
    assert got_vecs.dtype == np.float16 and got_vecs.shape == vecs.shape and model == "model-a"
    assert np.array_equal(got_vecs, vecs.astype(np.float16))
    np.testing.assert_allclose(got_vecs.astype(np.float32), vecs, rtol=1e-3, atol=1e-3)
    assert read_chunk(tmp_path, 6) is None
    assert chunk_path(tmp_path, 12345).parent.name == "12"
    with pytest.raises(ValueError):
        write_chunk(tmp_path, 7, ids[:2], vecs, "m")


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind


def test_manifest_publish_and_load(tmp_path: Path) -> None:
    assert current_version(tmp_path) is None and load_manifest(tmp_path) is None
    a = Shard("shards/s-a", 10, "flat", envelope=[1.0, 2.0, 3.0, 4.0], zooms=[16], area_ids=[1], tiles=2)
    m1 = Manifest(1, "m", 512, [a])
    publish(tmp_path, m1)
    b = Shard("shards/s-b", 5, "ivfpq", zooms=[14, 16], area_ids=[1, 2], tiles=1)
    codec = Codec("shards/codec-x.faiss", nlist=16, pq=64, nprobe=4, k_factor=32, trained_on=15)
    m2 = Manifest(2, "m", 512, [*m1.shards, b], codec=codec)
    publish(tmp_path, m2)
    assert current_version(tmp_path) == 2
    assert load_manifest(tmp_path) == m2 and load_manifest(tmp_path).vector_count == 15
    assert load_manifest(tmp_path, 1) == m1
    # Flat shards have no FAISS file; the codec's file belongs to the version.
    assert m1.files() == {"shards/s-a.ids.npy", "shards/s-a.f16"}
    assert m2.files() == m1.files() | {
        "shards/s-b.ids.npy",
        "shards/s-b.f16",
        "shards/s-b.faiss",
        "shards/codec-x.faiss",
    }
