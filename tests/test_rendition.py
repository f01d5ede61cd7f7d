"""The rendition cache's contract (ghostreview.util.rendition): the store makes a report's renditions when it stores
an image, byte for byte what the report would make from the PNG, so that a report over those images renders none."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from ghostreview.analysis.report.renditions import Gallery
from ghostreview.generation.store import ImageStore, StoreError
from ghostreview.util.rendition import THUMB_PX, sizes


def picture(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, len(mode)), dtype=np.uint8), mode)


def key(k: int) -> str:
    return hashlib.sha256(f"image {k}".encode()).hexdigest()


IMAGES = [picture(400, 300, 1), picture(200, 120, 2), picture(330, 330, 3, "RGBA")]  # thumbnail, none, on white


def test_sizes():
    assert sizes(THUMB_PX, 10) == (None,) and sizes(THUMB_PX + 1, 10) == (None, THUMB_PX)


def test_the_store_makes_the_renditions_a_report_links(tmp_path):
    store = ImageStore(tmp_path / "store", renditions=tmp_path / "cache")
    pngs = [store.put(key(k), im, f"infotext {k}", {"flags": ""}) for k, im in enumerate(IMAGES)]
    made = sorted((tmp_path / "cache").rglob("*.jpg"))
    assert len(made) == sum(len(sizes(*im.size)) for im in IMAGES)
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    def publish(dest, cache):
        gallery = Gallery(dest, THUMB_PX, cache)
        shots = [gallery.add_image(png, "m", key(k), os.stat(png)) for k, png in enumerate(pngs)]
        gallery.flush()
        gallery.close()
        return gallery, shots

    gallery, shots = publish(tmp_path / "r1", tmp_path / "cache")
    assert gallery.rendered == 0 and gallery.reused == len(made)  # nothing decoded: every rendition was there
    assert sorted((tmp_path / "cache").rglob("*.jpg")) == made
    fresh, fresh_shots = publish(tmp_path / "r2", None)  # what the report makes from the PNGs themselves
    assert fresh.rendered == len(made) and fresh_shots == shots
    for rel in gallery.published:
        assert (tmp_path / "r1" / rel).read_bytes() == (tmp_path / "r2" / rel).read_bytes(), rel


def test_a_rendition_that_cannot_be_written_names_the_cache(tmp_path):
    (tmp_path / "cache").write_text("a file where the folder goes")
    store = ImageStore(tmp_path / "store", renditions=tmp_path / "cache")
    with pytest.raises(StoreError, match="renditions could not be written into .*cache"):
        store.put(key(0), IMAGES[0], "infotext", {"flags": ""})
    assert store.has(key(0))  # the image itself is stored
