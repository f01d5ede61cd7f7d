"""Atomic writes: a reader sees the old file or the new one, never half of one, even after a crash.

Every writer follows one recipe: write a temporary sibling in the same directory (same file system, so the rename
cannot turn into a copy), flush and fsync it, ``os.replace`` it over the target, fsync the directory (so the rename
itself survives a power cut). On any error the temporary file is removed and the target is untouched.

A replaced file keeps its mode (``params.yaml`` stays as the user set it); a new one gets the mode ``open()`` would
give it (0o666 less the umask), not ``mkstemp``'s 0o600.

Directories are built the same way: :func:`replace_dir` and :func:`create_dir_once` fill a temporary sibling and
rename it into place.

This is the one module that calls ``os.replace``/``os.rename`` on files (tests/test_vocabulary.py keeps it so).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO

_TRIES = 16  # name clashes of 64 random bits: one is already a miracle


def fsync_path(path: Path) -> None:
    """fsync a closed file or a directory by path: a directory's fsync makes the renames and creations inside it
    durable; a file's flushes its data (Linux flushes through any descriptor, read-only included)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path, suffix: str = "") -> Path:
    """A fresh hidden sibling name of ``path``: ``.<name>.<random>.tmp<suffix>``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp{suffix}")


def _target_mode(path: Path) -> int | None:
    """``path``'s permission bits when it exists (a replacement keeps them), else None."""
    try:
        return path.stat().st_mode & 0o7777
    except (FileNotFoundError, NotADirectoryError):  # a file where its directory should be: mkdir says so next
        return None


def _open_temp(path: Path) -> tuple[int, Path]:
    """Create an empty temporary sibling of ``path`` (its directory made first); returns (fd, its path).

    ``os.open`` with 0o666 lets the umask decide a new file's mode, as ``open()`` does.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_TRIES):
        tmp = _temp_name(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {path}")


def write_temp(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write through ``write(file)`` into a new temporary sibling of ``path`` and fsync it; returns its path.

    The file already carries ``path``'s mode (when ``path`` exists). The caller moves it into place with
    :func:`move_into_place` (or removes it); on any error here it is removed and the error re-raised. For callers
    that must look at the bytes before they replace ``path`` (the image store hashes the PNG first).
    """
    path = Path(path)
    mode = _target_mode(path)
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def move_into_place(tmp: Path, path: Path) -> None:
    """``os.replace(tmp, path)``, then fsync ``path``'s directory; ``tmp`` must be a complete, fsynced sibling."""
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Replace ``path`` with what ``write(file)`` writes to a binary file; returns ``path``.

    On any error (from ``write`` or the disk) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = write_temp(path, write)
    try:
        move_into_place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` (see :func:`write_atomic`); returns ``path``."""
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` (no newline translation: ``\\n`` stays ``\\n``); returns ``path``."""
    return write_bytes_atomic(path, text.encode(encoding))


def save_atomic(path: Path, save: Callable[[Path], object]) -> Path:
    """Replace ``path`` with the file ``save(tmp)`` writes at the path it is given; returns ``path``.

    For libraries that write by file name (``torch.save``, safetensors' ``save_file``, ``DataFrame.to_csv``).
    ``tmp`` is a fresh sibling that keeps ``path``'s suffix, for writers that choose the format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _target_mode(path)
    tmp = _temp_name(path, path.suffix)
    try:
        save(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        fsync_path(tmp)
        move_into_place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (deepest first), ``root`` included."""
    for parent, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(parent, name)):
                fsync_path(Path(parent, name))
        fsync_path(Path(parent))


def _build_temp_dir(dest: Path, build: Callable[[Path], object], sync_all: bool = False) -> Path:
    """A new temporary sibling directory of ``dest`` filled by ``build(tmp)`` and fsynced (``sync_all``: by one
    ``os.sync()`` instead of one fsync per file); removed on any error."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(dest)
    tmp.mkdir()
    try:
        build(tmp)
        if sync_all:
            os.sync()
        else:
            _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def replace_dir(dest: Path, build: Callable[[Path], object], *, sync_all: bool = False) -> Path:
    """Replace directory ``dest`` with one that ``build(tmp)`` fills in a temporary sibling; returns ``dest``.

    sync_all: make the new tree durable with one ``os.sync()`` rather than an fsync per file and directory (a tree of
    many thousand files: an fsync costs milliseconds even on a file with nothing to flush, e.g. a hard link).

    A reader sees the old tree or the new one, never a mix: the old tree is renamed aside, the new one renamed in, the
    old one deleted (between the two renames ``dest`` is briefly absent: POSIX cannot swap directories). A file at
    ``dest`` is replaced too. On an error in ``build`` the old ``dest`` is untouched.
    """
    dest = Path(dest)
    tmp = _build_temp_dir(dest, build, sync_all)
    aside = _temp_name(dest, ".old")
    old: Path | None = aside  # None once it is known there was no old ``dest`` to set aside
    try:
        try:
            os.rename(dest, aside)
        except FileNotFoundError:
            old = None
        try:
            os.rename(tmp, dest)
        except OSError:
            if old is not None:
                os.rename(old, dest)  # put the old tree back: the target stays untouched
            raise
        fsync_path(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        _remove(old)
    return dest


def _remove(path: Path) -> None:
    """Delete a file, a link or a directory tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def create_dir_once(dest: Path, build: Callable[[Path], object]) -> Path:
    """Create directory ``dest`` unless it exists: ``build(tmp)`` fills a temporary sibling, renamed to ``dest``.

    A concurrent builder that loses the race discards its copy (the winner's is complete); readers never see a
    half-built ``dest``. Returns ``dest``.
    """
    dest = Path(dest)
    if dest.is_dir():
        return dest
    tmp = _build_temp_dir(dest, build)
    try:
        os.rename(tmp, dest)  # rename, not replace: refuses to land on a directory another builder just made
        fsync_path(dest.parent)
    except OSError:
        if not dest.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
