"""Scale: synthetic reviews of N models (N = 5 ... 500) and what each aggregate step costs as N grows.

A synthetic review is what generate and the scoring stages leave on disk for N models of the v1 protocol (1,568 images
each: 960 general, 288 style, 320 LoRA), written in their formats and read back by the stages' own readers:

- ``images/<model>/manifest.csv`` (MANIFEST_COLUMNS, A1111-style infotexts; no PNG files) and ``model.json``;
- ``scores/<model>/<metric>.csv`` (SCORE_COLUMNS) for aesthetic and clipscore (general images), styleloss and
  loraloss (style / LoRA images) with their five per-layer rows each, as the StyleLoss stages write them;
- every fifth model is SDXL (its LoRA items form their own pool), a few images are flagged black (excluded) or
  prompt_truncated (kept), each LoRA item lists one model in ``made_with`` (the NoTM variant has work to do).

Steps, each where its module exists (a missing one is skipped with a note, never a failure):

- ``standardize``: the standardize stage's work (models table, manifests, score tables, ``standardize`` with
  ``--boot`` resamples, ``Standardized.write``) in a fresh process: seconds per part and peak RSS. ``--code DIR``
  runs it against another checkout's ``ghostreview`` (before/after comparisons; the synthetic review is the same);
- ``report``: ``benchmarks.report_page.measure(n=N, workdir=DIR)``;
- ``dvc``: ``benchmarks.dvc_scale.measure(n=N, workdir=DIR)``.

It prints one table, rows = steps, columns = N, with machine, load and date, and the scaling exponent of standardize
(slope of log time on log N between successive sizes).

    python -m benchmarks.scale [--sizes 5,20,100,300,500] [--steps standardize,report,dvc] [--boot 1000]
                               [--code DIR] [--work DIR] [--keep] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import cpu_model, load_average
from ghostreview.generation.manifest import MANIFEST_COLUMNS
from ghostreview.protocol import benchmark_items, load_benchmark
from ghostreview.scoring.table import SCORE_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
SIZES = (5, 20, 100, 300, 500)
STEPS = ("standardize", "report", "dvc")
LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
TABLES = {"aesthetic": ("general", False), "clipscore": ("general", False), "styleloss": ("style", True),
          "loraloss": ("lora", True)}  # metric -> (task of its images, per-layer rows written with it)
SETTINGS = ("Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: {seed}, Size: 512x512, "
            "Model hash: {autov2}, Model: {model}, Version: ghostreview")


def model_name(i: int) -> str:
    return f"model-{i:03d}"


def family_of(i: int) -> str:
    return "sdxl" if i % 5 == 4 else "sd15"


def items_frame(bench, family: str) -> pd.DataFrame:
    """The protocol's image rows of one family: task, item, seed, prompt, negative prompt."""
    return pd.DataFrame([dict(task=it.task, item=it.item, seed=it.seed, prompt=it.prompt,
                              negative_prompt=it.negative_prompt) for it in benchmark_items(bench, family)])


def manifest_frame(items: pd.DataFrame, model: str, family: str, autov2: str, rng: np.random.Generator) -> pd.DataFrame:
    """The manifest generate would write for ``model`` (no PNG exists: the aggregate steps never open one)."""
    keys = [hashlib.sha256(f"{model}/{t}/{i}/{s}".encode()).hexdigest()
            for t, i, s in zip(items["task"], items["item"], items["seed"])]
    flags = np.where(rng.random(len(items)) < 0.003, "black",
                     np.where(rng.random(len(items)) < 0.01, "prompt_truncated", ""))
    info = [f"{p}\nNegative prompt: {n}\n" + SETTINGS.format(seed=s, autov2=autov2, model=model)
            for p, n, s in zip(items["prompt"], items["negative_prompt"], items["seed"])]
    out = items.assign(model=model, family=family, image=[f"{k}.png" for k in keys], image_hash=keys, loras="",
                       lora_status="", width=512, height=512, flags=flags, infotext=info)
    return out.loc[:, list(MANIFEST_COLUMNS)]


def score_frame(manifest: pd.DataFrame, metric: str, values: np.ndarray) -> pd.DataFrame:
    """Score rows of ``metric`` for ``manifest``'s rows, as ``score_rows`` writes them (a hex weights hash)."""
    weights = hashlib.sha256(metric.split(".")[0].encode()).hexdigest()
    out = manifest.loc[:, ["model", "task", "item", "seed", "image_hash", "flags"]].assign(
        metric=metric, value=values, metric_version="1", weights_sha256=weights)
    return out.loc[:, list(SCORE_COLUMNS)]


def score_tables(manifest: pd.DataFrame, i: int, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """metric -> the table its scoring stage writes: a model effect, an item effect, noise; per-layer rows too."""
    out = {}
    for metric, (task, layered) in TABLES.items():
        part = manifest[manifest["task"] == task]
        item_effect = part["item"].map(lambda s: int(hashlib.md5(s.encode()).hexdigest()[:4], 16) / 65535.0)
        values = 5 + 0.01 * i + item_effect.to_numpy() + rng.normal(0, 1, len(part))
        frames = [score_frame(part, metric, values)]
        if layered:
            frames += [score_frame(part, f"{metric}.{layer}", rng.lognormal(0, 1, len(part))) for layer in LAYERS]
        out[metric] = pd.concat(frames, ignore_index=True)
    return out


def build_review(work: Path, n: int) -> dict:
    """Write the synthetic review of ``n`` models under ``work``; returns names, made_with and the row count."""
    bench = load_benchmark(ROOT / "data" / "benchmark" / "v1")
    items = {f: items_frame(bench, f) for f in ("sd15", "sdxl")}
    rng = np.random.default_rng(n)
    names, rows = [], 0
    for i in range(n):
        model, family = model_name(i), family_of(i)
        autov2 = hashlib.sha256(model.encode()).hexdigest()[:10].upper()
        img_dir, score_dir = work / "images" / model, work / "scores" / model
        img_dir.mkdir(parents=True, exist_ok=True)
        score_dir.mkdir(parents=True, exist_ok=True)
        manifest = manifest_frame(items[family], model, family, autov2, rng)
        manifest.to_csv(img_dir / "manifest.csv", index=False)
        info = dict(name=model, family=family, checkpoint_name=model, sha256="ab" * 32, autov2=autov2,
                    random_weights=False, clip_skip=None, prediction="epsilon", vae_sha256=None, vae_file=None)
        (img_dir / "model.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for metric, table in score_tables(manifest, i, rng).items():
            table.to_csv(score_dir / f"{metric}.csv", index=False)
            rows += len(table)
        names.append(model)
    loras = sorted({(f, it) for f, frame in items.items() for it in frame.loc[frame["task"] == "lora", "item"]})
    made_with = {item: [names[k % n]] for k, (_, item) in enumerate(loras)}
    spec = {"names": names, "made_with": made_with, "score_rows": rows}
    (work / "review.json").write_text(json.dumps(spec), encoding="utf-8")
    return spec


# The standardize stage's work, run in a fresh process against the ``ghostreview`` found first on PYTHONPATH (this
# checkout or ``--code``): only calls that exist in both, so a before/after pair times the same work.
STANDARDIZE_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
start = time.perf_counter()
import numpy as np, pandas as pd
import ghostreview
from ghostreview.analysis.aggregate import manifests, models_table, undrawn_rows
from ghostreview.analysis.standardize import standardize
from ghostreview.scoring.registry import REGISTRY
from ghostreview.scoring.table import read_scores
work, boot, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
spec = json.loads((work / "review.json").read_text())
names, t = spec["names"], {"import": time.perf_counter() - start}

def lap(name, since):
    t[name] = time.perf_counter() - since
    return time.perf_counter()

now = time.perf_counter()
models = models_table(work / "images", names)
import inspect
if "columns" in inspect.signature(read_scores).parameters:  # the stage reads only VALUE_COLUMNS (since issue 15)
    from ghostreview.scoring.table import VALUE_COLUMNS
    scores = read_scores(work / "scores", names, VALUE_COLUMNS)
else:
    scores = read_scores(work / "scores", names)
try:  # the stage reads only the manifest columns undrawn_rows needs (since issue 15)
    from ghostreview.analysis.aggregate import UNDRAWN_COLUMNS
    tables = manifests(work / "images", names, UNDRAWN_COLUMNS)
except ImportError:
    tables = manifests(work / "images", names)
undrawn = undrawn_rows(tables, REGISTRY)
if not undrawn.empty:
    scores = pd.concat([scores, undrawn], ignore_index=True)
now = lap("read", now)
result = standardize(scores, models, REGISTRY, spec["made_with"], n_boot=boot, seed=0)
now = lap("standardize", now)
result.write(out)
now = lap("write", now)
s = result.scores.sort_values(["metric", "model"])
digest = np.round(s["score"].to_numpy(float), 9).tobytes() + s["rank"].fillna(-1).to_numpy(float).tobytes()
import hashlib
# VmHWM: this process's own peak (ru_maxrss would include the parent's resident size at fork time)
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
peak_kb = int(status["VmHWM"].split()[0]) if "VmHWM" in status else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": t, "total_s": time.perf_counter() - start, "score_rows": len(scores),
                  "peak_rss_mb": peak_kb / 1024,
                  "point_digest": hashlib.sha256(digest).hexdigest()[:16], "code": ghostreview.__file__}))
"""


def measure_standardize(work: Path, boot: int, code: Path) -> dict:
    """Run STANDARDIZE_CHILD on the review under ``work`` with ``code``'s ghostreview; its JSON line as a dict."""
    out = work / f"standardized-{hashlib.sha256(str(code).encode()).hexdigest()[:8]}"
    env = dict(os.environ, PYTHONPATH=str(code))
    proc = subprocess.run([sys.executable, "-c", STANDARDIZE_CHILD, str(work), str(boot), str(out)], env=env,
                          cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"standardize on {work} with {code} failed:\n{proc.stderr[-3000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if not got["code"].startswith(str(code)):
        raise RuntimeError(f"the child imported {got['code']}, not the code under {code}")
    shutil.rmtree(out, ignore_errors=True)
    return got


def optional_step(module: str) -> Callable[..., dict] | None:
    """``benchmarks.<module>.measure`` if that module exists (another part of issue 15 writes it), else None."""
    if importlib.util.find_spec(f"benchmarks.{module}") is None:
        return None
    return getattr(importlib.import_module(f"benchmarks.{module}"), "measure", None)


def exponent(sizes: Sequence[int], seconds: Sequence[float]) -> list[str]:
    """Slope of log(seconds) on log(N) between successive sizes, as 'N1->N2: k'."""
    out = []
    for (n1, t1), (n2, t2) in zip(zip(sizes, seconds), zip(sizes[1:], seconds[1:])):
        out.append(f"{n1}->{n2}: {math.log(t2 / t1) / math.log(n2 / n1):.2f}")
    return out


def review_of(work: Path, n: int) -> tuple[dict, float]:
    """The synthetic review of ``n`` models under ``work`` (built, or a kept one reused) and its build seconds."""
    if (work / "review.json").is_file():
        return json.loads((work / "review.json").read_text(encoding="utf-8")), 0.0
    start = time.perf_counter()
    return build_review(work, n), time.perf_counter() - start


def standardize_runs(review: Path, n: int, boot: int, codes: dict[str, Path], flip: bool) -> dict[str, dict]:
    """``measure_standardize`` once per code, in reverse order when ``flip`` (every other size: interleaved, so that
    neither code always runs first while the machine's load changes)."""
    labels = list(codes)[::-1] if flip else list(codes)
    out = {}
    for label in labels:
        out[label] = measure_standardize(review, boot, codes[label])
        print(f"  N={n}: standardize ({label}) {json.dumps(out[label])}; load {load_average()}", flush=True)
    return {label: out[label] for label in codes}


def run_sizes(sizes: Sequence[int], steps: Sequence[str], boot: int, codes: dict[str, Path], work: Path,
              keep: bool = False) -> dict[int, dict]:
    """Build each review, measure each step on it, and remove it unless ``keep`` (disk stays bounded); by N."""
    figures: dict[int, dict] = {}
    for k, n in enumerate(sizes):
        review = work / f"n{n}"
        spec, build_s = review_of(review, n)
        fig: dict = {"build_s": build_s, "score_rows": spec["score_rows"]}
        print(f"  N={n}: synthetic review ready in {build_s:.0f} s ({spec['score_rows']:,} score rows); "
              f"load {load_average()}", flush=True)
        if "standardize" in steps:
            fig["standardize"] = standardize_runs(review, n, boot, codes, flip=k % 2 == 1)
        for step, module in (("report", "report_page"), ("dvc", "dvc_scale")):
            if step not in steps:
                continue
            measure = optional_step(module)
            if measure is None:
                print(f"  N={n}: {step}: benchmarks.{module}.measure does not exist yet; skipped", flush=True)
                continue
            fig[step] = measure(n=n, workdir=review / step)
            print(f"  N={n}: {step} {json.dumps(fig[step], default=str)}", flush=True)
        if not keep:
            shutil.rmtree(review, ignore_errors=True)
        figures[n] = fig
    return figures


def cell(fig: dict, step: str, key: str) -> str:
    value = fig.get(step, {}).get(key) if isinstance(fig.get(step), dict) else None
    if value is None:
        return ""
    return f"{value:,.1f}" if isinstance(value, float) else str(value)


def table(figures: dict[int, dict]) -> str:
    """Markdown table: rows = measured figures, columns = N."""
    sizes = list(figures)
    lines = ["| what | " + " | ".join(f"N={n}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]

    def add(label: str, values: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    add("score rows read", [f"{figures[n]['score_rows']:,}" for n in sizes])
    labels = list(next((f["standardize"] for f in figures.values() if "standardize" in f), {}))
    for label in labels:
        runs = [figures[n]["standardize"][label] for n in sizes]
        for part in ("read", "standardize", "write"):
            add(f"standardize stage ({label}): {part}, s", [f"{r['seconds'][part]:.1f}" for r in runs])
        add(f"standardize stage ({label}): total with imports, s", [f"{r['total_s']:.1f}" for r in runs])
        add(f"standardize stage ({label}): peak RSS, MB", [f"{r['peak_rss_mb']:,.0f}" for r in runs])
    for step in ("report", "dvc"):
        keys = sorted({k for f in figures.values() if isinstance(f.get(step), dict) for k in f[step]})
        for key in keys:
            add(f"{step}: {key}", [cell(figures[n], step, key) for n in sizes])
    return "\n".join(lines)


def exponents(figures: dict[int, dict]) -> list[str]:
    """Per code: the scaling exponents of ``standardize()`` and of the stage's total between successive sizes."""
    done = [n for n in figures if "standardize" in figures[n]]
    if len(done) < 2:
        return []
    out = []
    for label in figures[done[0]]["standardize"]:
        runs = [figures[n]["standardize"][label] for n in done]
        out.append(f"{label}: standardize() " + ", ".join(exponent(done, [r["seconds"]["standardize"] for r in runs]))
                   + "; stage total " + ", ".join(exponent(done, [r["total_s"] for r in runs])))
    return out


def run(quick: bool = False, device: str = "cpu") -> dict:
    """benchmarks.run's contract: figures as a dict (``--quick``: N=5, 200 resamples, standardize only)."""
    sizes, steps, boot = ((5,), ("standardize",), 200) if quick else (SIZES, STEPS, 1000)
    work = Path(tempfile.mkdtemp(prefix="ghostreview-scale-"))
    try:
        figures = run_sizes(sizes, steps, boot, {"this checkout": ROOT}, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(figures), flush=True)
    return {"boot": boot, "figures": {str(n): f for n, f in figures.items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated numbers of models")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of standardize")
    ap.add_argument("--before", type=Path, help="another checkout: standardize runs with its code too, interleaved")
    ap.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory and the reviews (reused)")
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        ap.error(f"--steps: unknown {unknown}; choose from {', '.join(STEPS)}")
    codes = {"after": ROOT, "before": args.before.resolve()} if args.before else {"this checkout": ROOT}
    work = args.work or Path(tempfile.mkdtemp(prefix="ghostreview-scale-"))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"benchmarks.scale: {started}, CPU {cpu_model()}, {os.cpu_count()} cores, load {load_average()}, "
          f"code {json.dumps({k: str(v) for k, v in codes.items()})}, {args.boot} resamples", flush=True)
    try:
        figures = run_sizes(sizes, steps, args.boot, codes, work, keep=args.keep)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nmachine: CPU {cpu_model()}, {os.cpu_count()} cores; started {started}, load at end {load_average()}")
    print(table(figures))
    for line in exponents(figures):
        print("scaling exponent (slope of log t on log N), " + line)
    if args.json:
        args.json.write_text(json.dumps({"started": started, "boot": args.boot, "codes": {k: str(v) for k, v in
                                         codes.items()}, "figures": {str(n): f for n, f in figures.items()}},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
