"""The drawing loop's non-sampling time per image at full size, on the CPU: what a GPU would wait for.

The local engine's real loop (``LocalEngine.draw``: ``pipeline_drawer``'s LoRA switching, ``draw_unit``, the image
store) runs on a full-size SD1.5 pipeline (the shipped configs, random weights: ``benchmarks.generation_gpu.
full_pipeline``) with two full-size kohya LoRAs (``ghostreview.kit.fullsize.write_lora``, rank 32), but the sampler is
replaced by a stand-in that tokenizes each prompt and negative prompt the way ``encode`` does (``prompt_chunks``: the
real 49,408-token CLIP tokenizer) and then sleeps ``--sampling`` seconds per image, as the CPU is idle while a GPU
samples, and returns a fixed 1,024 px image (a smooth synthetic picture with grain, 1.9 MB as a PNG at level 1).

    non-sampling s/image = (loop wall time - sleeping) / images

It holds LoRA switches (each unit of ``--batch`` images names other LoRAs than the last: A, B, none, ...), prompt
tokenization and, unless the store writes run on another thread, PNG encoding, hashing and fsyncs. Each checkout
(``--root``, repeatable: a clone at an older commit for a before/after) runs in its own process per repeat, the
checkouts interleaved (A B, B A, ...); a process builds the pipeline once (untimed), warms up on one unit, then times
the loop. Components are timed too, each in its checkout's process: ``ImageStore.put`` of one 1,024 px image, one
``prompt_chunks`` call, one LoRA switch.

    python -m benchmarks.generation_overhead [--root PATH [--root PATH]] [--repeats 3] [--units 6] [--batch 4]

Full-size LoRAs are written once under ``--work`` (default ``~/.cache/ghostreview/benchmarks/generation_overhead``).
Also: ``--levels`` prints PNG size and encoding time per zlib level for the same 1,024 px image (the store's
``PNG_COMPRESS_LEVEL`` choice), and a photograph given with ``--photo``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import header, row

ROOT = Path(__file__).resolve().parents[1]
WORK = Path.home() / ".cache" / "ghostreview" / "benchmarks" / "generation_overhead"
SIZE = 1024

CHILD = r'''
import json, os, statistics, sys, tempfile, time
from pathlib import Path

args = json.loads(sys.argv[1])
import torch
torch.set_num_threads(args["threads"])
import ghostreview
assert Path(ghostreview.__file__).resolve().is_relative_to(Path(args["root"]).resolve()), ghostreview.__file__
from types import SimpleNamespace
from PIL import Image
from benchmarks.generation_gpu import full_pipeline
from ghostreview.generation import worker
from ghostreview.generation.engines import local
from ghostreview.generation.encode import prompt_chunks
from ghostreview.generation.lora import LoraSpec
from ghostreview.generation.store import ImageStore
from ghostreview.util.runtime import quiet_third_party

quiet_third_party()
pipe = full_pipeline("sd15", "cpu")
pipe.set_progress_bar_config(disable=True)
picture = Image.open(args["picture"]).convert("RGB")
picture.load()
sleeping = [0.0]

def stand_in(pipe_, family, requests, batch_size=None, **kw):
    for r in requests:
        prompt_chunks(pipe_.tokenizer, r.prompt)
        prompt_chunks(pipe_.tokenizer, r.negative_prompt)
    t = time.perf_counter(); time.sleep(args["sampling"] * len(requests)); sleeping[0] += time.perf_counter() - t
    return [(picture.copy(), []) for _ in requests]

worker.draw = stand_in
local.load_spec_pipeline = lambda spec: pipe
a, b = (LoraSpec(n, Path(p), 0.8) for n, p in (("a", args["loras"][0]), ("b", args["loras"][1])))
cycle = [(a,), (b,), ()]

class Request:  # what the stand-in and draw_unit read of a DrawRequest
    def __init__(self, i):
        self.prompt = f"masterpiece, best quality, a lighthouse on a cliff at dusk number {i}, dramatic clouds, " * 2
        self.negative_prompt = "lowres, blurry, watermark, jpeg artifacts, bad anatomy"

def units(n, start):
    out = []
    for u in range(n):
        jobs = []
        for k in range(args["batch"]):
            i = start + u * args["batch"] + k
            job = SimpleNamespace(task="lora", item=f"item{u}", seed=i, loras=cycle[(start + u) % 3],
                                  request=Request(i))  # what pipeline_drawer and draw_unit read of an ImageJob
            jobs.append((job, f"{i:064x}", "infotext " * 40))
        out.append(jobs)
    return out

spec = type("Spec", (), {"family": "sd15", "batch_size": args["batch"]})()
with tempfile.TemporaryDirectory(dir=args["work"]) as tmp:
    store = ImageStore(Path(tmp) / "store")
    local.LocalEngine().draw(spec, units(1, 10**6), store, lambda n: None)  # warm-up: LoRAs a, first load
    sleeping[0] = 0.0
    t = time.perf_counter()
    drawn = local.LocalEngine().draw(spec, units(args["units"], 0), store, lambda n: None)
    loop, slept = time.perf_counter() - t, sleeping[0]
    n = args["units"] * args["batch"]
    assert drawn == n and all(store.has(f"{i:064x}") for i in range(n))
    def clock(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    put = [clock(lambda: store.put(f"{10**7 + i:064x}", picture, "infotext " * 40, {})) for i in range(3)]
    tok = [clock(lambda: prompt_chunks(pipe.tokenizer, Request(i).prompt)) for i in range(5)]
    drawer = worker.pipeline_drawer(pipe, "sd15", args["batch"])
    switch = []
    for i, u in enumerate(units(8, 1)):  # b, none, a, b, none, a, ...: every unit switches; the first 3 load
        switch.append(clock(lambda: drawer([j for j, _, _ in u])) - args["sampling"] * args["batch"])
    switch = switch[3:]
    png = store.path(f"{0:064x}").stat().st_size
print("RESULT " + json.dumps({"loop_s": loop, "sleep_s": slept, "images": n, "png_bytes": png,
                              "put_s": statistics.median(put), "chunks_s": statistics.median(tok),
                              "switch_s": statistics.mean(switch)}), flush=True)
'''


def synthetic_image(size: int = SIZE, seed: int = 0):
    """A fixed photo-like RGB image: bicubic-smooth colour fields plus grain (compresses like a render, not noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    low = rng.normal(size=(16, 16, 3))
    low = ((low - low.min()) / np.ptp(low) * 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    return Image.fromarray(np.clip(smooth + rng.normal(0, 3, smooth.shape), 0, 255).astype(np.uint8))


def write_loras(work: Path) -> list[Path]:
    """Two full-size SD1.5 kohya LoRAs (rank 32), written once."""
    from ghostreview.generation.loading import family_config_dir
    from ghostreview.kit.fullsize import write_lora

    work.mkdir(parents=True, exist_ok=True)
    config_dir = family_config_dir("sd15", work / "configs")
    paths = [work / f"lora-{name}.safetensors" for name in ("a", "b")]
    for seed, path in enumerate(paths, 1):
        if not path.is_file():
            write_lora(path, "sd15", config_dir, seed=seed)
    return paths


def run_child(root: Path, args: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(root), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({**args, "root": str(root)})], cwd=root, env=env,
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{root}: the loop failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def commit_of(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h"], capture_output=True,
                          text=True).stdout.strip() or "?"


def levels(photo: Path | None) -> None:
    """PNG size and encoding time per zlib level at 1,024 px (median of 3)."""
    from PIL import Image

    images = {"synthetic": synthetic_image()}
    if photo:
        images[photo.name] = Image.open(photo).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    for name, im in images.items():
        for level in (0, 1, 2, 3, 4, 6, 9):
            times, data = [], b""
            for _ in range(3):
                buf = io.BytesIO()
                t = time.perf_counter()
                im.save(buf, format="PNG", compress_level=level)
                times.append(time.perf_counter() - t)
                data = buf.getvalue()
            row(f"{name} level {level}: ms (median of 3), MB", f"{statistics.median(times) * 1e3:.0f}, "
                                                               f"{len(data) / 1e6:.2f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, action="append", default=[], help="checkout to measure (repeatable)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--units", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sampling", type=float, default=0.35, help="seconds per image the stand-in sampler sleeps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--levels", action="store_true", help="only the PNG level table")
    ap.add_argument("--photo", type=Path, help="a photograph for the level table")
    args = ap.parse_args(argv)
    if args.levels:
        header("PNG zlib level at 1,024 px (Pillow)")
        levels(args.photo)
        return
    roots = [r.resolve() for r in args.root] or [ROOT]
    header(f"generation loop non-sampling time, {args.repeats} interleaved repeats: "
           + ", ".join(f"{r} at {commit_of(r)}" for r in roots))
    picture = args.work / "picture.png"
    args.work.mkdir(parents=True, exist_ok=True)
    synthetic_image().save(picture)
    child = {"loras": [str(p) for p in write_loras(args.work)], "picture": str(picture), "units": args.units,
             "batch": args.batch,
             "sampling": args.sampling, "threads": args.threads, "work": str(args.work)}
    out: dict[Path, list[dict]] = {r: [] for r in roots}
    for rep in range(args.repeats):
        for root in roots if rep % 2 == 0 else roots[::-1]:
            res = run_child(root, child)
            out[root].append(res)
            print(f"  repeat {rep + 1} {root.name}: {json.dumps(res)}", flush=True)
    for root in roots:
        label = f"{root.name} {commit_of(root)}"
        per = [(r["loop_s"] - r["sleep_s"]) / r["images"] for r in out[root]]
        row(f"{label}: non-sampling s/image (median, min..max)", f"{statistics.median(per):.3f} "
                                                                   f"({min(per):.3f}..{max(per):.3f})")
        for k, what in (("put_s", "ImageStore.put 1024 px s"), ("chunks_s", "prompt_chunks s"),
                        ("switch_s", "LoRA switch s (mean of 5 after 3 loads)"), ("png_bytes", "PNG bytes")):
            row(f"{label}: {what} (median)", f"{statistics.median(r[k] for r in out[root]):.4g}")
    print(f"load avg after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
