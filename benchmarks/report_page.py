"""The report page at full scale: 20 models x the v1 protocol's 1,568 images (31,360 images), 288 px synthetic PNGs.

Builds the review from synthetic data (no model runs): manifests from the real v1 benchmark (``benchmark_items``:
prompts, styles, LoRAs, seeds; the first ``--sdxl`` models are SDXL and draw the SDXL LoRA table) with A1111-style
infotexts, one PNG per image (a hard link to one of 512 pictures: a gradient with a tint and a little noise, about
140 KB at 288 px like a generated image; the report decodes and re-encodes every file as it would real ones),
random scores per metric, ``standardize`` (``--boot`` resamples), style reference and LoRA header
images as targets. Then it times ``write_report`` (tables, plots, page, image renditions) and opens the page in
Debian's chromium (playwright), reporting

- the page: ``index.html`` bytes, number of ``<img>`` elements, files and bytes of ``reports/images``;
- chromium: DOMContentLoaded and load (navigation timing, ms from navigation start), how many images had loaded
  at ``load`` (lazy loading: only those near the first screen), and the time to sort every grid (``#sort=score``)
  and to open the viewer on the last image of the page, median of ``--repeats`` fresh page loads.

    python -m benchmarks.report_page [--models 20] [--sdxl 4] [--size 288] [--boot 200] [--repeats 3]
                                     [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from benchmarks.common import cpu_model, load_average, row
from ghostreview.analysis.report import write_report
from ghostreview.analysis.report.targets import Targets
from ghostreview.analysis.standardize import standardize
from ghostreview.protocol import benchmark_items, load_benchmark
from ghostreview.scoring.registry import REGISTRY

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


def build_review(work: Path, n_models: int, n_sdxl: int, size: int, boot: int):
    """Images, manifests, scores, models and targets of the synthetic review under ``work``."""
    bench = load_benchmark(ROOT / "data" / "benchmark" / "v1")
    images_root = work / "images"
    rng = np.random.default_rng(0)
    pool = picture_pool(work / "pool", size, rng)
    manifests, score_parts, model_rows = {}, [], []
    for i in range(n_models):
        model, family = f"model-{i:02d}", "sdxl" if i < n_sdxl else "sd15"
        (images_root / model).mkdir(parents=True, exist_ok=True)
        autov2 = hashlib.sha256(model.encode()).hexdigest()[:10]
        rows = []
        for it in benchmark_items(bench, family):
            h = hashlib.sha256(f"{model}/{it.task}/{it.item}/{it.seed}".encode()).hexdigest()
            os.link(pool[int(h[:8], 16) % len(pool)], images_root / model / f"{h}.png")
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
    result = standardize(scores, models, REGISTRY, {}, n_boot=boot, seed=0)
    targets = make_targets(bench, work / "targets", rng)
    return result, scores, manifests, models, images_root, targets


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
            families[e.name] = family
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
                got = tab.evaluate("""() => {
                    const t = performance.getEntriesByType('navigation')[0];
                    const imgs = [...document.images];
                    const loaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
                    let s = performance.now();
                    window.location.hash = 'sort=score';
                    window.dispatchEvent(new HashChangeEvent('hashchange'));
                    const sort = performance.now() - s;
                    const figs = document.querySelectorAll('figure.thumb .shot');
                    s = performance.now();
                    figs[figs.length - 1].click();
                    const open = performance.now() - s;
                    return {dom_content_loaded_ms: t.domContentLoadedEventEnd, load_ms: t.loadEventEnd,
                            images: imgs.length, loaded_at_load: loaded, sort_all_grids_ms: sort,
                            open_viewer_ms: open};
                }""")
                for k, v in got.items():
                    runs.setdefault(k, []).append(float(v))
                tab.close()
        finally:
            browser.close()
    return {k: statistics.median(v) for k, v in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--sdxl", type=int, default=4, help="how many of the models are SDXL")
    ap.add_argument("--size", type=int, default=288, help="image side in pixels")
    ap.add_argument("--boot", type=int, default=200, help="bootstrap resamples of standardize")
    ap.add_argument("--repeats", type=int, default=3, help="fresh page loads in chromium")
    ap.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="ghostreview-report-page-"))
    print(f"CPU {cpu_model()}, load avg {load_average()} (start); work dir {work}", flush=True)
    try:
        start = time.perf_counter()
        result, scores, manifests, models, images_root, targets = build_review(
            work, args.models, args.sdxl, args.size, args.boot)
        n_images = sum(len(m) for m in manifests.values())
        row("synthetic review built (images, scores, standardize)", f"{time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        paths = write_report(result, scores, manifests, models, images_root, work / "reports", metrics=REGISTRY,
                             targets=targets)
        row("write_report (tables, plots, page, renditions)", f"{time.perf_counter() - start:.1f} s")
        files = [p for p in (work / "reports" / "images").rglob("*") if p.is_file()]
        row("models x images", f"{args.models} x {n_images // args.models} = {n_images}")
        row("index.html", f"{paths['index.html'].stat().st_size / 1e6:.1f} MB")
        row("reports/images", f"{len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.0f} MB")
        row("source PNGs (as files, before hard links)",
            f"{sum(p.stat().st_size for p in images_root.rglob('*.png')) / 1e6:.0f} MB")
        for k, v in in_chromium(paths["index.html"], args.repeats).items():
            row(f"chromium {k} (median of {args.repeats})", f"{v:,.0f}")
        print(f"load avg {load_average()} (end)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
