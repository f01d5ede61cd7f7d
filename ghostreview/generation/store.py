"""Content-addressed image store shared by workspaces (outside DVC's workspace, so stages rebuild outputs from it).

Layout: ``root/ab/<key>.png`` (the image, its infotext in the PNG ``parameters`` chunk) and ``root/ab/<key>.json``
(metadata: flags etc., and under ``"png"`` the sha256 and size of the PNG as written), ``key`` = the 64-hex sha256
``job_key`` of everything that decides the pixels. ``root/corrupt/`` holds entries found damaged, moved aside.

Crash safety: every file is written to a temporary name in the same directory and fsynced. The PNG is written and
hashed first, then the JSON holding its hash is renamed into place with ``os.replace`` (atomic on POSIX), then the
PNG: a crash leaves at most a temporary file or a JSON without its PNG, which the next ``put`` overwrites. A failed
``put`` removes what it wrote and raises ``StoreError``.

Off the drawing thread: :class:`StoreWriter` runs ``put`` on a writer thread behind a bounded queue. An image counts
as drawn (progress, the stage's counts, its manifest) only once ``put`` returned for it; a kill loses only queued
images, which no manifest lists, and the next run draws them. PNGs are written at zlib level
:data:`PNG_COMPRESS_LEVEL`, recorded in each entry's ``"png"`` record. With ``renditions`` (the generate stage passes
``<paths.cache>/renditions``), ``put`` also makes the JPEG renditions a report links for the image
(``util.rendition.prerender``) from the pixels in memory, on the same writer thread: the report then reads no PNG.

Trust: an entry is handed back (``has``, ``link_into``) only when its PNG has the size and sha256 recorded at ``put``
(:meth:`ImageStore.check`). A truncated or replaced PNG, unreadable metadata, or an entry written before the store
recorded hashes counts as absent and is drawn again. The check reads and hashes each PNG once per ``ImageStore``;
after that the same file (device, inode, size, mtime) costs a ``stat``, so the hard link made into a stage's output
is the very file that was checked, without a second read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image

from ghostreview.errors import UserError
from ghostreview.generation.infotext import pnginfo
from ghostreview.util.atomic import move_into_place, write_bytes_atomic, write_temp
from ghostreview.util.rendition import prerender

_KEY = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"[0-9a-f]{2}")
PNG_RECORD = "png"  # the metadata key holding {"sha256": ..., "size": ...} of the PNG: the store's own
QUARANTINE = "corrupt"  # root/corrupt/: damaged entries moved aside, kept for a look
# zlib level of every stored PNG. Measured at 1024 px (benchmarks/generation_overhead.py, RESULTS section 10): on a
# photograph level 1 encodes in about a quarter of the time of Pillow's default 6 for about 10% more bytes; 0 (no
# compression) doubles the bytes. Recorded in each entry's "png" record; a store may hold entries of several levels
# (the key decides the pixels, not the bytes).
PNG_COMPRESS_LEVEL = 1
STALE_TEMP_S = 600  # a temporary file younger than this may be a write in progress (a PNG write takes milliseconds)


class StoreError(UserError, OSError):
    """A store operation failed; ``path`` names the file concerned."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(f"{message}: {path}")
        self.path = path


@dataclass(frozen=True)
class Problem:
    """Why the store cannot hand back an entry, or a stray file in it.

    ``kind``: ``absent`` (neither file), ``incomplete`` (the PNG or the JSON alone: an interrupted write),
    ``unhashed`` (no sha256 recorded: written before the store recorded one), ``unreadable`` (the JSON does not parse
    or the PNG cannot be read), ``mismatch`` (the PNG's size or sha256 differs from the recorded one: truncated,
    replaced, corrupted), ``stray`` (a file that is no part of an entry, e.g. the temporary file of a killed write).
    ``path``: the store file concerned; ``key``: the entry's key, None for a stray file.
    """

    kind: str
    path: Path
    detail: str
    key: str | None = None

    @property
    def damaged(self) -> bool:
        """A file holds something other than what the store wrote (moved aside when found)."""
        return self.kind in ("unreadable", "mismatch")

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


class DamagedEntryError(UserError):
    """A store entry exists but cannot be handed back (see ``problem``); no disk is at fault, so not a StoreError."""

    def __init__(self, problem: Problem, message: str | None = None) -> None:
        super().__init__(message or f"{problem}; the image store entry {problem.key} is not used")
        self.problem = problem


def job_key(fields: Mapping[str, object]) -> str:
    """sha256 hex of the canonical JSON of ``fields`` (sorted keys, no whitespace, UTF-8, NaN rejected).

    ``fields`` must hold everything that decides the pixels (checkpoint hash, prompt, seed, sampler, sizes, LoRA
    hashes and weights, library versions, ...) and only JSON types (tuples count as lists).

    Raises:
        TypeError / ValueError: a value JSON cannot encode (a set, a tensor, NaN, ...).
    """
    text = json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_meta(meta: Mapping) -> None:
    """Raise TypeError / ValueError for metadata :meth:`ImageStore.put` refuses: not JSON, or holding ``"png"``."""
    if PNG_RECORD in meta:
        raise ValueError(f"metadata key {PNG_RECORD!r} is the store's own (the PNG's sha256 and size); rename it")
    _encode_meta(meta)


def save_png(image: Image.Image, infotext: str, f: IO[bytes]) -> None:
    """Write the PNG the store keeps to ``f``: ``infotext`` in the ``parameters`` chunk, zlib level
    :data:`PNG_COMPRESS_LEVEL`; the same image, text and level give the same bytes on every run."""
    image.save(f, format="PNG", pnginfo=pnginfo(infotext), compress_level=PNG_COMPRESS_LEVEL)


def _encode_meta(meta: Mapping) -> bytes:
    return (json.dumps(dict(meta), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _sha256_of(f: io.BufferedReader) -> str:
    """sha256 hex of the rest of the open binary file ``f``."""
    return hashlib.file_digest(f, "sha256").hexdigest()


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is replaced or written: not ctime, which a hard link changes."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ImageStore:
    """PNG images and their JSON metadata under ``root``, addressed by sha256 job keys."""

    def __init__(self, root: Path, renditions: Path | None = None) -> None:
        self.root = Path(root)
        self.renditions = None if renditions is None else Path(renditions)  # the report's rendition cache, or None
        self._checked: dict[str, tuple[tuple[int, int, int, int], str]] = {}  # key -> (PNG identity, its sha256)

    @property
    def quarantine(self) -> Path:
        """``root/corrupt``: where :meth:`set_aside` moves damaged entries."""
        return self.root / QUARANTINE

    def path(self, key: str) -> Path:
        """``root/ab/<key>.png`` for key ``ab...``.

        Raises:
            ValueError: ``key`` is not 64 lower-case hex characters.
        """
        if not _KEY.fullmatch(key):
            raise ValueError(f"store key {key!r} is not a sha256 hex digest (64 lower-case hex characters); "
                             "see job_key")
        return self.root / key[:2] / f"{key}.png"

    def meta_path(self, key: str) -> Path:
        """``root/ab/<key>.json``."""
        return self.path(key).with_suffix(".json")

    def has(self, key: str) -> bool:
        """True when the entry is complete and its PNG matches the recorded sha256 (:meth:`check`)."""
        return self.check(key) is None

    def put(self, key: str, image: Image.Image, infotext: str, meta: Mapping) -> Path:
        """Store ``image`` (with ``infotext`` in its PNG) and ``meta`` under ``key``; returns the PNG path.

        The PNG (zlib level :data:`PNG_COMPRESS_LEVEL`: the same image, infotext and level give the same bytes) is
        written, then hashed; its sha256, size and level are recorded in the JSON under ``"png"``. An
        existing entry is overwritten (same key, same pixels). :class:`StoreWriter` runs this on a writer thread.

        Raises:
            StoreError: writing failed (disk full, permissions, ...); nothing of this call is left behind.
            TypeError / ValueError: ``meta`` is not JSON-serializable or holds ``"png"`` (before anything is written).
        """
        check_meta(meta)  # refuse what JSON cannot hold before writing anything
        png, js = self.path(key), self.meta_path(key)
        had_png, tmp = png.is_file(), None
        try:
            tmp = write_temp(png, lambda f: save_png(image, infotext, f))
            with open(tmp, "rb") as f:  # just written: read back from the page cache
                written, sha = _identity(os.fstat(f.fileno())), _sha256_of(f)
            record = {"sha256": sha, "size": written[2], "compress_level": PNG_COMPRESS_LEVEL}
            write_bytes_atomic(js, _encode_meta({**meta, PNG_RECORD: record}))
            move_into_place(tmp, png)
        except OSError as err:
            if not had_png:  # a JSON without its PNG is harmless, but leave nothing behind
                js.unlink(missing_ok=True)
            raise StoreError(f"could not store image {key} ({err.strerror or err})", png) from err
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        self._checked[key] = (written, sha)  # renaming keeps the identity: this process need not hash it again
        if self.renditions is not None:
            try:
                prerender(self.renditions, key, png, image)
            except OSError as err:  # the image is stored; a report would make its renditions itself
                raise StoreError(f"image {key} is stored, but its report renditions could not be written into "
                                 f"{self.renditions} ({err.strerror or err}): free space there (or delete the "
                                 "folder: the report makes what is missing)", self.renditions) from err
        return png

    def get_meta(self, key: str) -> dict:
        """The metadata stored with ``key``, as given to :meth:`put`.

        Raises:
            StoreError: the entry is missing or incomplete, or its JSON is unreadable.
        """
        if not (self.path(key).is_file() and self.meta_path(key).is_file()):
            raise StoreError(f"no complete store entry for {key}", self.path(key))
        try:
            meta = self._read_meta(key)
        except (OSError, ValueError) as err:
            raise StoreError(f"unreadable metadata ({err})", self.meta_path(key)) from err
        meta.pop(PNG_RECORD, None)
        return meta

    def _read_meta(self, key: str) -> dict:
        """The entry's JSON. Raises OSError, or ValueError saying what is wrong with it."""
        meta = json.loads(self.meta_path(key).read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        return meta

    def check(self, key: str, copy: Path | None = None) -> Problem | None:
        """None when the entry is complete and its PNG has the size and sha256 recorded at :meth:`put`; else what is
        wrong. ``copy``: check that file (a link or copy of the PNG) against the entry's record instead of the PNG.

        The first check of a file reads and hashes it; a later one of the same file (device, inode, size, mtime)
        in this ``ImageStore`` costs a ``stat``.
        """
        png, js = self.path(key), self.meta_path(key)
        if not (png.is_file() and js.is_file()):
            return self._missing(key)
        try:
            record = self._read_meta(key).get(PNG_RECORD)
        except (OSError, ValueError) as err:
            return Problem("unreadable", js, f"unreadable metadata ({err})", key)
        if record is None:
            return Problem("unhashed", png, "no sha256 recorded for the PNG (stored before GhostReview recorded one)",
                           key)
        if not (isinstance(record, dict) and isinstance(record.get("sha256"), str) and _KEY.fullmatch(record["sha256"])
                and type(record.get("size")) is int):
            return Problem("unreadable", js, f"unreadable metadata (a malformed {PNG_RECORD!r} record)", key)
        return self._compare(key, png, copy or png, record["sha256"], record["size"])

    def _missing(self, key: str) -> Problem:
        png, js = self.path(key), self.meta_path(key)
        if png.is_file():
            return Problem("incomplete", png, "a PNG without its JSON metadata", key)
        if js.is_file():
            return Problem("incomplete", js, "JSON metadata without its PNG (a store write was interrupted)", key)
        return Problem("absent", png, "not in the store", key)

    def _compare(self, key: str, png: Path, target: Path, sha: str, size: int) -> Problem | None:
        try:
            with open(target, "rb") as f:
                seen = _identity(os.fstat(f.fileno()))
                if self._checked.get(key) == (seen, sha):
                    return None
                if seen[2] != size:
                    return Problem("mismatch", png, f"the PNG holds {seen[2]} bytes, {size} recorded when it was "
                                                    f"stored (truncated or replaced)", key)
                digest = _sha256_of(f)
                unchanged = _identity(os.fstat(f.fileno())) == seen
        except OSError as err:
            return Problem("unreadable", png, f"cannot read the PNG ({err.strerror or err})", key)
        if digest != sha:
            return Problem("mismatch", png, "the PNG's sha256 differs from the one recorded when it was stored "
                                            "(replaced or corrupted)", key)
        if unchanged and target == png:
            self._checked[key] = (seen, sha)
        return None

    def link_into(self, key: str, dest: Path) -> None:
        """Make ``dest`` a checked copy of the stored PNG: a hard link when the filesystem allows, else a byte copy.

        The copy itself is checked against the recorded sha256 (:meth:`check`): a hard link to a PNG this store
        already checked costs a ``stat``. Atomic: ``dest`` is created under a temporary name in its directory and
        renamed over any existing file, only once checked.

        Raises:
            StoreError: the entry is missing, or neither linking nor copying worked.
            DamagedEntryError: the entry, or the copy made of it, does not match the recorded hash.
        """
        src, dest = self.path(key), Path(dest)
        problem = self.check(key)
        if problem:
            raise self._refusal(problem)
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
            problem = self.check(key, copy=tmp)  # what lands in dest is what was checked
            if problem:
                raise self._refusal(problem)
            move_into_place(tmp, dest)
        except StoreError:
            raise
        except OSError as err:
            raise StoreError(f"could not link or copy {src} ({err.strerror or err})", dest) from err
        finally:
            tmp.unlink(missing_ok=True)

    def _refusal(self, problem: Problem) -> UserError:
        if problem.kind in ("absent", "incomplete"):
            return StoreError(f"no complete store entry for {problem.key}", problem.path)
        return DamagedEntryError(problem)

    def set_aside(self, problem: Problem) -> None:
        """Move the files of ``problem`` (an entry's PNG, then its JSON; or a stray file) into :attr:`quarantine`,
        replacing an older copy of the same name there. Files already gone (another process moved them) are skipped.

        Raises:
            StoreError: a file could not be moved.
        """
        files = [problem.path] if problem.key is None else [self.path(problem.key), self.meta_path(problem.key)]
        for f in files:  # the PNG first: an interruption leaves a JSON alone, as an interrupted put does
            try:
                self.quarantine.mkdir(exist_ok=True)
                os.replace(f, self.quarantine / f.name)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise StoreError(f"could not move a damaged store file to {self.quarantine} ({err.strerror or err})",
                                 f) from err
        self._checked.pop(problem.key or "", None)

    def keys(self) -> Iterator[str]:
        """The key of every entry, whole or not, shard by shard."""
        for shard in self._shards():
            yield from sorted({f.stem for f in shard.iterdir() if _is_entry_file(f, shard)})

    def strays(self, now: float | None = None) -> Iterator[Problem]:
        """Files in the shards that belong to no entry: temporary files of writes that never finished (older than
        ``STALE_TEMP_S``; a younger one may be a write in progress, and is left alone) and any other name."""
        now = time.time() if now is None else now
        for shard in self._shards():
            for f in sorted(shard.iterdir()):
                if _is_entry_file(f, shard):
                    continue
                if f.name.startswith(".") and f.name.endswith(".tmp"):
                    if now - f.lstat().st_mtime > STALE_TEMP_S:
                        yield Problem("stray", f, "temporary file of a store write that never finished")
                else:
                    yield Problem("stray", f, "not a file of the image store")

    def _shards(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if _SHARD.fullmatch(p.name) and p.is_dir())


def _is_entry_file(f: Path, shard: Path) -> bool:
    return f.suffix in (".png", ".json") and bool(_KEY.fullmatch(f.stem)) and f.stem[:2] == shard.name and f.is_file()


class StoreWriter:
    """:meth:`ImageStore.put` on a writer thread, so that the drawing thread never waits for PNG encoding, hashing
    and fsyncs: :meth:`put` queues an image (blocking while ``max_pending`` wait, which bounds the memory held) and
    returns; the writer thread stores the images in order, each with :meth:`ImageStore.put`'s atomicity and fsyncs.

    :attr:`stored` counts the images in the store: only those are acknowledged (counted, shown, listed in a manifest).
    A kill loses at most the queued images, which are in no manifest and are drawn by the next run. The first error of
    the writer (a :class:`StoreError`: disk full, ...) is raised, as it is, by the next :meth:`put` or by
    :meth:`close`; the images queued after it are not written. Use as a context manager: leaving it waits for every
    queued image, also when the body raised (images already drawn are kept), then raises the writer's error unless
    the body raised its own.
    """

    def __init__(self, store: ImageStore, max_pending: int = 4) -> None:
        self.store = store
        self.stored = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="image-store-writer", daemon=True)
        self._thread.start()

    def put(self, key: str, image: Image.Image, infotext: str, meta: Mapping) -> None:
        """Queue one image for :meth:`ImageStore.put` (``meta`` is checked here: a bad one raises at once)."""
        self._raise()
        check_meta(meta)
        self.store.path(key)  # a bad key raises here, not on the writer thread
        self._queue.put((key, image, infotext, dict(meta)))

    def close(self) -> None:
        """Wait until every queued image is stored; raise the writer's first error, if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # the body's own error is the one to report; the writer's is secondary
            self.close()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after an error the rest is drained unwritten, so put never blocks forever
                try:
                    self.store.put(*item)
                    self.stored += 1
                except BaseException as err:  # handed to the drawing thread as it is, message and type
                    self._error = err
