"""DVC bookkeeping at scale: `dvc status` and a no-op `dvc repro` on a synthetic review of N models.

The workspace is the repository's own pipeline (dvc.yaml, params.yaml, the stage scripts and ghostreview/, the
benchmark), with N synthetic models written the way ``ghostreview add-model`` writes them (:func:`write_models`), every
other dependency a tiny placeholder file, and every stage's outputs small placeholder files recorded in dvc.lock by
``dvc commit -f`` (the state after a full run, without running one). The benchmark checks that ``dvc status`` then
reports nothing to do (else it fails: a stale workspace would time DVC's re-run decisions, not its bookkeeping), and
times ``dvc status`` and ``dvc repro`` (which must run nothing). What it times is DVC reading dvc.yaml, params and
dvc.lock, and hashing deps through its state database: exactly the cost that grows with the models.

    python -m benchmarks.dvc_scale --models 10 50 150 [--repeats 1] [--workdir DIR] [--profile]

``measure(n, workdir)`` is the library entry point (benchmarks/scale.py calls it).
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("dvc.yaml", "params.yaml", "stages", "ghostreview", "data/benchmark/v1", "tools")
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.org",
       "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.org"}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd)


def model_entry(i: int) -> dict:
    return {"checkpoint": f"models/synthetic-{i:04d}.safetensors", "config": "demo/kit/configs/sd15",
            "title": f"Synthetic model {i}"}


def write_models(ws: Path, n: int) -> None:
    """N models in params.yaml's `models:` table, as add-model writes them (the one place that knows the layout)."""
    params = yaml.safe_load((ws / "params.yaml").read_text(encoding="utf-8"))
    params["models"] = {f"synthetic-{i:04d}": model_entry(i) for i in range(n)}
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    for i in range(n):
        touch(ws / model_entry(i)["checkpoint"])


def touch(path: Path, directory: bool = False) -> None:
    """A small placeholder: a file, or a directory holding one file."""
    if path.exists():
        return
    if directory or not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
        (path / "placeholder.txt").write_text(path.name, encoding="utf-8")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(path.name, encoding="utf-8")


def copy_project(ws: Path, code: Path = ROOT) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for rel in COPIED:
        src = code / rel
        if src.is_dir():
            shutil.copytree(src, ws / rel, ignore=ignore)
        elif src.exists():
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, ws / rel)


def placeholders(ws: Path) -> int:
    """Every stage's outputs and missing deps as placeholders; returns the number of stage instances."""
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:
        stages = list(repo.index.stages)
        for stage in stages:
            for out in stage.outs:
                touch(Path(out.fs_path))
        for stage in stages:
            for dep in stage.deps:
                if not hasattr(dep, "params") and not Path(dep.fs_path).exists():
                    touch(Path(dep.fs_path))
    return len(stages)


def build(n: int, ws: Path, code: Path = ROOT) -> int:
    """The synthetic workspace of ``n`` models in ``ws`` (created empty), committed as after a full run."""
    ws.mkdir(parents=True)
    copy_project(ws, code)
    write_models(ws, n)
    run(["git", "init", "-q"], ws)
    dvc("init", "-q", cwd=ws)
    dvc("config", "core.analytics", "false", cwd=ws)
    count = placeholders(ws)
    dvc("commit", "-f", "-q", cwd=ws)
    run(["git", "add", "-A"], ws)
    run(["git", "commit", "-q", "-m", "synthetic review"], ws)
    check_up_to_date(ws)
    return count


def check_up_to_date(ws: Path) -> None:
    out = dvc("status", cwd=ws).stdout
    if "up to date" not in out:
        raise RuntimeError(f"the synthetic workspace is not up to date:\n{out[:2000]}")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def no_op_repro(ws: Path) -> None:
    out = dvc("repro", cwd=ws).stdout
    if "Running stage" in out:
        raise RuntimeError(f"dvc repro ran a stage in an up-to-date workspace:\n{out[:2000]}")


def workspace(workdir: Path, n: int, code: Path) -> Path:
    return workdir / f"dvc-scale-{n}-{zlib.crc32(str(code.resolve()).encode()):08x}"


def measure(n: int, workdir: Path, repeats: int = 1, code: Path = ROOT) -> dict[str, float]:
    """Seconds (median of ``repeats``) of `dvc status` and a no-op `dvc repro` on N models, built under workdir.

    ``code``: the checkout whose dvc.yaml, params.yaml and code are copied (another one: a before/after comparison).
    """
    ws = workspace(Path(workdir), n, code)
    if ws.exists():
        shutil.rmtree(ws)
    start = time.perf_counter()
    stages = build(n, ws, code)
    setup = time.perf_counter() - start
    status, repro = [], []
    for r in range(repeats):  # interleaved: status, repro, repro, status, ...
        pair = [("status", lambda: check_up_to_date(ws)), ("repro", lambda: no_op_repro(ws))]
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            (status if name == "status" else repro).append(timed(fn))
    return {"models": n, "stages": stages, "setup_s": setup, "dvc_status_s": sorted(status)[len(status) // 2],
            "dvc_repro_noop_s": sorted(repro)[len(repro) // 2]}


def profile(ws: Path, top: int = 15) -> str:
    """cProfile of `dvc status` in ``ws``: the cumulative top entries."""
    prof = ws / "status.prof"
    run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "dvc", "status"], ws)
    stats = pstats.Stats(str(prof))
    total = stats.total_tt
    rows = [f"total {total:.1f} s"]
    entries = sorted(stats.stats.items(), key=lambda kv: -kv[1][3])  # type: ignore[attr-defined]
    for (file, line, name), (_, _, _, cum, _) in entries[:top]:
        rows.append(f"{cum:7.2f} s {100 * cum / total:5.1f}%  {name}  {Path(file).name}:{line}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    from benchmarks.common import machine_line

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, nargs="+", default=[10, 50, 150])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--profile", action="store_true", help="also profile `dvc status` at the largest N")
    ap.add_argument("--keep", action="store_true", help="keep the workspaces")
    ap.add_argument("--code", type=Path, nargs="+", default=[ROOT],
                    help="checkouts to compare (e.g. a `git worktree` of main and this one), interleaved per N")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dvc-scale-"))
    print(machine_line())
    print("code  models  stages  setup_s  dvc_status_s  dvc_repro_noop_s  load")
    for n in args.models:
        for code in args.code:
            r = measure(n, work, args.repeats, code)
            ws = workspace(work, n, code)
            print(f"{code}  {n:6d}  {r['stages']:6d}  {r['setup_s']:7.1f}  {r['dvc_status_s']:12.1f}  "
                  f"{r['dvc_repro_noop_s']:16.1f}  {os.getloadavg()[0]:.2f}", flush=True)
            if args.profile and n == args.models[-1]:
                print(profile(ws))
            if not args.keep:
                shutil.rmtree(ws)


if __name__ == "__main__":
    main()
