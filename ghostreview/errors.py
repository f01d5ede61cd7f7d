"""The one error path of the stage scripts: a bad input ends a stage with an ``error:`` line, a bug keeps its traceback.

A :class:`UserError` is a problem with what the user gave (params.yaml, a checkpoint, a benchmark file, a stage's
input); its message names the file, the key and the fix, which a traceback would only bury. The library's own user
errors (``ConfigError``, ``BenchmarkError``, ``CheckpointError``, ...) subclass it and keep their other bases, so an
``except ValueError`` written before still catches them. Every stage script wraps its ``main`` in :func:`stage_main`.

This module is a leaf: it imports nothing of the project, so every module can import it.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input, not a bug in GhostReview.

    The message names the file, the key (a params key, a column, a stage option, a model or style name) and the fix.
    Stages print it as ``error: <message>`` and exit with status 1, without a traceback.
    """


# OSErrors that mean a path the user named is missing or of the wrong kind, cannot be read or written by this user,
# or lies on a disk that refuses writes. Every other OSError (EIO, EINVAL, a socket error: no stage uses the network)
# is treated as a bug and keeps its traceback.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

FIXES = {
    FileNotFoundError: "Fix the path, or run `dvc repro` so that the stage writing it runs first.",
    NotADirectoryError: "A file stands where a directory is expected: move it away or fix the path.",
    IsADirectoryError: "A directory stands where a file is expected: move it away or fix the path.",
    FileExistsError: "A file stands where a directory is expected: move it away or fix the path.",
    PermissionError: "Give this user access to it, or use a path this user can write.",
}
DISK_FIX = "Free space on that disk (or put the path on one with room) and run `dvc repro` again."


def is_bad_path(exc: BaseException) -> bool:
    """True for an OSError that means a bad path or a full or read-only disk, not a bug (see PATH_ERRORS)."""
    return isinstance(exc, PATH_ERRORS) or (isinstance(exc, OSError) and exc.errno in DISK_ERRNOS)


def path_key(path: str | os.PathLike | None, keys: Mapping[str, str | os.PathLike]) -> str | None:
    """The key of ``keys`` ({key: path}) whose path is ``path`` or a directory above it; the deepest one wins.

    Paths are compared as absolute paths from the current directory, without touching the file system.
    """
    if path is None:
        return None
    target = Path(os.path.abspath(path))
    hits = [(len(d.parts), k) for k, d in ((k, Path(os.path.abspath(p))) for k, p in keys.items())
            if d == target or d in target.parents]
    return max(hits)[1] if hits else None


def stage_options(argv: Sequence[str]) -> dict[str, str]:
    """``{"--name": value}`` of a stage's command line (``--name value`` and ``--name=value``)."""
    options = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            options[name] = value
        elif arg.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            options[arg] = argv[i + 1]
    return options


def describe_os_error(exc: OSError, keys: Mapping[str, str | os.PathLike]) -> str:
    """``<file> (<key>): <reason>. <fix>`` for a bad-path OSError; ``keys`` ({key: path}) name where the file came from.

    An OSError raised by the operating system names a file but no fix, so the fix of its kind is added. One raised by
    the library with a message of its own (no ``filename``: ``"<file>: ...; run ..."``) keeps its message and fix.
    """
    if exc.filename is not None:
        path, reason = str(exc.filename), exc.strerror or str(exc)
        fix = DISK_FIX if exc.errno in DISK_ERRNOS else next(f for t, f in FIXES.items() if isinstance(exc, t))
        reason = f"{reason}. {fix}"
    else:
        path, _, reason = str(exc).partition(": ")
        if not reason:
            return path
    key = path_key(path, keys)
    return f"{path} ({key}): {reason}" if key else f"{path}: {reason}"


@contextmanager
def about(prefix: str, kinds: type[Exception] | tuple[type[Exception], ...] = UserError) -> Iterator[None]:
    """Inside, an error of ``kinds`` becomes a :class:`UserError` whose message starts with ``<prefix>: ``.

    For what the library cannot know, e.g. ``with about(f"{params_path}: benchmark.dir = {d!r}", BenchmarkError)``:
    the library never sees a params key, the stage adds it.
    """
    try:
        yield
    except kinds as exc:
        raise UserError(f"{prefix}: {exc}") from exc


@contextmanager
def about_paths(prefix: str, keys: Mapping[str, str | os.PathLike]) -> Iterator[None]:
    """Inside, a bad-path OSError on a path of ``keys`` ({key: path}) becomes a UserError naming the key.

    E.g. ``with about_paths("params.yaml", {"paths.cache": cache_dir})``: a file standing where that directory should
    be gives ``params.yaml: <file> (paths.cache): File exists. <fix>``. Other errors pass through unchanged.
    """
    try:
        yield
    except OSError as exc:
        if not is_bad_path(exc) or path_key(exc.filename, keys) is None:
            raise
        raise UserError(f"{prefix}: {describe_os_error(exc, keys)}") from exc


def stage_main(main: Callable[[list[str] | None], None]) -> Callable[..., None]:
    """Wrap a stage's ``main(argv)``: a bad input ends the stage with ``error: <message>`` on stderr and status 1.

    Bad input is a :class:`UserError`, or an OSError that means a bad path or a full disk (:func:`is_bad_path`); the
    latter is named by the stage option it came from (``emb.npz (--embeddings): No such file ...``). The exit is a
    ``SystemExit("error: ...")``, so a test calling ``main`` directly sees the message. Anything else is a bug and
    keeps its traceback.
    """

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> None:
        try:
            return main(argv)
        except UserError as exc:
            raise SystemExit(f"error: {exc}") from None
        except OSError as exc:
            if not is_bad_path(exc):
                raise
            options = stage_options(sys.argv[1:] if argv is None else argv)
            raise SystemExit(f"error: {describe_os_error(exc, options)}") from None

    return run
