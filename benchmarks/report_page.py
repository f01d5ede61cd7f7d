"""The report at scale: N models x the v1 protocol's 1,568 images, 288 px synthetic PNGs; from scratch, then again
after one model was added (the rendition cache of the first run reused), each in a fresh process.

Builds the review from synthetic data (no model runs): manifests from the real v1 benchmark (``benchmark_items``:
prompts, styles, LoRAs, seeds; the first ``--sdxl`` models are SDXL and draw the SDXL LoRA table) with A1111-style
infotexts, one PNG per image (a hard link to one of 512 pictures: a gradient with a tint and a little noise, about
140 KB at 288 px like a generated image; the report decodes and re-encodes every file as it would real ones),
random scores per metric, ``standardize`` (``--boot`` resamples) of the first N models and of all N+1, style
reference and LoRA header images as targets. Each input is pickled; ``write_report`` then runs in a spawned process
(nothing inherited) with ``--workers`` rendering processes and a rendition cache under the work directory, which
holds what the generate stage's image store leaves there (``util.rendition.prerender``: the renditions of every
image, made as it was stored; here one rendition per pool picture, linked under each image's key, the same bytes);
with ``--cold``, nothing (a workspace whose images came by ``dvc pull``: the report renders every image):

1. from scratch: N models, a new output directory;
2. one model added: N+1 models, a fresh output directory (DVC deletes the stage's outputs), the same cache (holding
   the first run's renditions, and with the store's, the new model's).

For each: wall time, peak RSS of the report process (``VmHWM``; it includes the review's tables it loaded, as the
report stage holds them), the peak of the summed PSS of it and its rendering workers (sampled from /proc every 0.3 s:
the physical memory of the whole tree), renditions made (new cache entries), files and bytes. Then chromium
(Debian's, playwright) opens run 2's index and its largest grid page:
DOMContentLoaded and load (ms from navigation start), ``<img>`` elements and how many had loaded at ``load`` (lazy
loading), the time to sort every grid (``#sort=score``), to open the viewer on the page's last image, and a
responsiveness probe (the longest gap between animation frames while scrolling the page end to end), median of
``--repeats`` fresh loads.

``measure(n, workdir)`` is the same two runs as a dict of figures, for ``benchmarks.scale``'s ``report`` step.

    python -m benchmarks.report_page [--models 20] [--sdxl 4] [--size 288] [--boot 200] [--workers 2]
                                     [--repeats 3] [--cold] [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import pickle
import resource
import shutil
import statistics
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from benchmarks.common import cpu_model, load_average, row
from ghostreview.analysis.report import write_report
from ghostreview.analysis.report.inputs import compact_manifest, shared_texts
from ghostreview.analysis.report.targets import Targets
from ghostreview.analysis.standardize import standardize
from ghostreview.generation.families import table_family
from ghostreview.protocol import benchmark_items, load_benchmark
from ghostreview.scoring.registry import REGISTRY
from ghostreview.util.rendition import JPEG_QUALITY, as_rgb, entry, file_identity, rendition_key, sizes, views

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
METRICS_OF = {"general": ("aesthetic", "clipscore"), "style": ("styleloss",), "lora": ("loraloss",)}


def picture(size: int, seed: int, tint: np.ndarray) -> Image.Image:
    """A smooth gradient picture with a tint and faint noise (compresses like an image, decodes in full)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, np.pi)
    base = (np.cos(angle) * x + np.sin(angle) * y)[..., None] * 160 + tint[None, None, :]
    noisy = base + rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


# An A1111 settings line as generate writes one (infotext.py): the part of an infotext that differs per model
SETTINGS = ("Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: {seed}, Size: {size}x{size}, "
            "Model hash: {autov2}, Model: {model}, Denoising strength: 0.5, Hires upscale: 2, Hires steps: 10, "
            "Hires upscaler: Latent, Version: ghostreview")
POOL = 512  # distinct pictures; every image file is a hard link to one of them (disk: the pool only)


def picture_pool(where: Path, size: int, rng: np.random.Generator) -> list[Path]:
    """POOL distinct PNG pictures (about 140 KB each at 288 px, like generated ones)."""
    where.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(POOL):
        path = where / f"{k}.png"
        picture(size, k, rng.uniform(0, 90, 3)).save(path)
        files.append(path)
    return files


def pool_renditions(pool: list[Path], where: Path) -> dict[Path, dict[int | None, Path]]:
    """Each pool picture's renditions (``util.rendition.views``, as the store makes them), one file each."""
    where.mkdir(parents=True, exist_ok=True)
    out: dict[Path, dict[int | None, Path]] = {}
    for k, src in enumerate(pool):
        with Image.open(src) as im:
            im.load()
            pxs = sizes(*im.size)
            for px, view in views(as_rgb(im), pxs):
                dest = where / f"{k}-{px}.jpg"
                view.save(dest, format="JPEG", quality=JPEG_QUALITY)
                out.setdefault(src, {})[px] = dest
    return out


def prerendered(cache: Path, image_hash: str, png: Path, made: dict[int | None, Path]) -> None:
    """The cache entries the store's ``prerender`` leaves for ``png``: its picture's renditions under its keys."""
    identity = file_identity(image_hash, png, png.stat().st_size)
    for px, src in made.items():
        dest = Path(entry(cache, rendition_key(identity, px)))
        dest.parent.mkdir(parents=True, exist_ok=True)
        with suppress(FileExistsError):
            os.link(src, dest)


def build_review(work: Path, n_models: int, n_sdxl: int, size: int, cache: Path | None = None):
    """Images, manifests, scores, models and targets of the synthetic review under ``work`` (not standardized);
    with ``cache``, the renditions the image store makes as it stores each image (``prerendered``)."""
    bench = load_benchmark(ROOT / "data" / "benchmark" / "v1")
    images_root = work / "images"
    rng = np.random.default_rng(0)
    pool = picture_pool(work / "pool", size, rng)
    made = pool_renditions(pool, work / "pool-renditions") if cache is not None else {}
    manifests, score_parts, model_rows = {}, [], []
    for i in range(n_models):
        model, family = f"model-{i:02d}", "sdxl" if i < n_sdxl else "sd15"
        (images_root / model).mkdir(parents=True, exist_ok=True)
        autov2 = hashlib.sha256(model.encode()).hexdigest()[:10]
        rows = []
        for it in benchmark_items(bench, family):
            h = hashlib.sha256(f"{model}/{it.task}/{it.item}/{it.seed}".encode()).hexdigest()
            picked = pool[int(h[:8], 16) % len(pool)]
            os.link(picked, images_root / model / f"{h}.png")
            if cache is not None:
                prerendered(cache, h, images_root / model / f"{h}.png", made[picked])
            info = (f"{it.prompt}\nNegative prompt: {it.negative_prompt}\n" + SETTINGS.format(
                seed=it.seed, size=size, autov2=autov2, model=model))
            rows.append(dict(model=model, family=family, task=it.task, item=it.item, seed=it.seed, image=f"{h}.png",
                             image_hash=h, prompt=it.prompt, negative_prompt=it.negative_prompt, loras="",
                             lora_status="", width=size, height=size, flags="", infotext=info))
        manifest = pd.DataFrame(rows)
        manifests[model] = manifest
        for task, metrics in METRICS_OF.items():
            part = manifest[manifest["task"] == task]
            for metric in metrics:
                score_parts.append(part[["model", "task", "item", "seed", "image_hash", "flags"]].assign(
                    metric=metric, value=rng.normal(5 + 0.05 * i, 1, len(part)), metric_version="1",
                    weights_sha256="0" * 64))
        model_rows.append(dict(model=model, family=family, checkpoint_file=f"{model}.safetensors", sha256="ab" * 32,
                               autov2=autov2.upper(), random_weights=False, title=f"Synthetic {family} model {i}"))
    models = pd.DataFrame(model_rows)
    scores = pd.concat(score_parts, ignore_index=True)
    targets = make_targets(bench, work / "targets", rng)
    return scores, manifests, models, images_root, targets


def pickle_run(path: Path, names: list[str], scores, manifests, models, images_root, targets, boot: int) -> None:
    """The report's inputs for the models ``names`` (standardized over them alone), pickled to ``path``."""
    scores = scores[scores["model"].isin(names)].reset_index(drop=True)
    models = models[models["model"].isin(names)].reset_index(drop=True)
    result = standardize(scores, models, REGISTRY, {}, n_boot=boot, seed=0)
    with open(path, "wb") as f:
        pickle.dump((result, shared_texts(scores), {n: compact_manifest(manifests[n]) for n in names}, models,
                     images_root, targets), f)  # held as the report stage holds them (report.inputs)


def report_run(inputs: Path, out: Path, cache: Path, workers: int, answer) -> None:
    """In a spawned process: load the inputs, ``write_report``; sends wall seconds and its peak RSS (kB)."""
    with open(inputs, "rb") as f:
        result, scores, manifests, models, images_root, targets = pickle.load(f)
    start = time.perf_counter()
    write_report(result, scores, manifests, models, images_root, out, metrics=REGISTRY, targets=targets, cache=cache,
                 workers=workers)
    seconds = time.perf_counter() - start
    answer.send((seconds, peak_rss_kb()))


def peak_rss_kb() -> int:
    """This process's peak resident set (``VmHWM``, kB). Not ``getrusage``'s ``ru_maxrss``: Linux carries the peak
    of the forked parent's memory across ``exec`` into it, so a spawned child reports at least its parent's size
    (the driver holding the whole synthetic review: 2.2 GB at 500 models, whatever the report used)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return out


def pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` (shared pages divided among their sharers), 0 once it is gone."""
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


class TreeMemory(threading.Thread):
    """Samples the summed PSS of a process tree every 0.3 s; ``peak_kb`` is the largest sum seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.3):
            self.peak_kb = max(self.peak_kb, sum(pss_kb(p) for p in descendants(self.pid)))


def timed_report(inputs: Path, out: Path, cache: Path, workers: int) -> tuple[float, float, float]:
    """(seconds, peak RSS MB of the report process, peak summed PSS MB of it and its workers) of one report in a
    fresh process."""
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=report_run, args=(inputs, out, cache, workers, theirs))
    proc.start()
    assert proc.pid is not None
    memory = TreeMemory(proc.pid)
    memory.start()
    seconds, self_kb = mine.recv()
    memory.done.set()
    memory.join()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"report run failed ({proc.exitcode})")
    return seconds, self_kb / 1024, memory.peak_kb / 1024


def tree_size(root: Path) -> tuple[int, int]:
    """(files, bytes) under ``root``."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def make_targets(bench, where: Path, rng: np.random.Generator) -> Targets:
    """Two 512 px reference images per style, one 512 px header image per LoRA of both tables."""
    where.mkdir(parents=True, exist_ok=True)
    images: dict[tuple[str, str], tuple[Path, ...]] = {}
    for s in bench.styles:
        files = []
        for k in range(2):
            path = where / f"style-{s.name}-{k}.png"
            picture(512, int(rng.integers(1 << 30)), rng.uniform(0, 90, 3)).save(path)
            files.append(path)
        images[("style", s.name)] = tuple(files)
    families = {}
    for family, entries in bench.loras.items():
        for e in entries:
            path = where / f"lora-{family}-{e.name}.png"
            picture(512, int(rng.integers(1 << 30)), rng.uniform(0, 90, 3)).save(path)
            images[("lora", e.name)] = (path,)
            families[e.name] = table_family(family)  # a base table (Pony, Illustrious): its family's folders
    return Targets(images, families)


def in_chromium(page: Path, repeats: int) -> dict[str, float]:
    """Median navigation timings and interaction costs over ``repeats`` fresh loads of ``page``."""
    from playwright.sync_api import sync_playwright

    runs: dict[str, list[float]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for _ in range(repeats):
                tab = browser.new_page(viewport={"width": 1400, "height": 900})
                tab.goto(page.as_uri(), wait_until="load", timeout=600_000)
                got = tab.evaluate("""async () => {
                    const t = performance.getEntriesByType('navigation')[0];
                    const imgs = [...document.images];
                    const loaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
                    let s = performance.now();
                    window.location.hash = 'sort=score';
                    window.dispatchEvent(new HashChangeEvent('hashchange'));
                    const sort = performance.now() - s;
                    const figs = document.querySelectorAll('figure.thumb .shot');
                    let open = 0;
                    if (figs.length) {
                        s = performance.now();
                        figs[figs.length - 1].click();
                        open = performance.now() - s;
                        document.getElementById('lightbox').click();
                    }
                    // responsiveness: the longest gap between animation frames while scrolling end to end
                    let gap = 0, last = performance.now();
                    const step = window.innerHeight;
                    for (let y = 0; y < document.body.scrollHeight; y += step) {
                        window.scrollTo(0, y);
                        await new Promise(r => requestAnimationFrame(r));
                        const now = performance.now(); gap = Math.max(gap, now - last); last = now;
                    }
                    const after = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
                    return {dom_content_loaded_ms: t.domContentLoadedEventEnd, load_ms: t.loadEventEnd,
                            images: imgs.length, loaded_at_load: loaded, sort_all_grids_ms: sort,
                            open_viewer_ms: open, longest_frame_gap_scrolling_ms: gap,
                            loaded_after_scroll: after};
                }""")
                for k, v in got.items():
                    runs.setdefault(k, []).append(float(v))
                tab.close()
        finally:
            browser.close()
    return {k: statistics.median(v) for k, v in runs.items()}


def report_runs(work: Path, n: int, sdxl: int, size: int, boot: int, workers: int, cold: bool = False) -> dict:
    """Build the synthetic review of ``n`` + 1 models under ``work``, then the two timed reports (from scratch on
    ``n`` models, one model added on the same cache); flat figures, one key per measured quantity. cold: no
    renditions from the image store in the cache (the report makes every one)."""
    start = time.perf_counter()
    cache = work / "cache"
    scores, manifests, models, images_root, targets = build_review(work, n + 1, sdxl, size, None if cold else cache)
    names = models["model"].tolist()
    runs = {"scratch": names[:-1], "added": names}
    for run, run_names in runs.items():
        pickle_run(work / f"{run}.pkl", run_names, scores, manifests, models, images_root, targets, boot)
    fig: dict = {"models": n, "images": sum(len(manifests[m]) for m in names[:-1]),
                 "build_s": time.perf_counter() - start, "cold": cold}
    del scores, manifests
    for run in runs:
        before = tree_size(cache)[0] if cache.exists() else 0
        seconds, self_mb, tree_mb = timed_report(work / f"{run}.pkl", work / run, cache, workers)
        pages = list((work / run / "pages").glob("*.html"))
        fig |= {f"{run}_s": seconds, f"{run}_rss_mb": self_mb, f"{run}_pss_tree_mb": tree_mb,
                f"{run}_renditions_made": tree_size(cache)[0] - before, f"{run}_pages": len(pages),
                f"{run}_largest_page_mb": max(p.stat().st_size for p in pages) / 1e6,
                f"{run}_index_mb": (work / run / "index.html").stat().st_size / 1e6,
                f"{run}_load": load_average()}
    return fig


def largest_page(out: Path) -> Path:
    return max((out / "pages").glob("*.html"), key=lambda p: p.stat().st_size)


def measure(n: int, workdir: Path, sdxl: int | None = None, size: int = 288, boot: int = 200,
            workers: int | None = None, chromium: bool = False, repeats: int = 1, cold: bool = False) -> dict:
    """benchmarks.scale's step ``report``: ``report_runs`` at ``n`` models under ``workdir`` (every fifth model SDXL
    unless ``sdxl`` says how many), then, with ``chromium``, the index and the largest grid page of the second run
    in chromium (``chromium_<page>_<figure>`` keys). The work directory is removed afterwards (its rendition cache
    alone holds a JPEG per image)."""
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        fig = report_runs(workdir, n, n // 5 if sdxl is None else sdxl, size, boot,
                          workers or len(os.sched_getaffinity(0)), cold)
        if chromium:
            out = workdir / "added"
            for name, page in (("index", out / "index.html"), ("largest_page", largest_page(out))):
                fig |= {f"chromium_{name}_{k}": v for k, v in in_chromium(page, repeats).items()}
        return fig
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=20, help="models of the first report (the second has one more)")
    ap.add_argument("--sdxl", type=int, default=4, help="how many of the models are SDXL")
    ap.add_argument("--size", type=int, default=288, help="image side in pixels")
    ap.add_argument("--boot", type=int, default=200, help="bootstrap resamples of standardize")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="rendering processes")
    ap.add_argument("--repeats", type=int, default=3, help="fresh page loads in chromium")
    ap.add_argument("--cold", action="store_true", help="no renditions from the image store: the report makes all")
    ap.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="ghostreview-report-page-"))
    print(f"CPU {cpu_model()}, {len(os.sched_getaffinity(0))} cores, load avg {load_average()} (start); "
          f"work dir {work}", flush=True)
    try:
        fig = report_runs(work, args.models, args.sdxl, args.size, args.boot, args.workers, args.cold)
        row("synthetic review built (images, scores, 2x standardize)", f"{fig['build_s']:.1f} s")
        row("models x images (run 1)", f"{args.models} x {fig['images'] // args.models} = {fig['images']:,}")
        for k, run in enumerate(("scratch", "added"), 1):
            label = f"run {k} ({args.models + k - 1} models, {'from scratch' if k == 1 else 'one model added'})"
            row(f"{label}: write_report", f"{fig[f'{run}_s']:.1f} s")
            row(f"{label}: peak RSS of the report process / peak PSS of it + workers",
                f"{fig[f'{run}_rss_mb']:,.0f} MB / {fig[f'{run}_pss_tree_mb']:,.0f} MB")
            row(f"{label}: renditions made (new cache entries)", f"{fig[f'{run}_renditions_made']:,}")
            row(f"{label}: pages/", f"{fig[f'{run}_pages']} pages (largest {fig[f'{run}_largest_page_mb']:.1f} MB)")
            row(f"{label}: index.html", f"{fig[f'{run}_index_mb']:.2f} MB")
            files, size = tree_size(work / run / "images")
            row(f"{label}: images/ (hard links to the cache)", f"{files:,} files, {size / 1e6:,.0f} MB")
            print(f"load avg {fig[f'{run}_load']}", flush=True)
        out = work / "added"
        big = largest_page(out)
        for name, page in (("index.html", out / "index.html"), (f"largest grid page {big.name}", big)):
            for key, value in in_chromium(page, args.repeats).items():
                row(f"chromium {name}: {key} (median of {args.repeats})", f"{value:,.0f}")
        print(f"load avg {load_average()} (end)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
