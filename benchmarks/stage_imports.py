"""What importing each DVC stage script costs: every stage is a new Python process, so its imports are paid per stage.

For each ``stages/<name>.py`` this runs, in a fresh interpreter, the script's top level without its ``main()``
(``runpy.run_path`` under another ``__name__``: the imports and ``stage_runtime()``, nothing else) and reports

- ``process s``: wall time of the whole interpreter (start-up + imports + exit), median of ``--repeats``;
- ``import s``: the time of the stage module's top level measured inside that process, median;
- with ``python -X importtime`` (one extra run per stage), which heavy libraries it loaded (torch, torchvision,
  diffusers, transformers, open_clip, pandas, matplotlib...) and what each cost when first imported.

Runs are interleaved (stage A B C ..., then ... C B A) so that no stage always runs first while the machine warms or
another job starts; the 1-minute load average is printed with the figures. ``--root`` measures another checkout
(e.g. a clone at an older commit); given twice, the two checkouts' runs are interleaved as well (a before/after
under the same load). All with this interpreter.

    python -m benchmarks.stage_imports [--repeats 5] [--root PATH [--root PATH]] [--stages embed,report]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import header, row

NAME = "stage_imports"
ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "diffusers", "transformers", "open_clip", "timm", "safetensors", "pandas", "scipy",
         "matplotlib", "PIL")

# Runs in the child: the stage's top level (imports, stage_runtime) timed, then the heavy libraries it loaded.
_CHILD = """
import json, runpy, sys, time
start = time.perf_counter()
runpy.run_path(sys.argv[1], run_name="stage_imports")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "loaded": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}))
"""


def stage_scripts(root: Path, names: list[str] | None) -> dict[str, Path]:
    scripts = {p.stem: p for p in sorted((root / "stages").glob("*.py"))}
    if names:
        unknown = sorted(set(names) - set(scripts))
        if unknown:
            raise SystemExit(f"no stage script {unknown} in {root / 'stages'} (have: {', '.join(scripts)})")
        scripts = {n: scripts[n] for n in names}
    return scripts


def child_env(root: Path) -> dict[str, str]:
    """The stages' environment: ``root`` first on PYTHONPATH (its ghostreview, not an installed one), offline."""
    return dict(os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1",
                PYTHONDONTWRITEBYTECODE="")


def run_once(script: Path, root: Path) -> tuple[float, float, list[str]]:
    """(process seconds, import seconds, heavy libraries loaded) of one fresh interpreter importing ``script``."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(script), json.dumps(HEAVY)], cwd=root,
                          env=child_env(root), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"importing {script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return wall, float(out["seconds"]), list(out["loaded"])


def importtime_heavy(script: Path, root: Path) -> dict[str, float]:
    """Cumulative seconds of each heavy library's own import (its top module's ``python -X importtime`` line: what
    it cost when first imported, including what it imported that was not loaded yet)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", _CHILD, str(script), json.dumps(HEAVY)],
                          cwd=root, env=child_env(root), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"importing {script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            if name.strip() in HEAVY:
                out[name.strip()] = int(cumulative) / 1e6
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def commit_of(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h"], capture_output=True,
                          text=True).stdout.strip() or "?"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--root", type=Path, action="append", default=[],
                    help="a checkout whose stages/ and ghostreview/ to measure (repeatable: the checkouts' runs are "
                         "interleaved too, for a before/after; default: this one)")
    ap.add_argument("--stages", default="", help="comma-separated stage script names (default: all)")
    args = ap.parse_args(argv)
    roots = [r.resolve() for r in args.root] or [ROOT]
    chosen = [s for s in args.stages.split(",") if s]
    runs = {(root, name): script for root in roots for name, script in stage_scripts(root, chosen).items()}
    header(f"stage imports, {args.repeats} interleaved repeats: " + ", ".join(f"{r} at {commit_of(r)}" for r in roots))
    for (root, _), script in runs.items():  # warm-up: the page cache and __pycache__, untimed
        run_once(script, root)
    wall: dict[tuple[Path, str], list[float]] = {k: [] for k in runs}
    imp: dict[tuple[Path, str], list[float]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(args.repeats):
        for key in order if r % 2 == 0 else order[::-1]:
            w, i, _ = run_once(runs[key], key[0])
            wall[key].append(w)
            imp[key].append(i)
    for (root, name), script in sorted(runs.items(), key=lambda kv: (kv[0][1], roots.index(kv[0][0]))):
        label = f"{name} ({root.name} {commit_of(root)})" if len(roots) > 1 else name
        key = (root, name)
        heavy = ", ".join(f"{p} {s:.2f}" for p, s in importtime_heavy(script, root).items())
        row(f"{label}: process s (median, min..max)",
            f"{statistics.median(wall[key]):.2f} ({min(wall[key]):.2f}..{max(wall[key]):.2f})")
        row(f"{label}: import s (median)", f"{statistics.median(imp[key]):.2f}")
        row(f"{label}: heavy libraries (-X importtime, s)", heavy or "none")
    print(f"load avg after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
