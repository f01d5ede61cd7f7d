"""File hashes: sha256 with an on-disk cache, and Civitai's AutoV2 short hash.

Checkpoints are gigabytes; hashing one takes seconds to minutes, so ``file_sha256`` remembers each result keyed by
(resolved path, size, mtime_ns). Any change of size or modification time invalidates the entry.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ghostreview.util.atomic import write_text_atomic

CACHE_VERSION = 1
_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def _hash_file(path: Path) -> str:
    """sha256 hex digest of the bytes of ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_cache(cache_file: Path) -> dict[str, dict]:
    """Entries of a cache file; a missing, unreadable or foreign-format file counts as empty (it is only a cache)."""
    try:
        data = json.loads(Path(cache_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _write_cache(cache_file: Path, entries: dict[str, dict]) -> None:
    """Write the cache atomically (:func:`ghostreview.util.atomic.write_text_atomic`)."""
    text = json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True)
    write_text_atomic(Path(cache_file), text)


def file_sha256(path: Path, cache_file: Path | None = None) -> str:
    """Lower-case sha256 hex digest of the file at ``path``.

    Args:
        path: the file to hash (symlinks are resolved; the cache key is the resolved path).
        cache_file: optional JSON cache. An entry is reused only when the file's size and ``st_mtime_ns`` are
            unchanged; otherwise the file is re-hashed and the entry replaced. Concurrent writers never corrupt
            the file (atomic replace) but one of two simultaneous updates may be lost, which only costs a re-hash.

    Raises:
        FileNotFoundError: naming ``path`` when it does not exist or is not a regular file.
    """
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"cannot hash {path}: not an existing file")
    stat = resolved.stat()
    key = str(resolved)
    entries = _read_cache(cache_file) if cache_file is not None else {}
    hit = entries.get(key)
    if hit and hit.get("size") == stat.st_size and hit.get("mtime_ns") == stat.st_mtime_ns:
        return hit["sha256"]
    sha = _hash_file(resolved)
    if cache_file is not None:
        entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
        _write_cache(cache_file, entries)
    return sha


def autov2(sha256_hex: str) -> str:
    """Civitai / A1111 "AutoV2" short hash: the first 10 hex digits of the file's sha256, lower case.

    Raises:
        ValueError: when ``sha256_hex`` is not 64 hex digits.
    """
    if not _HEX64.fullmatch(sha256_hex):
        raise ValueError(f"expected a sha256 hex digest (64 hex digits), got {sha256_hex!r}")
    return sha256_hex[:10].lower()
