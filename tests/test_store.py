"""Content-addressed image store: layout, atomicity under failures, links, job keys."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

import ghostreview.store as store_mod
from ghostreview.infotext import read_png_infotext
from ghostreview.store import ImageStore, StoreError, job_key

KEY = hashlib.sha256(b"job").hexdigest()


def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_put_then_read_back(tmp_path):
    store = ImageStore(tmp_path)
    assert not store.has(KEY)
    path = store.put(KEY, image(), "a cat\nSteps: 2", {"flags": ["black"], "seed": 3})
    assert path == tmp_path / KEY[:2] / f"{KEY}.png" == store.path(KEY)
    assert store.has(KEY)
    assert store.get_meta(KEY) == {"flags": ["black"], "seed": 3}
    assert read_png_infotext(path) == "a cat\nSteps: 2"
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im), np.asarray(image()))
    assert files_under(tmp_path) == [f"{KEY[:2]}/{KEY}.json", f"{KEY[:2]}/{KEY}.png"]


def test_has_needs_both_files(tmp_path):
    store = ImageStore(tmp_path)
    store.put(KEY, image(), "x", {})
    store.path(KEY).unlink()  # a crash after the JSON, before the PNG
    assert not store.has(KEY)
    with pytest.raises(StoreError, match=KEY):
        store.get_meta(KEY)
    store.put(KEY, image(), "x", {"again": 1})
    assert store.has(KEY) and store.get_meta(KEY) == {"again": 1}


def test_png_write_failure_leaves_nothing(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(StoreError) as err:
        store.put(KEY, image(), "x", {"a": 1})
    assert err.value.path == store.path(KEY)
    assert str(store.path(KEY)) in str(err.value) and "No space left" in str(err.value)
    assert files_under(tmp_path) == []
    assert not store.has(KEY)


def test_json_write_failure_leaves_nothing(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)
    real_fsync = os.fsync
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store_mod.os, "fsync", failing_fsync)
    with pytest.raises(StoreError, match="Input/output error"):
        store.put(KEY, image(), "x", {"a": 1})
    monkeypatch.setattr(store_mod.os, "fsync", real_fsync)
    assert calls and files_under(tmp_path) == []


def test_failed_overwrite_keeps_the_complete_entry(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)
    store.put(KEY, image(), "x", {"a": 1})
    monkeypatch.setattr(Image.Image, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(StoreError):
        store.put(KEY, image(), "x", {"a": 2})
    assert store.has(KEY)
    assert all(not p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_unserializable_meta_fails_before_writing(tmp_path):
    store = ImageStore(tmp_path)
    with pytest.raises(TypeError):
        store.put(KEY, image(), "x", {"bad": {1, 2}})
    with pytest.raises(ValueError):
        store.put(KEY, image(), "x", {"bad": float("nan")})
    assert files_under(tmp_path) == []


def test_invalid_keys(tmp_path):
    store = ImageStore(tmp_path)
    for bad in ["", "abc", KEY.upper(), KEY[:-1] + "g", "../" + KEY[3:]]:
        with pytest.raises(ValueError, match="sha256"):
            store.path(bad)


def test_link_into_hardlinks(tmp_path):
    store = ImageStore(tmp_path / "store")
    src = store.put(KEY, image(), "x", {})
    dest = tmp_path / "ws" / "out" / "img.png"
    store.link_into(KEY, dest)
    assert os.path.samefile(src, dest)
    store.link_into(KEY, dest)  # again, over the existing file
    assert os.path.samefile(src, dest)
    assert files_under(dest.parent) == ["img.png"]


def test_link_into_copies_when_links_fail(tmp_path, monkeypatch):
    store = ImageStore(tmp_path / "store")
    src = store.put(KEY, image(), "x", {})
    dest = tmp_path / "ws" / "img.png"
    dest.parent.mkdir()
    dest.write_bytes(b"old")

    def no_link(a, b):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(store_mod.os, "link", no_link)
    store.link_into(KEY, dest)
    assert not os.path.samefile(src, dest)
    assert dest.read_bytes() == src.read_bytes()
    assert files_under(dest.parent) == ["img.png"]


def test_link_into_missing_entry(tmp_path):
    with pytest.raises(StoreError, match="no complete store entry"):
        ImageStore(tmp_path).link_into(KEY, tmp_path / "x.png")


def test_job_key_is_sha256_of_canonical_json():
    fields = {"prompt": "a cat", "seed": 3, "cfg": 7.5, "loras": [["x", 0.8]], "ünï": "猫"}
    canonical = '{"cfg":7.5,"loras":[["x",0.8]],"prompt":"a cat","seed":3,"ünï":"猫"}'
    assert job_key(fields) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert job_key(dict(reversed(list(fields.items())))) == job_key(fields)
    assert job_key({**fields, "seed": 4}) != job_key(fields)
    assert job_key({**fields, "loras": (("x", 0.8),)}) == job_key(fields)
    with pytest.raises(ValueError):
        job_key({"x": float("inf")})
    with pytest.raises(TypeError):
        job_key({"x": object()})
    assert json.loads(canonical)  # the reference string is itself valid JSON
