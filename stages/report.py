"""DVC stage report: leaderboard (md/csv/json), metrics.json for `dvc metrics`, plots and the offline index.html with
the grid pages/ and the images/ they link to (renditions of the generated images, thumbnails, and the style reference
and LoRA header images as targets), reusing renditions from <paths.cache>/renditions."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from ghostreview import validate
from ghostreview.analysis.aggregate import models_table
from ghostreview.analysis.report import write_report
from ghostreview.analysis.report.arena import read_arena
from ghostreview.analysis.report.inputs import read_manifests, read_report_scores, shared_texts
from ghostreview.analysis.report.targets import Targets, benchmark_targets
from ghostreview.analysis.standardize import Standardized
from ghostreview.config import Params
from ghostreview.errors import stage_main
from ghostreview.generation.families import LORA_FAMILIES
from ghostreview.scoring.registry import REGISTRY
from ghostreview.scoring.run import header_families, reference_sets
from ghostreview.util.rendition import RENDITIONS
from ghostreview.util.runtime import progress_bar


def targets(params_path: Path) -> Targets:
    """The grids' targets from ``benchmark.dir``, ``paths.style_refs`` and ``paths.lora_headers.<family>`` (the sets
    the scores were computed against; a broken set fails naming its directory, params key and fix)."""
    params = validate.load(params_path)
    root = params_path.resolve().parent
    bench = validate.benchmark(params, root, str(params_path))
    p, tasks = params.paths, params.benchmark.tasks
    header_dirs, _ = header_families({f: validate.resolve(root, getattr(p.lora_headers, f)) for f in LORA_FAMILIES}
                                     if "lora" in tasks else {})
    style_dir = validate.resolve(root, p.style_refs) if "style" in tasks else None
    return benchmark_targets(bench, reference_sets(bench, style_dir, header_dirs))


def rendition_cache(params: Params, params_path: Path) -> Path:
    """``<paths.cache>/renditions``: the report's image renditions, kept across runs (DVC deletes the stage's
    outputs before it runs; a cache outside them keeps the run-cache, which ``persist: true`` would disable)."""
    return validate.resolve(params_path.resolve().parent, params.paths.cache) / RENDITIONS


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--standardized", required=True, type=Path)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--scores", required=True, type=Path)
    ap.add_argument("--arena", type=Path, default=None, help="the arena stage's output (human ranking, judges)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml", type=Path)
    args = ap.parse_args(argv)

    params = validate.load(args.params)
    names = list(params.models)
    # three steps: read the results, decode the target images (style references, LoRA headers), write the report
    with progress_bar(total=3, desc="report", unit="steps") as bar:
        standardized = Standardized.read(args.standardized)
        standardized = dataclasses.replace(standardized, images=shared_texts(standardized.images))
        scores, grids = read_report_scores(args.scores, names), read_manifests(args.images, names)
        models = models_table(args.images, names, {n: m.title for n, m in params.models.items()})
        bar.update()
        grid_targets = targets(args.params)
        bar.update()
        paths = write_report(standardized, scores, grids, models, args.images, args.out, metrics=REGISTRY,
                             targets=grid_targets, cache=rendition_cache(params, args.params),
                             workers=len(os.sched_getaffinity(0)), arena=args.arena and read_arena(args.arena))
        bar.update()
    print("report: " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
