"""What the report stage's tables hold in memory: each model's manifest (GRID_COLUMNS) and score rows, read as the
stage reads them (``report.inputs``) or plainly, on a synthetic review that ``benchmarks.scale`` writes.

    python -m benchmarks.scale ... (or: python -c "from benchmarks.scale import build_review; build_review(DIR, 500)")
    python -m benchmarks.report_tables DIR plain      # one fresh process per mode: RSS after - before the read
    python -m benchmarks.report_tables DIR compact

Prints the memory held (RSS growth after gc; freed memory pandas did not return to the system counts too) and the
seconds each read took.
"""

from __future__ import annotations

import gc
import resource
import sys
import time
from pathlib import Path

import psutil

from ghostreview.analysis.aggregate import manifests
from ghostreview.analysis.report import inputs


def held_mib(proc: psutil.Process, since: int) -> str:
    gc.collect()
    return f"{(proc.memory_info().rss - since) / 2**20:.1f} MiB held"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    work, mode = Path(args[0]), args[1]
    names = sorted(p.name for p in (work / "images").iterdir())
    proc = psutil.Process()
    gc.collect()
    base, start = proc.memory_info().rss, time.perf_counter()
    if mode == "compact":
        grids = inputs.read_manifests(work / "images", names)
    else:
        grids = {n: manifests(work / "images", [n], inputs.GRID_COLUMNS)[n] for n in names}
    print(f"{mode}: manifests of {len(grids)} models, {held_mib(proc, base)}, {time.perf_counter() - start:.1f} s")
    base, start = proc.memory_info().rss, time.perf_counter()
    if mode == "compact":
        scores = inputs.read_report_scores(work / "scores", names)
    else:
        scores = inputs.read_scores(work / "scores", names, inputs.SCORE_READ)
    print(f"{mode}: {len(scores)} score rows, {held_mib(proc, base)}, {time.perf_counter() - start:.1f} s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
