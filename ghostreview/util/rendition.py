"""The rendition cache's contract: how a report's JPEG renditions of an image are named, made and stored, shared by
the report (``analysis.report.renditions``, which makes what is missing) and the image store (``generation.store``,
which makes them when an image is drawn, while its pixels are in memory: a report then decodes no PNG).

A rendition is a JPEG (quality ``JPEG_QUALITY``, transparency on white) of an image at longest side ``px`` (None:
its own size). Its cache entry is ``<cache>/<key[:2]>/<key>.jpg``, ``key = rendition_key(source identity, px)``.
A generated image's identity (``file_identity``) is its manifest ``image_hash`` (the store key), the PNG's size and
a hash of its last ``TAIL_BYTES``: what the report can check with one 4 KiB read per image. Every image gets its
full view; one larger than ``THUMB_PX`` also a thumbnail at ``THUMB_PX`` (``sizes``). The same pixels give the same
bytes whether the report or the store renders them (``jpeg``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

from PIL import Image

RENDITIONS = "renditions"  # <paths.cache>/renditions: the rendition cache of a workspace
JPEG_QUALITY = 90
RENDITION_VERSION = "1"  # bump when the rendering below changes: every cache entry is then made anew
TAIL_BYTES = 4096  # the end of a generated PNG read into its identity (file_identity)
THUMB_PX = 320  # longest side of a report's thumbnails; an image this small or smaller is its own thumbnail


def rendition_key(source_id: str, px: int | None) -> str:
    """The cache name of a rendition: sha256 of the source's identity and the rendition settings."""
    return hashlib.sha256(f"{source_id}|{px}|q{JPEG_QUALITY}|v{RENDITION_VERSION}".encode()).hexdigest()


def file_identity(image_hash: str, src: str | Path, size: int) -> str:
    """A generated image's identity: its manifest hash, its file's ``size`` and the sha256 of its last
    ``TAIL_BYTES`` bytes (the whole file when smaller); neither mtime nor path is part of it."""
    with open(src, "rb") as f:
        f.seek(max(0, size - TAIL_BYTES))
        tail = hashlib.sha256(f.read(TAIL_BYTES)).hexdigest()[:32]
    return f"{image_hash}|{size}|tail:{tail}"


def entry(cache: str | Path, key: str) -> str:
    """The cache entry of the rendition ``key``."""
    return f"{cache}/{key[:2]}/{key}.jpg"


def sizes(width: int, height: int, thumb_px: int = THUMB_PX) -> tuple[int | None, ...]:
    """The renditions a report links for an image of this size: the full view (None), and a thumbnail at
    ``thumb_px`` when the image is larger."""
    return (None,) if max(width, height) <= thumb_px else (None, thumb_px)


def on_white(im: Image.Image) -> Image.Image:
    """An image with transparency (or a palette that may carry it) composited on white."""
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def as_rgb(im: Image.Image) -> Image.Image:
    """The pixels a rendition shows: RGB, transparency on white."""
    return im.convert("RGB") if "A" not in im.getbands() and im.mode != "P" else on_white(im)


def views(rgb: Image.Image, pxs: tuple[int | None, ...]) -> Iterator[tuple[int | None, Image.Image]]:
    """(px, the image at longest side px) for each of ``pxs`` (None: ``rgb`` itself)."""
    for px in pxs:
        view = rgb
        if px is not None:
            view = rgb.copy()
            view.thumbnail((px, px))
        yield px, view


def prerender(cache: Path, image_hash: str, png: Path, image: Image.Image, thumb_px: int = THUMB_PX) -> int:
    """The renditions a report will link for the stored image ``png`` (drawn as ``image``), made into ``cache``
    from the pixels in memory; each entry is written to a temporary name, fsynced and linked into place, so that it
    appears whole or not at all (an existing entry is the same rendition and is kept). Returns how many were made."""
    identity = file_identity(image_hash, png, os.stat(png).st_size)
    made = 0
    for px, view in views(as_rgb(image), sizes(*image.size, thumb_px)):
        dest = entry(cache, rendition_key(identity, px))
        if os.path.exists(dest):
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = f"{dest}.{secrets.token_hex(6)}.tmp"
        try:
            with open(tmp, "wb") as f:
                view.save(f, format="JPEG", quality=JPEG_QUALITY)
                f.flush()
                os.fsync(f.fileno())
            with suppress(FileExistsError):  # made meanwhile by another writer: the same rendition
                os.link(tmp, dest)
        finally:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
        made += 1
    return made
