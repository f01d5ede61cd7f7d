"""The image files a report links to: JPEG renditions of the source images, rendered once and reused across runs.

A page asks a :class:`Gallery` for each image (``add``, ``add_target``) and gets a :class:`Shot` (relative URLs
and the thumbnail's size) at once; the files are made by :meth:`Gallery.flush`, which the page writer calls after
each page, so that no more than one page's worth of pending files is ever held in memory.

Published layout (under the report's ``images/``): ``<folder>/<stem>.jpg``, the full view at the source's own size,
and ``<folder>/thumbs/<stem>.jpg``, a thumbnail where the source is larger than ``thumb_px`` (smaller images are
their own thumbnail). Renditions, not copies: the originals (PNGs with their metadata) stay in the images directory.

The rendition cache (``cache``, optional; the report stage passes ``<paths.cache>/renditions``, outside DVC's
outputs, which DVC deletes before the stage runs) holds every rendition ever made, named by
``rendition_key``: a hash of the source's identity and the rendition settings (longest side, JPEG quality,
``RENDITION_VERSION``). A generated image's identity is its content, not its file's stat: the manifest
``image_hash`` (the store key of everything that decides its pixels; generate links the PNG from the store only after
checking the entry, and the images directory is a DVC output, so ``dvc pull``/``checkout`` restore exactly the bytes
DVC hashed) plus the file's size and a hash of its last ``TAIL_BYTES`` (``file_identity``). An mtime is not part of
it: a pull or a copy rewrites every mtime and would make every rendition anew. Size and tail are a cheap check that
the file is still what generate wrote (one 4 KiB read per image instead of hashing 110 GB of PNGs at 500 models): a
PNG redrawn or replaced by hand under the same name differs in its last compressed bytes and their chunk CRC. A
target image's identity is the sha256 of its bytes. A published file is a
hard link to its cache entry (a copy where the two are on different file systems): a rerun after one model was added
renders only that model's images. A cache entry appears whole or not at all (``Gallery.commit``: rendered into a
staging directory, made durable with one ``os.sync()`` per ``COMMIT_EVERY`` renditions, then hard-linked to its
name), so a killed run leaves no half-written entry; the report never prunes the cache (delete the directory to
reclaim its space).

The contract (names, identity, the rendering itself) is ``ghostreview.util.rendition``'s, shared with the image
store, which makes each generated image's renditions into the same cache as it stores the image (the generate stage
passes it ``<paths.cache>/renditions``): in the workspace that drew the images the report decodes no PNG; after a
``dvc pull`` elsewhere it renders what the cache lacks.

Rendering runs in ``workers`` processes (one image per task is too fine: chunks of ``CHUNK`` sources).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import secrets
import shutil
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ghostreview.util.rendition import JPEG_QUALITY, as_rgb, entry, file_identity, rendition_key, views

IMAGES = "images"  # <out_dir>/images: every image file the pages link to
TARGETS = "_targets"  # images/_targets: style reference and LoRA header images (``_`` starts no model slug)
CHUNK = 64  # sources per rendering task
STALE_S = 6 * 3600  # a staging directory this old belongs to no running report
STAGING = ".staging-"  # <cache>/.staging-<random>: renditions of a run not yet durable and linked into the cache
COMMIT_EVERY = 20_000  # staged renditions per os.sync() and commit to the cache (what a killed run can lose)


SAFE_URL = re.compile(r"[A-Za-z0-9._~/-]*")  # what ``urllib.parse.quote`` leaves as it is


def url(rel: str) -> str:
    """The relative link ``rel`` (a ``/`` path), each part percent-quoted (hex names and slugs need none)."""
    if SAFE_URL.fullmatch(rel):
        return rel
    return "/".join(urllib.parse.quote(part) for part in rel.split("/"))


@dataclass(frozen=True)
class Shot:
    """One image as a page links it: full image and thumbnail (URLs relative to the report's root) and the
    thumbnail's pixel size."""

    full: str
    thumb: str
    width: int
    height: int


@dataclass(frozen=True)
class Job:
    """One file to publish: ``images/<rel>``, a rendition of ``src`` at longest side ``px`` (None: its own size),
    cached as ``<cache>/<key[:2]>/<key>.jpg``."""

    rel: str
    src: Path
    px: int | None
    key: str


def bytes_identity(src: Path) -> str:
    """A target image's identity: the sha256 of its bytes."""
    with open(src, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def image_size(src: Path, width: object = None, height: object = None) -> tuple[int, int]:
    """(width, height): the manifest's when both are positive integers, else read from the file's header."""
    try:
        w, h = int(str(width)), int(str(height))
        if w > 0 and h > 0:
            return w, h
    except ValueError:
        pass
    with Image.open(src) as im:  # reads the header only
        return im.size


@dataclass
class Gallery:
    """The renditions a report's pages link to; see the module docstring.

    dest: the ``images/`` directory being built. cache: the rendition cache (None: render straight into ``dest``).
    """

    dest: Path
    thumb_px: int
    cache: Path | None = None
    executor: Executor | None = None
    pending: list[Job] = field(default_factory=list)
    # rel -> its source's path as text, every file already asked for (a str is a third of a Path: 1.6M entries at
    # 500 models with thumbnails)
    published: dict[str, str] = field(default_factory=dict)
    rendered: int = 0  # renditions made (cache misses) so far
    reused: int = 0  # renditions found in the cache so far
    staged: list[Job] = field(default_factory=list)  # rendered into the staging directory, not yet in the cache
    stage_dir: Path | None = None
    folders: set[str] = field(default_factory=set)  # folders of ``dest`` made so far

    def add(self, src: Path, folder: str, stem: str, source_id: str, size: tuple[int, int]) -> Shot:
        """``src`` (of pixel ``size``) published as ``<folder>/<stem>.jpg`` (the stem's first 16 characters unless
        another source has them), with a thumbnail in ``<folder>/thumbs/`` when larger than ``thumb_px``."""
        short = stem[:16]  # image names are 64-hex hashes: 16 keep them apart and the pages smaller
        stem = short if self.published.get(f"{folder}/{short}.jpg", str(src)) == str(src) else stem
        full = self.want(f"{folder}/{stem}.jpg", src, None, source_id)
        width, height = size
        if max(width, height) <= self.thumb_px:
            return Shot(full, full, width, height)
        thumb = self.want(f"{folder}/thumbs/{stem}.jpg", src, self.thumb_px, source_id)
        scale = self.thumb_px / max(width, height)
        return Shot(full, thumb, max(1, round(width * scale)), max(1, round(height * scale)))

    def add_image(self, src: Path, folder: str, image_hash: str, st: os.stat_result, width: object = None,
                  height: object = None) -> Shot:
        """A generated image (``folder``: its model), identified by its content (``file_identity``; ``st``: its
        stat)."""
        return self.add(src, folder, src.stem, file_identity(image_hash, src, st.st_size),
                        image_size(src, width, height))

    def add_target(self, src: Path) -> Shot:
        """A reference or header image, named by the hash of its bytes (two sets may share a file name)."""
        source_id = bytes_identity(src)
        return self.add(src, TARGETS, source_id.removeprefix("sha256:")[:16], source_id, image_size(src))

    def want(self, rel: str, src: Path, px: int | None, source_id: str) -> str:
        """Queue ``images/<rel>`` (once); returns its URL."""
        if rel not in self.published:
            self.published[rel] = str(src)
            self.pending.append(Job(rel, src, px, rendition_key(source_id, px)))
        return url(f"{IMAGES}/{rel}")

    def flush(self) -> None:
        """Make every queued file: render the missing ones (in the executor when there is one) into the staging
        directory and publish them from there, publish the others from the cache; commit the staged ones to the
        cache once ``COMMIT_EVERY`` have gathered."""
        jobs, self.pending = self.pending, []
        if self.cache is None:
            self.render([(src, [(self.dest / j.rel, j.px) for j in group]) for src, group in by_source(jobs)])
            return
        # paths as text: a Path per file costs more than the link it names (1.6 million files at 500 models)
        missing = [j for j in jobs if not os.path.isfile(self.entry(j.key))]
        staging = str(self.staging())
        self.render([(src, [(f"{staging}/{j.key}", j.px) for j in group]) for src, group in by_source(missing)])
        self.reused += len(jobs) - len(missing)
        new = {j.key for j in missing}
        for folder in {j.rel.rpartition("/")[0] for j in jobs} - self.folders:
            (self.dest / folder).mkdir(parents=True, exist_ok=True)
            self.folders.add(folder)
        dest = str(self.dest)
        for j in jobs:
            publish(f"{staging}/{j.key}" if j.key in new else self.entry(j.key), f"{dest}/{j.rel}")
        self.staged += missing
        if len(self.staged) >= COMMIT_EVERY:
            self.commit()

    def staging(self) -> Path:
        """``<cache>/.staging-<random>``: this run's renditions not yet in the cache (made on first use)."""
        assert self.cache is not None
        if self.stage_dir is None:
            self.stage_dir = self.cache / f"{STAGING}{secrets.token_hex(8)}"
            self.stage_dir.mkdir(parents=True)
        return self.stage_dir

    def commit(self) -> None:
        """Make the staged renditions durable (one ``os.sync()``: an fsync per file costs milliseconds), then
        hard-link each to its cache name: an entry appears whole or not at all. A killed run leaves only its
        staging directory (removed by a later run's ``clean_staging``)."""
        if not self.staged:
            return
        os.sync()
        staging = str(self.staging())
        for j in self.staged:
            entry = self.entry(j.key)
            os.makedirs(os.path.dirname(entry), exist_ok=True)
            with suppress(FileExistsError):  # another run made it meanwhile: the same rendition
                os.link(f"{staging}/{j.key}", entry)
            os.unlink(f"{staging}/{j.key}")
        self.staged = []

    def close(self) -> None:
        """Commit what is staged (``commit``) and remove the staging directory; on an error, ``discard``."""
        self.commit()
        self.discard()

    def discard(self) -> None:
        """Remove the staging directory and what it holds (the renditions of a report that failed)."""
        if self.stage_dir is not None:
            shutil.rmtree(self.stage_dir, ignore_errors=True)
            self.stage_dir, self.staged = None, []

    def entry(self, key: str) -> str:
        """The cache entry of the rendition ``key``: ``<cache>/<key[:2]>/<key>.jpg``."""
        assert self.cache is not None
        return entry(self.cache, key)

    def render(self, work: Sequence[tuple[Path, list[tuple[str | Path, int | None]]]]) -> None:
        self.rendered += sum(len(outs) for _, outs in work)
        chunks = [list(work[i:i + CHUNK]) for i in range(0, len(work), CHUNK)]
        if self.executor is None or len(chunks) < 2:
            for chunk in chunks:
                render_chunk(chunk)
            return
        for _ in self.executor.map(render_chunk, chunks):
            pass


def by_source(jobs: Sequence[Job]) -> list[tuple[Path, list[Job]]]:
    """Jobs grouped by source (each source is decoded once for all its renditions), in first-seen order."""
    groups: dict[Path, list[Job]] = {}
    for j in jobs:
        groups.setdefault(j.src, []).append(j)
    return list(groups.items())


def publish(entry: str | Path, dest: str | Path) -> None:
    """``dest`` (whose directory exists) as a hard link to the cache entry (a copy across file systems)."""
    try:
        os.link(entry, dest)
    except OSError:  # another file system (or one without hard links)
        shutil.copyfile(entry, dest)


def render_chunk(chunk: Sequence[tuple[Path, Sequence[tuple[str | Path, int | None]]]]) -> None:
    for src, outs in chunk:
        write_renditions(src, outs)


def write_renditions(src: Path, outs: Sequence[tuple[str | Path, int | None]]) -> None:
    """JPEGs of ``src`` (transparency on white), each at its longest side ``px`` (None: the source's size); written
    plainly into a directory that is made durable and moved into place as a whole (``Gallery.commit``,
    ``replace_dir(..., sync_all=True)``)."""
    with Image.open(src) as im:
        im.load()
        rgb = as_rgb(im)
    for dest, px in outs:
        _, view = next(views(rgb, (px,)))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        view.save(dest, format="JPEG", quality=JPEG_QUALITY)


def clean_staging(cache: Path, older_than_s: float = STALE_S) -> None:
    """Remove the staging directories a killed run left in ``cache`` (those older than ``older_than_s``: a report
    running at the same time on the same cache keeps its own)."""
    now = time.time()
    for d in cache.glob(f"{STAGING}*") if cache.is_dir() else ():
        if now - d.stat().st_mtime > older_than_s:
            shutil.rmtree(d, ignore_errors=True)


@contextmanager
def rendering_pool(workers: int) -> Iterator[Executor | None]:
    """A process pool of ``workers`` processes (None for one: render in this process). Forked, not spawned: a
    spawned or fork-server worker re-imports the caller's ``__main__`` script (which then needs a main guard);
    a forked one shares this process's pages and touches only what it renders."""
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield pool
