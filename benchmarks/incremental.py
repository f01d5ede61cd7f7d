"""Incremental review: `dvc repro` after adding a 4th model to a reviewed 3-model demo, against a 4-model review from
scratch.

Same approach as ``tests/test_dvc_workflow.py``: copy the project's files (``git ls-files -co --exclude-standard``,
without generated data and the kit) into a temp dir, ``git init`` and commit, build the demo kit with
``python -m ghostreview.cli kit demo/kit``, point ``paths.image_store`` and ``paths.cache`` into the temp dir (so
"from scratch" means an empty image store and hash cache), and run ``python -m dvc repro``.

- incremental: a workspace that has already reviewed the demo's 3 models (untimed setup, its time is reported too)
  gets ``demo-sd15-c`` (the kit's spare SD1.5 checkpoint) added to params; the timed `dvc repro` should run only that
  model's 6 stages plus standardize and report.
- full: a fresh workspace whose params list the 4 models from the start; the timed `dvc repro` runs everything.
Both use the demo's params.yaml unchanged otherwise (full demo benchmark: 30 prompts, 9 styles, 16 LoRAs per family,
1 image each). ``--quick`` cuts the benchmark with ``ghostreview.protocol.cut_benchmark`` (2 prompts, 2 styles, 2 LoRAs
per family).
The kit is built once with the CLI and copied into each workspace (its build is deterministic: byte-identical files).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import header, row, sh, stage_env
from ghostreview.protocol import cut_benchmark

NAME = "incremental"
ROOT = Path(__file__).resolve().parents[1]
SKIP = ("data/images", "data/scores", "data/embeddings", "data/refstats", "data/standardized", "reports/", "demo/")
NEW_MODEL = ("demo-sd15-c", {"checkpoint": "demo/kit/models/tiny-sd15-c.safetensors",
                             "config": "demo/kit/configs/sd15", "title": "Demo SD1.5 C (random weights)"})
PER_MODEL_STAGES = ("generate", "embed", "aesthetic", "clipscore", "styleloss", "loraloss")


def environment(ws: Path) -> dict:
    return stage_env(ws)


def make_workspace(ws: Path, kit: Path | None, models: dict, quick: bool) -> dict:
    """Copy the project into ``ws``, set params, git init, build (or copy) the kit; returns the environment."""
    files = sh(["git", "ls-files", "-co", "--exclude-standard"], ROOT, dict(os.environ)).split("\n")
    for rel in filter(None, files):
        if rel.startswith(SKIP) or not (ROOT / rel).is_file():
            continue
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, ws / rel)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    if quick:
        cut_benchmark(ws / params["benchmark"]["dir"], ws / "data" / "benchmark" / "cut", 2, 2, 2)
        params["benchmark"]["dir"] = "data/benchmark/cut"
    params["paths"]["image_store"] = str(ws / "store")
    params["paths"]["cache"] = str(ws / "cache")
    params["models"] = models
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = environment(ws)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "init"]):
        sh(cmd, ws, env)
    if kit is None:
        sh([sys.executable, "-m", "ghostreview.cli", "kit", "demo/kit", "--benchmark", params["benchmark"]["dir"]],
           ws, env)
    else:
        shutil.copytree(kit, ws / "demo" / "kit")
    return env


def repro(ws: Path, env: dict) -> tuple[float, set[str]]:
    """Seconds of one `python -m dvc repro` and the stages it ran."""
    start = time.perf_counter()
    out = sh([sys.executable, "-m", "dvc", "repro"], ws, env)
    return time.perf_counter() - start, set(re.findall(r"Running stage '([^']+)'", out))


def demo_models() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())["models"]


def incremental_once(tmp: Path, kit: Path | None, quick: bool) -> tuple[float, float, set[str], Path]:
    """(setup seconds for 3 models, seconds of the incremental repro, stages it ran, workspace)."""
    ws = Path(tempfile.mkdtemp(prefix="inc-", dir=tmp))
    env = make_workspace(ws, kit, demo_models(), quick)
    setup_s, _ = repro(ws, env)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["models"][NEW_MODEL[0]] = NEW_MODEL[1]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    inc_s, ran = repro(ws, env)
    return setup_s, inc_s, ran, ws


def full_once(tmp: Path, kit: Path | None, quick: bool) -> tuple[float, set[str], Path]:
    ws = Path(tempfile.mkdtemp(prefix="full-", dir=tmp))
    env = make_workspace(ws, kit, {**demo_models(), NEW_MODEL[0]: NEW_MODEL[1]}, quick)
    full_s, ran = repro(ws, env)
    return full_s, ran, ws


def run(quick: bool = False, device: str = "cpu", repeats: int = 1) -> dict:
    header(f"{NAME}: dvc repro after adding a 4th model vs a 4-model review from scratch")
    row("benchmark", "cut (2 prompts, 2 styles, 2 LoRAs/family)" if quick else "full demo (params.yaml as shipped)")
    setups, incs, fulls = [], [], []
    with tempfile.TemporaryDirectory(prefix="gr-bench-inc-") as tmp_s:
        tmp, kit = Path(tmp_s), None
        for r in range(repeats):
            order = ("inc", "full") if r % 2 == 0 else ("full", "inc")
            for which in order:
                if which == "inc":
                    setup_s, inc_s, ran, ws = incremental_once(tmp, kit, quick)
                    expected = {f"{s}@{NEW_MODEL[0]}" for s in PER_MODEL_STAGES} | {"standardize", "report"}
                    if ran != expected:
                        raise AssertionError(f"incremental repro ran {sorted(ran)}, expected {sorted(expected)}")
                    setups.append(setup_s)
                    incs.append(inc_s)
                else:
                    full_s, ran_full, ws = full_once(tmp, kit, quick)
                    fulls.append(full_s)
                    row("stages run by the full repro", str(len(ran_full)))
                if kit is None:  # the first workspace built the kit with the CLI; later ones copy it
                    kit = tmp / "kit"
                    shutil.copytree(ws / "demo" / "kit", kit)
                shutil.rmtree(ws)
    import statistics

    out = {"repeats": repeats, "setup_3_models_s": statistics.median(setups),
           "incremental_s": statistics.median(incs), "full_4_models_s": statistics.median(fulls)}
    out["ratio"] = out["incremental_s"] / out["full_4_models_s"]
    row("3-model review from scratch (setup), s", " ".join(f"{s:.1f}" for s in setups))
    row("add demo-sd15-c, dvc repro (8 stages), s", " ".join(f"{s:.1f}" for s in incs))
    row("4-model review from scratch, s", " ".join(f"{s:.1f}" for s in fulls))
    row("ratio incremental / full (target <= 0.35)", f"{out['ratio']:.3f}")
    return out
