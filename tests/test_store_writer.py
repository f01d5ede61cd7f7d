"""StoreWriter: the image store's writes on a writer thread (bounded queue), with the store's own guarantees: every
acknowledged image is complete in the store, errors reach the drawing thread as they are, a kill loses only images
that were never acknowledged. And the PNG bytes: one zlib level, recorded, the same bytes on every run."""

import hashlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from PIL import Image

import ghostreview.generation.store as store_mod
from ghostreview.generation.store import ImageStore, StoreError, StoreWriter, save_png


def encode_png(image: Image.Image, infotext: str) -> bytes:
    """The bytes save_png writes, in memory."""
    buf = io.BytesIO()
    save_png(image, infotext, buf)
    return buf.getvalue()


def key(i: int) -> str:
    return hashlib.sha256(f"job{i}".encode()).hexdigest()


def image(i: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def test_writer_stores_what_put_would_store_byte_for_byte(tmp_path):
    direct, queued = ImageStore(tmp_path / "a"), ImageStore(tmp_path / "b")
    with StoreWriter(queued, max_pending=2) as writer:
        for i in range(5):
            writer.put(key(i), image(i), f"prompt {i}\nSteps: 2", {"seed": i, "flags": []})
            direct.put(key(i), image(i), f"prompt {i}\nSteps: 2", {"seed": i, "flags": []})
    assert writer.stored == 5
    for i in range(5):
        assert queued.has(key(i)) and queued.get_meta(key(i)) == {"seed": i, "flags": []}
        assert queued.path(key(i)).read_bytes() == direct.path(key(i)).read_bytes()
        assert queued.meta_path(key(i)).read_bytes() == direct.meta_path(key(i)).read_bytes()


def test_png_bytes_are_the_same_on_every_call_and_the_level_is_recorded(tmp_path):
    assert encode_png(image(3), "a cat") == encode_png(image(3), "a cat")
    store = ImageStore(tmp_path)
    store.put(key(0), image(3), "a cat", {})
    assert store.path(key(0)).read_bytes() == encode_png(image(3), "a cat")
    record = store._read_meta(key(0))["png"]
    assert record["compress_level"] == store_mod.PNG_COMPRESS_LEVEL


def test_a_write_error_reaches_the_drawing_thread_as_it_is_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)
    real_put = ImageStore.put

    def put(self, k, *args):
        if k == key(1):
            raise StoreError(f"could not store image {k} (No space left on device)", self.path(k))
        return real_put(self, k, *args)

    monkeypatch.setattr(ImageStore, "put", put)
    writer = StoreWriter(store, max_pending=1)
    writer.put(key(0), image(0), "x", {})
    writer.put(key(1), image(1), "x", {})
    with pytest.raises(StoreError) as err:  # at the latest when closing; a later put may raise it first
        for i in range(2, 6):
            writer.put(key(i), image(i), "x", {})
        writer.close()
    assert str(err.value) == f"could not store image {key(1)} (No space left on device): {store.path(key(1))}"
    assert writer.stored == 1 and store.has(key(0)) and not any(store.has(key(i)) for i in range(1, 6))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [f"{key(0)}.json", f"{key(0)}.png"]


def test_bad_metadata_and_keys_are_refused_on_the_calling_thread(tmp_path):
    with StoreWriter(ImageStore(tmp_path)) as writer:
        with pytest.raises(TypeError):
            writer.put(key(0), image(), "x", {"bad": {1, 2}})
        with pytest.raises(ValueError, match="store's own"):
            writer.put(key(0), image(), "x", {"png": 1})
        with pytest.raises(ValueError, match="sha256"):
            writer.put("abc", image(), "x", {})
    assert writer.stored == 0 and list(tmp_path.iterdir()) == []


def test_the_queue_is_bounded_and_leaving_on_an_error_keeps_the_queued_images(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)
    release, real_put = threading.Event(), ImageStore.put
    monkeypatch.setattr(ImageStore, "put", lambda self, *a: (release.wait(10), real_put(self, *a))[1])
    with pytest.raises(RuntimeError, match="draw failed"), StoreWriter(store, max_pending=2) as writer:
        for i in range(3):  # one being written, two queued
            writer.put(key(i), image(i), "x", {})
        blocked = threading.Thread(target=writer.put, args=(key(3), image(3), "x", {}))
        blocked.start()
        blocked.join(0.3)
        assert blocked.is_alive()  # a full queue holds the drawing thread back
        release.set()
        blocked.join(10)
        raise RuntimeError("draw failed")  # the drawing fails: what was drawn is still stored
    assert writer.stored == 4 and all(store.has(key(i)) for i in range(4))


KILLED_WRITER = textwrap.dedent("""
    import hashlib, sys, time
    import numpy as np
    from PIL import Image
    from ghostreview.generation.store import ImageStore, StoreWriter
    import ghostreview.generation.store as store_mod
    real = store_mod.save_png
    store_mod.save_png = lambda im, t, f: (time.sleep(0.05), real(im, t, f))[1]  # writes slower than the drawing
    store = ImageStore(sys.argv[1])
    with StoreWriter(store, max_pending=3) as writer:
        for i in range(1000):
            k = hashlib.sha256(f"job{i}".encode()).hexdigest()
            writer.put(k, Image.fromarray(np.full((64, 64, 3), i % 256, np.uint8)), "x", {"i": i})
            print("ACK", writer.stored, flush=True)  # what a progress bar or a manifest may count
""")


def test_a_kill_loses_no_acknowledged_image_and_leaves_no_damaged_entry(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    acked = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        acked = int(line.split()[1])
        if acked >= 5:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    store = ImageStore(tmp_path)
    assert all(store.has(key(i)) for i in range(acked))  # in order: the first `acked` are complete
    entries = list(store.keys())
    problems = [store.check(k) for k in entries]
    assert not [p for p in problems if p and p.kind not in ("incomplete",)], problems  # at most an interrupted put
