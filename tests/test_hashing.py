"""sha256 with its on-disk cache, and Civitai AutoV2."""

import hashlib
import json
import os

import pytest

from ghostreview.util import hashing


def plain_sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def counted(monkeypatch):
    """Counts real hashing passes over file contents."""
    calls = []
    real = hashing._hash_file

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(hashing, "_hash_file", counting)
    return calls


def test_sha256_matches_hashlib_across_chunks(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(3 * (1 << 20) + 123))  # spans several 1 MiB chunks
    assert hashing.file_sha256(path) == plain_sha256(path)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert hashing.file_sha256(empty) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_cache_hit_skips_reading(tmp_path, counted):
    path, cache = tmp_path / "model.safetensors", tmp_path / "cache" / "sha256.json"
    path.write_bytes(b"weights" * 1000)
    first = hashing.file_sha256(path, cache)
    second = hashing.file_sha256(path, cache)
    assert first == second == plain_sha256(path)
    assert len(counted) == 1
    entry = json.loads(cache.read_text())["entries"][str(path.resolve())]
    assert entry == {"size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns, "sha256": first}
    link = tmp_path / "link.safetensors"
    link.symlink_to(path)
    assert hashing.file_sha256(link, cache) == first and len(counted) == 1  # keyed by the resolved path


def test_cache_invalidated_by_mtime_or_size(tmp_path, counted):
    path, cache = tmp_path / "model.safetensors", tmp_path / "sha256.json"
    path.write_bytes(b"A" * 100)
    stat = path.stat()
    original = hashing.file_sha256(path, cache)
    path.write_bytes(b"B" * 100)  # same size, new content...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ...and the old mtime: indistinguishable, cache wins
    assert hashing.file_sha256(path, cache) == original and len(counted) == 1
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000))  # mtime moves: re-hash
    assert hashing.file_sha256(path, cache) == plain_sha256(path) != original and len(counted) == 2
    path.write_bytes(b"B" * 101)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000))  # size moves alone: re-hash
    assert hashing.file_sha256(path, cache) == plain_sha256(path) and len(counted) == 3


def test_corrupt_cache_is_rebuilt(tmp_path, counted):
    path, cache = tmp_path / "m.bin", tmp_path / "sha256.json"
    path.write_bytes(b"x")
    cache.write_text("{not json")
    assert hashing.file_sha256(path, cache) == plain_sha256(path)
    assert json.loads(cache.read_text())["version"] == hashing.CACHE_VERSION
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        hashing.file_sha256(tmp_path / "nope.safetensors")


def test_autov2():
    sha = hashlib.sha256(b"").hexdigest()
    assert hashing.autov2(sha) == "e3b0c44298"
    assert hashing.autov2(sha.upper()) == "e3b0c44298"
    for bad in ["e3b0c44298", sha + "0", "g" * 64, ""]:
        with pytest.raises(ValueError, match="64 hex digits"):
            hashing.autov2(bad)
