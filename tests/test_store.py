"""Content-addressed image store: layout, atomicity under failures, links, job keys."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

import ghostreview.generation.store as store_mod
from ghostreview.generation.infotext import read_png_infotext
from ghostreview.generation.store import DamagedEntryError, ImageStore, StoreError, job_key

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


# ------------------------------------------------------------------------------------------------ verified reuse
# (issue 12 item 2: the store hands back only what it checked against the hash recorded when the image was stored)

OTHER = hashlib.sha256(b"other job").hexdigest()


def other_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))


def sha256_file(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_put_records_the_png_sha256_and_size_next_to_the_metadata(tmp_path):
    store = ImageStore(tmp_path)
    png = store.put(KEY, image(), "x", {"flags": [], "seed": 3})
    on_disk = json.loads(store.meta_path(KEY).read_text(encoding="utf-8"))
    assert on_disk["png"] == {"sha256": sha256_file(png), "size": png.stat().st_size,
                              "compress_level": store_mod.PNG_COMPRESS_LEVEL}
    assert store.get_meta(KEY) == {"flags": [], "seed": 3}  # the caller's metadata, as given
    with pytest.raises(ValueError, match="png"):
        store.put(OTHER, image(), "x", {"png": "mine"})  # the name is the store's


def damage(store: ImageStore, how: str) -> None:
    """Damage the entry KEY the way the issue found: truncated, another valid PNG swapped in, hash never recorded."""
    png, js = store.path(KEY), store.meta_path(KEY)
    if how == "truncated":
        png.write_bytes(png.read_bytes()[:-20])
    elif how == "swapped":
        os.replace(store.put(OTHER, other_image(), "x", {}), png)
    elif how == "unhashed":  # as code before the hash wrote it
        meta = json.loads(js.read_text())
        del meta["png"]
        js.write_text(json.dumps(meta))
    elif how == "garbled-json":
        js.write_text('{"flags": [')


@pytest.mark.parametrize("how, kind", [("truncated", "mismatch"), ("swapped", "mismatch"), ("unhashed", "unhashed"),
                                       ("garbled-json", "unreadable")])
def test_a_damaged_entry_counts_as_absent_and_says_why(tmp_path, how, kind):
    store = ImageStore(tmp_path)
    store.put(KEY, image(), "x", {"flags": []})
    assert store.has(KEY) and store.check(KEY) is None
    damage(store, how)
    problem = store.check(KEY)
    assert not store.has(KEY) and problem.kind == kind and problem.key == KEY
    assert problem.path == (store.meta_path(KEY) if kind == "unreadable" else store.path(KEY))
    with pytest.raises(DamagedEntryError, match=problem.detail.split("(")[0].strip()):
        store.link_into(KEY, tmp_path / "out" / "x.png")
    assert not (tmp_path / "out" / "x.png").exists()


def test_a_truncated_png_is_named_with_its_sizes(tmp_path):
    store = ImageStore(tmp_path)
    size = store.put(KEY, image(), "x", {}).stat().st_size
    damage(store, "truncated")
    detail = store.check(KEY).detail
    assert f"{size - 20} bytes" in detail and f"{size} recorded" in detail


def test_set_aside_moves_the_entry_to_the_quarantine_and_the_next_put_is_whole(tmp_path):
    store = ImageStore(tmp_path)
    store.put(KEY, image(), "x", {"flags": ["a"]})
    damage(store, "truncated")
    bad = store.path(KEY).read_bytes()
    store.set_aside(store.check(KEY))
    assert files_under(tmp_path) == [f"corrupt/{KEY}.json", f"corrupt/{KEY}.png"]
    assert (tmp_path / "corrupt" / f"{KEY}.png").read_bytes() == bad
    assert store.check(KEY).kind == "absent"
    store.put(KEY, image(), "x", {"flags": ["b"]})
    assert store.has(KEY) and store.get_meta(KEY) == {"flags": ["b"]}


def test_a_checked_entry_is_linked_without_reading_it_again(tmp_path, monkeypatch):
    """The check reads and hashes the PNG once; the hard link is the same file (device, inode, size, mtime), so
    linking costs a stat. Changed in between, the linked copy is hashed again and refused."""
    ImageStore(tmp_path / "store").put(KEY, image(), "x", {})  # an earlier run (it hashed what it wrote)
    store = ImageStore(tmp_path / "store")
    reads = []
    real = store_mod._sha256_of
    monkeypatch.setattr(store_mod, "_sha256_of", lambda f: reads.append(1) or real(f))
    assert store.has(KEY) and store.has(KEY) and len(reads) == 1
    store.link_into(KEY, tmp_path / "out" / "a.png")
    assert len(reads) == 1 and os.path.samefile(store.path(KEY), tmp_path / "out" / "a.png")
    with open(store.path(KEY), "r+b") as f:  # damaged in place after the check (same inode, same size)
        f.seek(40)
        f.write(b"\0" * 8)
    os.utime(store.path(KEY), ns=(1, 1))
    with pytest.raises(DamagedEntryError, match="sha256"):
        store.link_into(KEY, tmp_path / "out" / "b.png")
    assert not (tmp_path / "out" / "b.png").exists() and len(reads) == 2


def test_link_into_checks_the_byte_copy_too(tmp_path, monkeypatch):
    store = ImageStore(tmp_path / "store")
    store.put(KEY, image(), "x", {})
    monkeypatch.setattr(store_mod.os, "link", lambda a, b: (_ for _ in ()).throw(OSError(18, "cross-device")))
    real_copy = store_mod.shutil.copyfile

    def copy_and_damage(src, dst):
        real_copy(src, dst)
        with open(dst, "r+b") as f:
            f.truncate(30)

    monkeypatch.setattr(store_mod.shutil, "copyfile", copy_and_damage)
    with pytest.raises(DamagedEntryError, match="30 bytes"):
        store.link_into(KEY, tmp_path / "out" / "a.png")
    assert files_under(tmp_path / "out") == []


# --------------------------------------------------------------------------------------------- ghostreview store verify


def verify(*args):
    from typer.testing import CliRunner

    from ghostreview.cli import app

    return CliRunner().invoke(app, ["store", "verify", *args])


def damaged_store(root):
    """A store with two good entries and one of each kind of damage `store verify` reports."""
    store = ImageStore(root)
    keys = {name: hashlib.sha256(name.encode()).hexdigest() for name in
            ("good1", "good2", "truncated", "swapped", "unhashed", "garbled-json", "lone-json", "lone-png")}
    for name, key in keys.items():
        store.put(key, image() if name != "good2" else other_image(), name, {"flags": []})
    png = lambda name: store.path(keys[name])  # noqa: E731
    png("truncated").write_bytes(png("truncated").read_bytes()[:-20])
    png("swapped").write_bytes(png("good2").read_bytes())
    meta = json.loads(store.meta_path(keys["unhashed"]).read_text())
    del meta["png"]
    store.meta_path(keys["unhashed"]).write_text(json.dumps(meta))
    store.meta_path(keys["garbled-json"]).write_text("{")
    png("lone-json").unlink()
    store.meta_path(keys["lone-png"]).unlink()
    stale = png("good1").parent / f".{png('good1').name}.abc123.tmp"  # a write killed long ago
    stale.write_bytes(b"\x89PNG half")
    os.utime(stale, (1, 1))
    fresh = png("good1").parent / f".{png('good1').name}.def456.tmp"  # a write in progress: not ours to judge
    fresh.write_bytes(b"\x89PNG hal")
    return store, keys, stale, fresh


def test_store_verify_reports_every_bad_entry_and_exits_1(tmp_path):
    store, keys, stale, fresh = damaged_store(tmp_path / "store")
    result = verify("--store", str(tmp_path / "store"))
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(f"{tmp_path / 'store'}/")]
    named = {name for name, key in keys.items() if any(f"/{key}." in line for line in lines)}  # not in a temp name
    assert named == {"truncated", "swapped", "unhashed", "garbled-json", "lone-json", "lone-png"}
    assert any(str(stale) in line for line in lines) and not any(str(fresh) in line for line in lines)
    assert len(lines) == 7
    assert "8 entries, 7 problems" in result.output and "--fix" in result.output
    assert "Traceback" not in result.output
    assert store.has(keys["good1"]) and store.path(keys["truncated"]).exists()  # nothing moved without --fix


def test_store_verify_fix_moves_the_bad_entries_aside(tmp_path):
    store, keys, stale, fresh = damaged_store(tmp_path / "store")
    before = {p: p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file()}
    result = verify("--store", str(tmp_path / "store"), "--fix")
    assert result.exit_code == 1 and "moved 7" in result.output, result.output
    corrupt = tmp_path / "store" / "corrupt"
    for name in ("truncated", "swapped", "unhashed", "garbled-json"):
        for part in (store.path(keys[name]), store.meta_path(keys[name])):
            assert not part.exists() and (corrupt / part.name).read_bytes() == before[part]
    assert (corrupt / store.meta_path(keys["lone-json"]).name).is_file() and (corrupt / stale.name).is_file()
    assert (corrupt / store.path(keys["lone-png"]).name).is_file() and fresh.is_file()
    assert store.has(keys["good1"]) and store.has(keys["good2"])
    again = verify("--store", str(tmp_path / "store"))
    assert again.exit_code == 0 and "2 entries, no problems" in again.output, again.output


def test_store_verify_reads_the_store_path_from_params(tmp_path, monkeypatch):
    from conftest import ROOT

    store = ImageStore(tmp_path / "imgs")
    store.put(KEY, image(), "x", {})
    store.path(KEY).write_bytes(b"\x89PNG")
    text = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("image_store: ~/.cache/ghostreview/images", "image_store: imgs"))
    monkeypatch.chdir(tmp_path)
    result = verify()
    assert result.exit_code == 1 and str(store.path(KEY)) in result.output, result.output
    missing = verify("--store", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "nowhere" in missing.output and "Traceback" not in missing.output
