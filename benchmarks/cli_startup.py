"""What a `ghostreview` command costs before it does anything: a fresh interpreter per command, as a user runs it.

For each command (``--help``, ``leaderboard <board>``, ``--version``) this runs ``python -m ghostreview.cli ...`` in a
fresh interpreter and reports the wall time of the whole process (start-up, imports, the command, exit), median of
``--repeats``, and, from one extra ``python -X importtime`` run, the cumulative import time of ``ghostreview.cli`` and
which heavy libraries the process loaded. The leaderboard is a 3-model board written by this checkout's report
writer (``write_tables``) into a temporary directory.

Runs are interleaved (command A B C, then C B A, ...) so that none always runs first while the machine warms or
another job starts; the 1-minute load average is printed with the figures. ``--root`` measures another checkout
(e.g. a clone at an older commit); given twice, the two checkouts' runs are interleaved as well (a before/after under
the same load). A command a checkout does not have (``--version`` before it existed) is reported as failed.

    python -m benchmarks.cli_startup [--repeats 7] [--root PATH [--root PATH]]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import header, row

NAME = "cli_startup"
ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers", "open_clip", "pandas", "matplotlib", "rich")


def write_board(out: Path) -> Path:
    """leaderboard.csv (+ .md, .json) of a 3-model, 2-prompt review with aesthetic and CLIPScore."""
    import numpy as np
    import pandas as pd

    from ghostreview.analysis.report.tables import write_tables
    from ghostreview.analysis.standardize import standardize
    from ghostreview.scoring.registry import REGISTRY

    names = ["alpha", "beta", "gamma"]
    rng = np.random.default_rng(0)
    models = pd.DataFrame({"model": names, "family": ["sd15"] * 3, "checkpoint_file": [f"{m}.safetensors" for m in
                           names], "sha256": ["ab" * 32] * 3, "autov2": ["ABCDEF0123"] * 3,
                           "random_weights": [True] * 3})
    rows = [dict(model=m, task="general", item=item, seed=seed, image_hash=f"{m}{item}{seed}", metric=metric,
                 value=float(base - i + rng.normal(0, 0.1)), flags="", metric_version="1", weights_sha256="0" * 64)
            for i, m in enumerate(names) for item in ("p1", "p2") for seed in (0, 1)
            for metric, base in (("aesthetic", 6.0), ("clipscore", 30.0))]
    result = standardize(pd.DataFrame(rows), models, REGISTRY, {}, n_boot=50, seed=0, good_threshold=6.0)
    return write_tables(result, models, out, metrics=REGISTRY)["leaderboard.csv"]


def child_env(root: Path) -> dict[str, str]:
    """``root`` first on PYTHONPATH (its ghostreview, not the installed one)."""
    return dict(os.environ, PYTHONPATH=str(root), DVC_NO_ANALYTICS="1")


def run_once(root: Path, args: list[str]) -> tuple[float, int]:
    """(wall seconds, exit status) of ``python -m ghostreview.cli <args>`` in ``root``."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ghostreview.cli", *args], cwd=root, env=child_env(root),
                          capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode


def importtime(root: Path, args: list[str]) -> tuple[float, list[str]]:
    """(cumulative seconds of importing ghostreview.cli, heavy libraries the process loaded) from one
    ``python -X importtime`` run that imports the module, then runs the command."""
    code = "import sys; import ghostreview.cli as c; sys.argv = ['ghostreview', *sys.argv[1:]]; c.app()"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], cwd=root, env=child_env(root),
                          capture_output=True, text=True)
    cli_s, heavy = 0.0, []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            name = name.strip()
            if name == "ghostreview.cli":
                cli_s = int(cumulative) / 1e6
            if name in HEAVY:
                heavy.append(name)
    return cli_s, heavy


def commit_of(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h"], capture_output=True,
                          text=True).stdout.strip() or "?"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--root", type=Path, action="append", default=[],
                    help="a checkout whose ghostreview/ to measure (repeatable: interleaved, for a before/after)")
    args = ap.parse_args(argv)
    roots = [r.resolve() for r in args.root] or [ROOT]
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        board = write_board(Path(tmp) / "reports")
        commands = {"--help": ["--help"], "leaderboard": ["leaderboard", str(board)], "--version": ["--version"]}
        runs = [(root, name) for root in roots for name in commands]
        header(f"cli start-up, {args.repeats} interleaved repeats: " + ", ".join(f"{r} at {commit_of(r)}"
                                                                                 for r in roots))
        status = {key: run_once(key[0], commands[key[1]])[1] for key in runs}  # warm-up (page cache, bytecode)
        wall: dict[tuple[Path, str], list[float]] = {k: [] for k in runs}
        for r in range(args.repeats):
            for key in runs if r % 2 == 0 else runs[::-1]:
                wall[key].append(run_once(key[0], commands[key[1]])[0])
        for root, name in sorted(runs, key=lambda k: (list(commands).index(k[1]), roots.index(k[0]))):
            label = f"{name} ({root.name} {commit_of(root)})" if len(roots) > 1 else name
            key = (root, name)
            if status[key]:
                row(f"{label}", f"failed (exit status {status[key]})")
                continue
            cli_s, heavy = importtime(root, commands[name])
            row(f"{label}: process s (median, min..max)",
                f"{statistics.median(wall[key]):.2f} ({min(wall[key]):.2f}..{max(wall[key]):.2f})")
            row(f"{label}: import ghostreview.cli s, heavy loaded", f"{cli_s:.3f}; {', '.join(heavy) or 'none'}")
    print(f"load avg after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
