"""The largest grid page at N models, whole item against split parts, in chromium (issue 15: the report at 500
models must stay responsive; RESULTS section 11).

At 500 models one v1 item (a style: 32 seeds, two reference images) is 16,000 thumbnails; a page used to hold whole
items, so that item was one page. This builds only that item's grids, from synthetic data as
``benchmarks.report_page`` makes them (its picture pool, A1111 infotexts, targets), for N models (all SD1.5), and
writes the grid pages in each shape with ``write_html``:

- ``whole``: ``max_cells`` above the item's size: the one page the report wrote before items were split;
- ``split-<bound>``: ``max_cells=<bound>`` for each ``--bounds`` value (5,000: the bound before): the item's
  parts, one per page (``html.MAX_CELLS`` is 2,000).

The renditions are made once (the first shape) and reused from a shared cache by the others. Then chromium (Debian's,
playwright, 1400 x 900) opens each shape's largest grid page, the shapes interleaved in every round (whole, split,
...; the next round reversed), one fresh browser per load: ``report_page.in_chromium``'s figures (DOMContentLoaded,
load, <img> elements, loaded at load, sort every grid, open the viewer on the last image, longest frame gap while
scrolling end to end), median (min..max) over ``--repeats`` rounds.

    python -m benchmarks.report_split [--models 500] [--bounds 5000,2000] [--repeats 3] [--work DIR] [--keep]
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

from benchmarks.common import cpu_model, load_average, row
from benchmarks.report_page import ROOT, SETTINGS, in_chromium, largest_page, make_targets, picture_pool
from ghostreview.analysis.report.html import write_html
from ghostreview.analysis.standardize import standardize
from ghostreview.protocol import benchmark_items, load_benchmark
from ghostreview.scoring.registry import REGISTRY


def drawn_items(bench) -> list:
    """The benchmark items (one per seed) drawn: the first style's (an item with the most seeds, and target images)
    and the first general item's first seed (the index's leaderboard needs the raw aesthetic metric)."""
    items = list(benchmark_items(bench, "sd15"))
    style = [it for it in items if it.task == "style"]
    return [it for it in style if it.item == style[0].item] + [next(it for it in items if it.task == "general")]


def build_item(work: Path, n_models: int, size: int, boot: int):
    """(standardized result, scores, manifests, models, images root, targets) of ``n_models`` drawing
    ``drawn_items``."""
    bench = load_benchmark(ROOT / "data" / "benchmark" / "v1")
    rng = np.random.default_rng(0)
    pool, images_root = picture_pool(work / "pool", size, rng), work / "images"
    manifests, parts = {}, []
    for i in range(n_models):
        model = f"model-{i:03d}"
        (images_root / model).mkdir(parents=True, exist_ok=True)
        rows = []
        for it in drawn_items(bench):
            h = hashlib.sha256(f"{model}/{it.task}/{it.item}/{it.seed}".encode()).hexdigest()
            os.link(pool[int(h[:8], 16) % len(pool)], images_root / model / f"{h}.png")
            info = (f"{it.prompt}\nNegative prompt: {it.negative_prompt}\n" + SETTINGS.format(
                seed=it.seed, size=size, autov2=model[-6:], model=model))
            rows.append(dict(model=model, family="sd15", task=it.task, item=it.item, seed=it.seed,
                             image=f"{h}.png", image_hash=h, prompt=it.prompt, negative_prompt=it.negative_prompt,
                             loras="", lora_status="", width=size, height=size, flags="", infotext=info))
        manifests[model] = pd.DataFrame(rows)
        m = manifests[model][["model", "task", "item", "seed", "image_hash", "flags"]]
        for task, metric in (("style", "styleloss"), ("general", "aesthetic")):
            part = m[m["task"] == task]
            parts.append(part.assign(metric=metric, value=rng.normal(5 + 0.01 * i, 1, len(part)), metric_version="1",
                                     weights_sha256="0" * 64))
    names = list(manifests)
    models = pd.DataFrame({"model": names, "family": "sd15", "checkpoint_file": [f"{m}.safetensors" for m in names],
                           "sha256": "ab" * 32, "autov2": [m[-6:].upper() for m in names], "random_weights": False,
                           "title": [f"Synthetic model {m}" for m in names]})
    scores = pd.concat(parts, ignore_index=True)
    result = standardize(scores, models, REGISTRY, {}, n_boot=boot, seed=0)
    return result, scores, manifests, models, images_root, make_targets(bench, work / "targets", rng)


def write_shapes(work: Path, review, bounds: list[int]) -> dict[str, dict]:
    """Each shape's pages under ``work/<shape>``; by shape: seconds, pages, its largest page and that page's
    thumbnails."""
    result, scores, manifests, models, images_root, targets = review
    whole = sum(len(m) for m in manifests.values()) + 1
    out = {}
    for shape, bound in [("whole", whole)] + [(f"split-{b}", b) for b in bounds]:
        start = time.perf_counter()
        write_html(result, scores, manifests, models, images_root, work / shape, metrics=REGISTRY, plot_pngs={},
                   targets=targets, cache=work / "cache", workers=len(os.sched_getaffinity(0)), max_cells=bound)
        page = largest_page(work / shape)
        out[shape] = {"write_s": time.perf_counter() - start, "page": page,
                      "pages": len(list((work / shape / "pages").glob("*.html"))),
                      "page_mb": page.stat().st_size / 1e6,
                      "thumbs": page.read_text().count('<figure class="thumb"')}
    return out


def interleaved(pages: dict[str, Path], repeats: int) -> dict[str, dict[str, list[float]]]:
    """``in_chromium``'s figures per shape, one load per shape per round (a list per figure, in round order), the
    order of the shapes reversed every other round."""
    runs: dict[str, dict[str, list[float]]] = {s: {} for s in pages}
    for r in range(repeats):
        for shape in (list(pages) if r % 2 == 0 else list(pages)[::-1]):
            for k, v in in_chromium(pages[shape], 1).items():
                runs[shape].setdefault(k, []).append(v)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=500)
    ap.add_argument("--bounds", default="5000,2000", help="comma-separated max_cells of the split shapes")
    ap.add_argument("--size", type=int, default=288, help="image side in pixels")
    ap.add_argument("--boot", type=int, default=50, help="bootstrap resamples of standardize")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of chromium loads")
    ap.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ghostreview-report-split-"))
    print(f"CPU {cpu_model()}, {len(os.sched_getaffinity(0))} cores, load avg {load_average()} (start); "
          f"work dir {work}", flush=True)
    try:
        start = time.perf_counter()
        review = build_item(work, args.models, args.size, args.boot)
        row("synthetic item built (images, scores, standardize)", f"{time.perf_counter() - start:.1f} s")
        shapes = write_shapes(work, review, [int(b) for b in args.bounds.split(",")])
        for shape, s in shapes.items():
            row(f"{shape}: write_html / pages / largest page", f"{s['write_s']:.1f} s / {s['pages']} / "
                f"{s['page'].name}, {s['page_mb']:.1f} MB, {s['thumbs']:,} thumbnails")
        print(f"load avg {load_average()} (pages written)", flush=True)
        got = interleaved({shape: s["page"] for shape, s in shapes.items()}, args.repeats)
        for shape, figs in got.items():
            for key, values in figs.items():
                row(f"chromium {shape}: {key}", f"{statistics.median(values):,.0f} ({min(values):,.0f}.."
                    f"{max(values):,.0f})")
        print(f"load avg {load_average()} (end)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
