"""Full-size rehearsal: the real pipeline, through ``dvc repro``, on full-size random-weight stand-ins.

``python -m benchmarks.rehearsal`` (CPU) or ``python -m benchmarks.rehearsal --device cuda`` (GPU):

1. Workspace: the committed project (``git archive HEAD``) in a temp dir, git-initialised, with a cut benchmark made by
   the CLI (``ghostreview cut-benchmark --general 1 --styles 1 --loras 1``) and ``examples/params.full-v1.yaml`` as
   ``params.yaml``: the v1 protocol's shape (DPM++ 2M Karras, CFG 7, batch 4, hires fix x2 with the Latent upscaler,
   CLIP ViT-L/14 at 224 px, VGG19 at ``scoring.style.image_size`` 512), with its own empty image store and cache.
2. Kit (``ghostreview.kit.fullsize``, built once into ``--kit``, default ``~/.cache/ghostreview/rehearsal``): an SD1.5
   and an SDXL checkpoint (fp16 LDM single files, real parameter counts), ``ViT-L-14-quickgelu``, the LAION head,
   torchvision's whole VGG19, kohya LoRAs at rank 32 (SD1.5) / 16 (SDXL), header and style reference images.
   Hard-linked into the workspace's ``kit/`` (git-ignored), so DVC hashes them as ordinary dependencies.
3. Every stage instance runs as its own ``python -m dvc repro -s <stage>``, in pipeline order, each waited for with
   ``os.wait4``: its wall time, CPU time and peak RSS (``ru_maxrss`` of the largest process of that tree, i.e. the
   stage script) are exact per stage. On a GPU each stage process also reports ``torch.cuda.max_memory_allocated``
   / ``max_memory_reserved`` at exit, through a ``sitecustomize`` hook put on ``PYTHONPATH`` (no stage change).
   Then ``dvc repro`` of the whole pipeline must find nothing to do.
4. Figures go to ``benchmarks/results/<date>-rehearsal-<device>.json`` and, as a table, to a marked section of
   ``benchmarks/RESULTS.md`` (replaced on a rerun of the same device).

CPU (default): v1 settings except size and steps, which must fit 2 cores in < 30 min: 128 px base, 2 steps, hires x2
to 256 px with 1 step; 8 images per checkpoint (general 2 + style 2: one batch; LoRA 4: one batch).
``--device cuda``: the true v1 generation settings (512 px, 25 steps, hires x2 to 1024 px with 10 steps) in two
passes (8, then 24 images per checkpoint; the second draws only the 16 new ones and rescores all). Each per-model
stage's time is fitted as fixed + per-image x images from the two passes, and the full 1,568-image review per
checkpoint is extrapolated from it. Not part of the test suite.

On the device tool's GPU machine (an H200 image with Python 3.12, torch, transformers, safetensors, peft, typer,
pyyaml, but no diffusers, open_clip_torch, ftfy, ruamel.yaml or DVC): download the missing wheels here into an
ignored ``.whl/`` as the device README says (``pip download --no-deps --only-binary=:all: --python-version 3.12
... diffusers==0.42.1 open_clip_torch==3.3.0 ftfy wcwidth ruamel.yaml dvc==3.67.1`` plus DVC's own dependencies,
listed by ``pip install --dry-run --report``; check the total stays under the 64 MiB carry limit), then one call:
``run(carry=[".whl"], timeout_s=600, command="python3 -m pip install -q --no-index --no-deps --target /tmp/site
.whl/*.whl && export PYTHONPATH=/tmp/site && pip install -q --no-index --no-deps -e . ; python3 -m benchmarks.rehearsal
--device cuda --kit /tmp/kit --no-record --json $OUT/rehearsal-cuda.json 2>&1 | tee $OUT/log")``.
The kit build (10 GB of random weights, one generator per file) takes a few minutes of that machine's CPU, inside
the call: budget it. Back here, ``python -m benchmarks.rehearsal --record-from <the returned JSON>`` writes it to
``benchmarks/results/`` and its section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from benchmarks.common import cpu_model, sh, stage_env, versions

NAME = "rehearsal"
ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
RESULTS_DIR = ROOT / "benchmarks" / "results"
V1_PARAMS = ROOT / "examples" / "params.full-v1.yaml"
DEFAULT_KIT = Path("~/.cache/ghostreview/rehearsal")
CUT = {"general": 1, "styles": 1, "loras": 1}
MODEL_KEYS = {"sd15": "fullsize-sd15", "sdxl": "fullsize-sdxl"}
PER_MODEL_STAGES = ("embed", "aesthetic", "clipscore", "styleloss", "loraloss")
# Images per item for each pass: general 2 + style 2 draw as one batch of 4 (same LoRAs and settings), LoRA 4 as one.
CPU_PASSES = ({"general": 2, "style": 2, "lora": 4},)
CUDA_PASSES = ({"general": 2, "style": 2, "lora": 4}, {"general": 6, "style": 6, "lora": 12})
CPU_GENERATION = {"width": 128, "height": 128, "steps": 2, "hires_steps": 1}
# Scorer forwards are padded to scoring.batch_size (pixels and scores must not depend on batch-mates): with 2 to 8
# images per stage, v1's 16 would compute 2x to 8x the images. The CPU rehearsal scores in forwards of 4.
CPU_SCORING_BATCH = 4
# MemAvailable (GiB) a stage needs before it starts: the machine is shared, and SDXL in float32 on the CPU peaks at
# about 21 GiB RSS while loading (7 GB of mapped fp16 file + 14 GB of float32 weights). Unlisted stages: 4 GiB.
CPU_MEMORY_NEED_GIB = {"generate@fullsize-sd15": 8, "generate@fullsize-sdxl": 16}
MEMORY_WAIT_S = 900  # wait at most this long for that memory, then start anyway (the wait is recorded)
OOM_RETRIES = 1  # a stage killed by the kernel's OOM killer (another process took the memory) is retried once
CUDA_LOG_ENV = "GHOSTREVIEW_REHEARSAL_CUDA_LOG"
SECTION = "<!-- rehearsal:{device}:{edge} (written by python -m benchmarks.rehearsal) -->"

# Put on PYTHONPATH for the stage processes only: at exit, a process that used CUDA appends its peak memory.
CUDA_HOOK = f'''import atexit, json, os, sys


def _ghostreview_rehearsal_cuda_peak():
    torch, path = sys.modules.get("torch"), os.environ.get("{CUDA_LOG_ENV}")
    if torch is None or not path:
        return
    try:
        if not torch.cuda.is_initialized():
            return
        record = {{"argv": sys.argv[:4], "max_allocated": torch.cuda.max_memory_allocated(),
                  "max_reserved": torch.cuda.max_memory_reserved()}}
    except Exception:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\\n")


atexit.register(_ghostreview_rehearsal_cuda_peak)
'''


@dataclass
class StageRun:
    """One ``dvc repro -s <stage>``: what it cost and what it processed."""

    stage: str
    pass_no: int
    rc: int
    wall_s: float
    cpu_s: float
    max_rss_kib: int
    load_before: float
    load_after: float
    images: int | None = None
    mem_available_gib: float | None = None
    memory_wait_s: float = 0.0
    gpu_max_allocated: int | None = None
    gpu_max_reserved: int | None = None
    log: str = ""


@dataclass
class Rehearsal:
    """Everything a run records (the JSON written to benchmarks/results/)."""

    command: str
    device: str
    date: str
    machine: dict
    versions: dict
    commit: str
    settings: dict
    passes: list[dict]
    kit_build_s: dict = field(default_factory=dict)
    stages: list[StageRun] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    total_s: float = 0.0
    final_repro: dict = field(default_factory=dict)
    failure: str | None = None
    failure_log: str = ""
    extrapolation: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- machine
def load1() -> float:
    return os.getloadavg()[0]


def load_text() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def memory_gib(field: str = "MemTotal") -> float:
    with open("/proc/meminfo", encoding="utf-8") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kib / 2**20


def wait_for_memory(need_gib: float, timeout_s: float = MEMORY_WAIT_S) -> float:
    """Wait until MemAvailable >= ``need_gib`` (at most ``timeout_s``); returns the seconds waited."""
    start = time.perf_counter()
    while memory_gib("MemAvailable") < need_gib and time.perf_counter() - start < timeout_s:
        time.sleep(10)
    return time.perf_counter() - start


def machine(device: str) -> dict:
    out = {"cpu": cpu_model(), "cores": os.cpu_count(), "ram_gib": round(memory_gib(), 1),
           "python": platform.python_version(), "gpu": None}
    if device.startswith("cuda"):
        import torch

        props = torch.cuda.get_device_properties(0)
        out["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return out


# ---------------------------------------------------------------------------------------------------- workspace
def environment(ws: Path) -> dict:
    """The stages' environment: the project venv first on PATH, the workspace's code, the CUDA hook, offline."""
    hook = ws / ".rehearsal" / "hook"
    return stage_env(hook, ws)


def rehearsal_params(ws: Path, device: str, counts: dict, generation: dict | None) -> dict:
    """examples/params.full-v1.yaml with the cut benchmark, the kit's files, a fresh store and the two models.

    ``generation`` (CPU only) overrides width, height, steps and hires steps, and the scorers' batch becomes
    ``CPU_SCORING_BATCH``; everything else is the v1 protocol's.
    """
    params = yaml.safe_load((ws / "examples" / "params.full-v1.yaml").read_text())
    params["benchmark"]["dir"] = "data/benchmark/rehearsal"
    params["benchmark"]["images_per_item"] = dict(counts)
    params["paths"] = {"loras": {f: f"kit/loras/{f}" for f in MODEL_KEYS},
                       "lora_headers": {f: f"kit/lora_headers/{f}" for f in MODEL_KEYS},
                       "style_refs": "kit/style_refs", "image_store": str(ws / "store"), "cache": str(ws / "cache")}
    gen = params["generation"]
    gen["device"] = device
    if generation:
        gen.update(width=generation["width"], height=generation["height"], steps=generation["steps"])
        gen["hires"]["steps"] = generation["hires_steps"]
    from ghostreview.kit.fullsize import MODELS, SCORERS

    scoring = params["scoring"]
    scoring["device"] = device
    if generation:
        scoring["batch_size"] = CPU_SCORING_BATCH
    scoring["clip"].update(weights=f"kit/scorers/{SCORERS['clip']}", model_config=None, sha256=None)
    scoring["aesthetic"].update(weights=f"kit/scorers/{SCORERS['aesthetic']}", sha256=None)  # random head: no pin
    scoring["style"].update(vgg_weights=f"kit/scorers/{SCORERS['vgg19']}", sha256=None)
    params["models"] = {key: {"checkpoint": f"kit/models/{MODELS[f][0]}", "clip_skip": 1, "vae": None,
                              "prediction": "epsilon", "title": f"Full-size {f} stand-in (random weights)"}
                        for f, key in MODEL_KEYS.items()}
    return params


def write_params(ws: Path, params: dict) -> None:
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_workspace(ws: Path) -> str:
    """The committed project in ``ws`` (git archive HEAD), a cut benchmark, git init + commit. Returns HEAD's hash."""
    commit = sh(["git", "rev-parse", "HEAD"], ROOT).strip()
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(ws)], input=archive.stdout, check=True)
    (ws / "dvc.lock").unlink(missing_ok=True)
    hook = ws / ".rehearsal" / "hook"
    hook.mkdir(parents=True)
    (hook / "sitecustomize.py").write_text(CUDA_HOOK)
    with open(ws / ".gitignore", "a", encoding="utf-8") as f:
        f.write("\n# rehearsal\n/kit/\n/store/\n/cache/\n/.rehearsal/\n")
    env = environment(ws)
    sh([sys.executable, "-m", "ghostreview.cli", "cut-benchmark", "data/benchmark/rehearsal",
        *(f"--{k}={v}" for k, v in CUT.items())], ws, env)
    return commit


def git_commit(ws: Path, message: str) -> None:
    env = environment(ws)
    if not (ws / ".git").exists():
        sh(["git", "init", "-q"], ws, env)
    sh(["git", "add", "-A"], ws, env)
    sh(["git", "-c", "user.name=rehearsal", "-c", "user.email=rehearsal@localhost", "commit", "-qm", message,
        "--allow-empty"], ws, env)


def link_kit(kit: Path, dest: Path) -> str:
    """Hard-link every kit file into ``dest`` (same filesystem), else symlink the directory. Returns which."""
    try:
        for src in kit.rglob("*"):
            if src.is_file():
                target = dest / src.relative_to(kit)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, target)
        return "hard links"
    except OSError:
        shutil.rmtree(dest, ignore_errors=True)
        dest.symlink_to(kit.resolve(), target_is_directory=True)
        return "symlink"


# ---------------------------------------------------------------------------------------------------- stages
def stage_order() -> list[str]:
    """Stage instances in an order that respects every dependency of dvc.yaml."""
    keys = list(MODEL_KEYS.values())
    return (["refstats"] + [f"generate@{k}" for k in keys]
            + [f"{s}@{k}" for k in keys for s in PER_MODEL_STAGES] + ["standardize", "report"])


def killed_by_oom(run: StageRun) -> bool:
    """DVC reports a stage command killed by SIGKILL (the kernel's OOM killer) as ``exited with -9``."""
    return run.rc != 0 and "exited with -9" in Path(run.log).read_text(errors="replace")


def run_stage(ws: Path, stage: str, pass_no: int, logs: Path, need_gib: float = 4.0) -> StageRun:
    """``python -m dvc repro -s <stage>``; waited for with os.wait4 for the process tree's exact rusage.

    Starts once ``need_gib`` of memory is available (or after ``MEMORY_WAIT_S``); the wait is recorded, not timed.
    """
    waited = wait_for_memory(need_gib)
    available = memory_gib("MemAvailable")
    env = environment(ws)
    cuda_log = logs / f"cuda-{pass_no}-{stage.replace('@', '_')}.jsonl"
    env[CUDA_LOG_ENV] = str(cuda_log)
    log = logs / f"{pass_no}-{stage.replace('@', '_')}.log"
    before = load1()
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-s", stage], cwd=ws, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    run = StageRun(stage, pass_no, proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, before,
                   load1(), mem_available_gib=round(available, 1), memory_wait_s=round(waited, 1), log=str(log))
    if cuda_log.is_file():
        records = [json.loads(line) for line in cuda_log.read_text().splitlines() if line.strip()]
        run.gpu_max_allocated = max(r["max_allocated"] for r in records)
        run.gpu_max_reserved = max(r["max_reserved"] for r in records)
    return run


def manifest_counts(ws: Path, model: str) -> dict[str, int]:
    """Images per task in a model's manifest (all rows; flagged ones included)."""
    path = ws / "data" / "images" / model / "manifest.csv"
    counts = {"general": 0, "style": 0, "lora": 0}
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                counts[row["task"]] = counts.get(row["task"], 0) + 1
    return counts


def drawn(log: Path) -> int | None:
    """Images drawn by a generate stage, from its own summary line."""
    m = re.search(r"\((\d+) drawn", Path(log).read_text(errors="replace"))
    return int(m[1]) if m else None


def stage_images(run: StageRun, ws: Path) -> int | None:
    """Images the stage worked on: drawn (generate), the task's images (styleloss, loraloss), else all."""
    name, _, model = run.stage.partition("@")
    if not model:
        return None
    if name == "generate":
        return drawn(Path(run.log))
    counts = manifest_counts(ws, model)
    return {"styleloss": counts["style"], "loraloss": counts["lora"]}.get(name, sum(counts.values()))


def tail(path: str, n: int = 40) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])


# ---------------------------------------------------------------------------------------------------- extrapolation
def v1_images(family: str) -> dict[str, int]:
    """Images per task of one checkpoint in the full v1 protocol (examples/params.full-v1.yaml counts)."""
    from ghostreview.protocol import load_benchmark

    bench = load_benchmark(ROOT / "data" / "benchmark" / "v1")
    counts = yaml.safe_load(V1_PARAMS.read_text())["benchmark"]["images_per_item"]
    return {"general": len(bench.general) * counts["general"], "style": len(bench.styles) * counts["style"],
            "lora": len(bench.loras[family]) * counts["lora"]}


def extrapolate(stages: list[StageRun]) -> dict:
    """Per-model stages: fixed + per-image seconds from the first and last pass, and the full v1 time per checkpoint."""
    out = {}
    for family, model in MODEL_KEYS.items():
        full = v1_images(family)
        work = {"generate": sum(full.values()), "styleloss": full["style"], "loraloss": full["lora"]}
        rows, total = {}, 0.0
        for name in ("generate", *PER_MODEL_STAGES):
            runs = [r for r in stages if r.stage == f"{name}@{model}" and r.rc == 0 and r.images]
            if len(runs) < 2 or runs[-1].images == runs[0].images:
                continue
            first, last = runs[0], runs[-1]
            per_image = (last.wall_s - first.wall_s) / (last.images - first.images)
            fixed = max(first.wall_s - per_image * first.images, 0.0)
            n = work.get(name, sum(full.values()))
            rows[name] = {"fixed_s": fixed, "per_image_s": per_image, "v1_images": n, "v1_s": fixed + per_image * n}
            total += rows[name]["v1_s"]
        if rows:
            out[model] = {"stages": rows, "v1_checkpoint_s": total, "v1_images": sum(full.values())}
    return out


# ---------------------------------------------------------------------------------------------------- report
def gib(kib_or_bytes: int | None, unit: int) -> str:
    return "" if kib_or_bytes is None else f"{kib_or_bytes / unit:.2f}"


def markdown(r: Rehearsal) -> str:
    """The RESULTS.md section of one run, between markers so that a rerun on the same device replaces it."""
    gpu = r.device.startswith("cuda")
    m, s = r.machine, r.settings
    lines = [SECTION.format(device=r.device, edge="start"),
             f"## 5{'b' if gpu else 'a'}. Full-size rehearsal on the {'GPU' if gpu else 'CPU'} (`rehearsal.py`)", ""]
    if not gpu:
        lines += ["**No GPU was lent to this task** (the device tool reported none for this session), so only the CPU "
                  "rehearsal ran. The GPU rehearsal is `python -m benchmarks.rehearsal --device cuda` (see the "
                  "module docstring for what it runs and how to carry its dependencies to a GPU machine).", ""]
    lines += [f"- Command (repository root, project venv): `{r.command}`",
              f"- Date: {r.date}; code: commit `{r.commit[:12]}` (`git archive HEAD` into a temp workspace)",
              f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM"
              + (f", GPU {m['gpu']}" if m["gpu"] else ", no GPU") + f"; Python {m['python']}",
              "- Versions: " + ", ".join(f"{k} {v}" for k, v in r.versions.items()),
              f"- Load average (1 / 5 / 15 min) before: {r.load_before}; after: {r.load_after}"
              + ("" if gpu else ". The machine is shared with other engineers' tests and runs: a load above 2 on 2 "
                                "cores means the stages got a fraction of the CPU"),
              f"- Models: {s['models']}",
              f"- Scorers: {s['scorers']}",
              f"- Benchmark: `ghostreview cut-benchmark` of v1 ({s['cut']}); images per item per pass: "
              + "; ".join(", ".join(f"{k} {v}" for k, v in p.items()) for p in r.passes)
              + f" ({s['images_per_model']} images per checkpoint)",
              f"- Generation: {s['generation']}", f"- Scoring: {s['scoring']}"]
    if not gpu:
        lines.append("- Changed from v1 to fit 2 cores: base size, steps and hires steps (above), and the scorers' "
                     f"batch ({CPU_SCORING_BATCH} instead of 16: every scorer forward is padded to the batch size, so "
                     "with 2 to 8 images per stage a batch of 16 would compute 2x to 8x the images)")
    lines.append("")
    if r.kit_build_s:
        lines += ["Kit build (once, cached in the kit directory; not part of the review): "
                  + ", ".join(f"`{k}` {v:.0f} s" for k, v in r.kit_build_s.items()), ""]
    lines += ["| pass | stage | wall s | CPU s | peak RSS GiB | " + ("GPU peak alloc / reserved GiB | " if gpu else "")
              + "images | wall s / image | load 1-min start -> end | GiB available at start |",
              "| --- | --- | ---: | ---: | ---: | " + ("---: | " if gpu else "") + "---: | ---: | --- | ---: |"]
    for st in r.stages:
        per = f"{st.wall_s / st.images:.1f}" if st.images else ""
        cells = [str(st.pass_no), f"`{st.stage}`" + ("" if st.rc == 0 else f" **FAILED (rc {st.rc})**"),
                 f"{st.wall_s:.1f}", f"{st.cpu_s:.1f}", gib(st.max_rss_kib, 2**20)]
        if gpu:
            cells.append(f"{gib(st.gpu_max_allocated, 2**30)} / {gib(st.gpu_max_reserved, 2**30)}"
                         if st.gpu_max_allocated is not None else "")
        wait = f" (waited {st.memory_wait_s:.0f} s)" if st.memory_wait_s >= 10 else ""
        cells += ["" if st.images is None else str(st.images), per, f"{st.load_before:.1f} -> {st.load_after:.1f}",
                  f"{st.mem_available_gib}{wait}"]
        lines.append("| " + " | ".join(cells) + " |")
    stage_sum, cpu_sum = sum(st.wall_s for st in r.stages), sum(st.cpu_s for st in r.stages)
    lines += ["", f"**Total: {stage_sum:.0f} s ({stage_sum / 60:.1f} min) wall over {len(r.stages)} stage runs**, "
                  f"{cpu_sum:.0f} CPU s ({cpu_sum / 60:.1f} CPU min: what the stages computed, whatever the load); "
                  f"whole command {r.total_s / 60:.1f} min (workspace, kit check, validate, memory waits and the "
                  f"final check included)."]
    if r.final_repro:
        lines.append(f"Final `dvc repro` of the whole pipeline: {r.final_repro['wall_s']:.0f} s, "
                     f"{r.final_repro['verdict']}.")
    if r.failure:
        lines += ["", f"**The rehearsal failed**: {r.failure}", "", "```", r.failure_log, "```"]
    lines += ["", "Wall time includes each `dvc repro -s` invocation's own start and dependency hashing (a few "
                  "seconds). Peak RSS is `ru_maxrss` of the stage's process tree (the stage script dominates)."]
    if r.extrapolation:
        lines += ["", "Extrapolated to the full v1 protocol per checkpoint (fixed + per-image seconds fitted from the "
                      "two passes). The fixed part holds one LoRA load (the cut benchmark has one LoRA; v1 has 16 per "
                      "family, so add 15 loads) and each stage's process start and model load:", "",
                  "| checkpoint | stage | fixed s | s / image | v1 images | v1 minutes |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for model, ex in r.extrapolation.items():
            for name, row in ex["stages"].items():
                lines.append(f"| {model} | {name} | {row['fixed_s']:.1f} | {row['per_image_s']:.3f} | "
                             f"{row['v1_images']} | {row['v1_s'] / 60:.1f} |")
            lines.append(f"| **{model}** | **all per-model stages** | | | {ex['v1_images']} | "
                         f"**{ex['v1_checkpoint_s'] / 60:.1f}** |")
    lines.append(SECTION.format(device=r.device, edge="end"))
    return "\n".join(lines) + "\n"


def record_markdown(section: str, device: str, path: Path = RESULTS_MD) -> None:
    """Replace this device's marked section of RESULTS.md, or append it."""
    text = path.read_text(encoding="utf-8")
    start, end = SECTION.format(device=device, edge="start"), SECTION.format(device=device, edge="end")
    if start in text and end in text:
        text = text[: text.index(start)] + section.rstrip("\n") + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- main
def settings_text(params: dict, passes: tuple[dict, ...]) -> dict:
    g, sc = params["generation"], params["scoring"]
    h = g["hires"]
    per_model = [p["general"] * CUT["general"] + p["style"] * CUT["styles"] + p["lora"] * CUT["loras"] for p in passes]
    from ghostreview.kit import fullsize

    counts = {f: fullsize.parameter_counts(f)["total"] for f in MODEL_KEYS}
    return {
        "generation": f"{g['sampler']}, {g['steps']} steps, CFG {g['cfg_scale']}, {g['width']}x{g['height']}, batch "
                      f"{g['batch_size']}, hires x{h['scale']} ({h['upscaler']}) {h['steps']} steps at denoising "
                      f"{h['denoising_strength']}, device {g['device']}, dtype {g['dtype']}, "
                      f"cpu_threads {g['cpu_threads']}",
        "scoring": f"CLIP {sc['clip']['arch']} (224 px), LAION head, VGG19 at image_size {sc['style']['image_size']}, "
                   f"batch {sc['batch_size']}, device {sc['device']}, cpu_threads {sc['cpu_threads']}",
        "models": ", ".join(f"`{MODEL_KEYS[f]}` ({counts[f] / 1e9:.3f} B parameters, fp16 LDM safetensors)"
                            for f in MODEL_KEYS),
        "scorers": "open_clip `ViT-L-14-quickgelu` (427.6 M, fp16 state dict), LAION v2 head layout, torchvision "
                   "`vgg19()` whole state dict (143.7 M); kohya LoRAs rank 32 (SD1.5) / 16 (SDXL), all random weights",
        "cut": ", ".join(f"{v} {k}" for k, v in CUT.items()) + " per family",
        "images_per_model": " then ".join(map(str, per_model)),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rehearsal", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cpu: reduced size and steps (< 30 min on 2 cores); cuda: the true v1 settings, 2 passes")
    p.add_argument("--kit", type=Path, default=DEFAULT_KIT, help=f"full-size kit directory (default {DEFAULT_KIT})")
    p.add_argument("--workdir", type=Path, help="workspace directory (default: a new temp dir, removed afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the temp workspace (images, logs, reports)")
    p.add_argument("--size", type=int, help=f"CPU only: base width = height (default {CPU_GENERATION['width']})")
    p.add_argument("--steps", type=int, help=f"CPU only: base steps (default {CPU_GENERATION['steps']})")
    p.add_argument("--hires-steps", type=int, help=f"CPU only: hires steps (default {CPU_GENERATION['hires_steps']})")
    p.add_argument("--no-record", action="store_true", help="do not write benchmarks/RESULTS.md and results/ JSON")
    p.add_argument("--json", type=Path, help="also write the raw figures to this file")
    p.add_argument("--record-from", type=Path, metavar="JSON",
                   help="record a run's JSON (e.g. from a GPU machine) into results/ and RESULTS.md; runs nothing")
    p.add_argument("--dry-run", action="store_true", help="print the settings and stage order, build and run nothing")
    args = p.parse_args(argv)
    if args.device == "cuda" and any(v is not None for v in (args.size, args.steps, args.hires_steps)):
        p.error("--size/--steps/--hires-steps are for the CPU rehearsal; --device cuda runs the true v1 settings")
    return args


def cpu_generation(args: argparse.Namespace) -> dict | None:
    if args.device == "cuda":
        return None
    return {"width": args.size or CPU_GENERATION["width"], "height": args.size or CPU_GENERATION["height"],
            "steps": args.steps or CPU_GENERATION["steps"],
            "hires_steps": args.hires_steps or CPU_GENERATION["hires_steps"]}


def check_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda: torch sees no CUDA device here (torch.cuda.is_available() is "
                             "False); run it on a GPU machine, or without --device for the CPU rehearsal")


def run(args: argparse.Namespace, command: str) -> Rehearsal:
    passes = CUDA_PASSES if args.device == "cuda" else CPU_PASSES
    generation = cpu_generation(args)
    started = time.perf_counter()
    own_tmp = args.workdir is None
    ws = Path(tempfile.mkdtemp(prefix="gr-rehearsal-")) if own_tmp else args.workdir.resolve()
    ws.mkdir(parents=True, exist_ok=True)
    if any(ws.iterdir()):
        raise SystemExit(f"error: --workdir {ws} is not empty; give a new or empty directory")
    try:
        return run_in(ws, args, command, passes, generation, started)
    finally:
        if own_tmp and not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
        else:
            print(f"workspace kept: {ws}", flush=True)


def run_in(ws: Path, args, command: str, passes, generation, started: float) -> Rehearsal:
    from ghostreview.kit.fullsize import build_fullsize_kit
    from ghostreview.protocol import load_benchmark

    load_before = load_text()
    commit = make_workspace(ws)
    params = rehearsal_params(ws, args.device, passes[0], generation)
    write_params(ws, params)
    git_commit(ws, "rehearsal workspace")
    r = Rehearsal(command=command, device=args.device, date=dt.datetime.now().isoformat(timespec="minutes"),
                  machine=machine(args.device), versions=versions(), commit=commit,
                  settings=settings_text(params, passes), passes=list(passes), load_before=load_before)
    print(f"workspace {ws}; load {load_before}", flush=True)
    kit = args.kit.expanduser()
    r.kit_build_s = build_fullsize_kit(kit, load_benchmark(ws / "data" / "benchmark" / "rehearsal"))
    print(f"kit in {kit}, {link_kit(kit, ws / 'kit')} into the workspace", flush=True)
    env = environment(ws)
    print(sh([sys.executable, "-m", "ghostreview.cli", "validate"], ws, env).strip(), flush=True)
    logs = ws / ".rehearsal" / "logs"
    logs.mkdir(parents=True)
    for pass_no, counts in enumerate(passes, start=1):
        if pass_no > 1:
            write_params(ws, rehearsal_params(ws, args.device, counts, generation))
        for stage in stage_order():
            need = CPU_MEMORY_NEED_GIB.get(stage, 4.0) if args.device == "cpu" else 4.0
            for attempt in range(OOM_RETRIES + 1):
                st = run_stage(ws, stage, pass_no, logs, need)
                st.images = stage_images(st, ws)
                r.stages.append(st)
                print(f"  pass {pass_no} {stage:<28} {st.wall_s:7.1f} s  rss {st.max_rss_kib / 2**20:5.2f} GiB  "
                      f"images {st.images}  load {st.load_after:.1f}  available {st.mem_available_gib} GiB  "
                      f"rc {st.rc}", flush=True)
                if not (killed_by_oom(st) and attempt < OOM_RETRIES):
                    break
                st.log = str(Path(st.log).rename(st.log + f".oom{attempt}"))
                print(f"  {stage} was killed by the OOM killer; retrying once {need} GiB are available", flush=True)
            if st.rc:
                r.failure = f"`dvc repro -s {stage}` exited {st.rc} (pass {pass_no}); its log's tail is below"
                r.failure_log = tail(st.log)
                print(r.failure_log, flush=True)
                break
        if r.failure:
            break
    if not r.failure:
        start = time.perf_counter()
        out = sh([sys.executable, "-m", "dvc", "repro"], ws, env)
        ran = re.findall(r"Running stage '([^']+)'", out)
        r.final_repro = {"wall_s": time.perf_counter() - start, "ran": ran,
                         "verdict": "nothing to run (every stage up to date)" if not ran else f"RAN {ran}"}
        r.extrapolation = extrapolate(r.stages) if len(passes) > 1 else {}
    r.load_after = load_text()
    r.total_s = time.perf_counter() - started
    return r


def load(path: Path) -> Rehearsal:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data["stages"] = [StageRun(**st) for st in data["stages"]]
    return Rehearsal(**data)


def save(r: Rehearsal) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{r.date[:10]}-rehearsal-{r.device}.json"
    path.write_text(json.dumps(asdict(r), indent=2, default=str) + "\n", encoding="utf-8")
    record_markdown(markdown(r), r.device)
    return path


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    args = parse_args(argv)
    if args.record_from:
        r = load(args.record_from)
        print(f"recorded in {save(r)} and {RESULTS_MD}")
        return 0
    command = " ".join(["python -m benchmarks.rehearsal", *(argv if argv is not None else sys.argv[1:])])
    if args.dry_run:
        passes = CUDA_PASSES if args.device == "cuda" else CPU_PASSES
        print(f"device {args.device}; kit {args.kit.expanduser()}; passes {list(passes)}; "
              f"generation overrides {cpu_generation(args) or 'none (v1 settings)'}")
        print("stages: " + ", ".join(stage_order()))
        return 0
    check_device(args.device)
    r = run(args, command)
    if args.json:
        args.json.write_text(json.dumps(asdict(r), indent=2, default=str) + "\n", encoding="utf-8")
    if not args.no_record:
        print(f"recorded in {save(r)} and {RESULTS_MD}", flush=True)
    print(markdown(r), flush=True)
    return 1 if r.failure else 0


if __name__ == "__main__":
    sys.exit(main())
