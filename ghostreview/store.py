"""Content-addressed image store shared by workspaces (outside DVC's workspace, so stages rebuild outputs from it).

Layout: ``root/ab/<key>.png`` (the image, its infotext in the PNG ``parameters`` chunk) and ``root/ab/<key>.json``
(metadata: flags etc.), ``key`` = the 64-hex sha256 ``job_key`` of everything that decides the pixels.

Crash safety: every file is written to a temporary name in the same directory, fsynced and renamed with
``os.replace`` (atomic on POSIX). The JSON goes first, the PNG last, and an entry counts as present only when both
exist: a crash between the two leaves a JSON without its PNG, which ``has`` reports as missing and the next ``put``
overwrites. A failed ``put`` removes what it wrote and raises ``StoreError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from PIL import Image

from ghostreview.errors import UserError
from ghostreview.infotext import pnginfo

_KEY = re.compile(r"[0-9a-f]{64}")


class StoreError(UserError, OSError):
    """A store operation failed; ``path`` names the file concerned."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(f"{message}: {path}")
        self.path = path


def job_key(fields: Mapping[str, object]) -> str:
    """sha256 hex of the canonical JSON of ``fields`` (sorted keys, no whitespace, UTF-8, NaN rejected).

    ``fields`` must hold everything that decides the pixels (checkpoint hash, prompt, seed, sampler, sizes, LoRA
    hashes and weights, library versions, ...) and only JSON types (tuples count as lists).

    Raises:
        TypeError / ValueError: a value JSON cannot encode (a set, a tensor, NaN, ...).
    """
    text = json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary sibling, fsync, then ``os.replace``.

    On any error the temporary file is removed and the error re-raised; ``path`` is then untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class ImageStore:
    """PNG images and their JSON metadata under ``root``, addressed by sha256 job keys."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """``root/ab/<key>.png`` for key ``ab...``.

        Raises:
            ValueError: ``key`` is not 64 lower-case hex characters.
        """
        if not _KEY.fullmatch(key):
            raise ValueError(f"store key {key!r} is not a sha256 hex digest (64 lower-case hex characters); see job_key")
        return self.root / key[:2] / f"{key}.png"

    def meta_path(self, key: str) -> Path:
        """``root/ab/<key>.json``."""
        return self.path(key).with_suffix(".json")

    def has(self, key: str) -> bool:
        """True when both the PNG and its JSON are present (a crash can leave a JSON alone, never the reverse)."""
        return self.path(key).is_file() and self.meta_path(key).is_file()

    def put(self, key: str, image: Image.Image, infotext: str, meta: Mapping) -> Path:
        """Store ``image`` (with ``infotext`` in its PNG) and ``meta`` under ``key``; returns the PNG path.

        An existing entry is overwritten (same key, same pixels).

        Raises:
            StoreError: writing failed (disk full, permissions, ...); nothing of this call is left behind.
            TypeError / ValueError: ``meta`` is not JSON-serializable (raised before anything is written).
        """
        png, js = self.path(key), self.meta_path(key)
        meta_bytes = (json.dumps(dict(meta), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()
        info = pnginfo(infotext)
        had_png = png.is_file()
        try:
            write_atomic(js, lambda f: f.write(meta_bytes))
            write_atomic(png, lambda f: image.save(f, format="PNG", pnginfo=info))
        except OSError as err:
            if not had_png:  # a JSON without its PNG is harmless, but leave nothing behind
                js.unlink(missing_ok=True)
            raise StoreError(f"could not store image {key} ({err.strerror or err})", png) from err
        return png

    def get_meta(self, key: str) -> dict:
        """The metadata stored with ``key``.

        Raises:
            StoreError: the entry is missing or incomplete, or its JSON is unreadable.
        """
        if not self.has(key):
            raise StoreError(f"no complete store entry for {key}", self.path(key))
        try:
            return json.loads(self.meta_path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise StoreError(f"unreadable metadata ({err})", self.meta_path(key)) from err

    def link_into(self, key: str, dest: Path) -> None:
        """Make ``dest`` a copy of the stored PNG: a hard link when the filesystem allows, else a byte copy.

        Atomic: ``dest`` is created under a temporary name in its directory and renamed over any existing file.

        Raises:
            StoreError: the entry is missing, or neither linking nor copying worked.
        """
        src, dest = self.path(key), Path(dest)
        if not self.has(key):
            raise StoreError(f"no complete store entry for {key}", src)
        if dest.exists() and os.path.samefile(src, dest):
            return  # already linked (and POSIX rename between two links of one file would do nothing)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{os.getpid()}.link.tmp"
        try:
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)
            except OSError:  # other filesystem, or links not supported
                shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except OSError as err:
            raise StoreError(f"could not link or copy {src} ({err.strerror or err})", dest) from err
        finally:
            tmp.unlink(missing_ok=True)
