"""Per-stage process cost (issue 14 item 16): every stage is a new Python process, so what its script imports is paid
by every stage instance. Each case imports a stage script's top level (or a module) in a fresh interpreter and lists
the heavy libraries it loaded. Figures: benchmarks/stage_imports.py and benchmarks/RESULTS.md section 7.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

HEAVY = ("torch", "torchvision", "diffusers", "transformers", "open_clip", "timm", "matplotlib")

# What each may not load when imported: the scoring stages never draw (no diffusers); the aesthetic and clipscore
# stage builds no CLIP and no VGG when it starts (open_clip, and torchvision under it, load only in clip.load_clip);
# standardize and the report compute no tensors, nor does the metric registry they read.
NOT_LOADED = {
    "stages/score.py": ("diffusers", "open_clip", "torchvision", "transformers"),
    "stages/refstats.py": ("diffusers", "open_clip", "torchvision"),
    "stages/standardize.py": ("torch", "diffusers", "open_clip", "torchvision"),
    "stages/report.py": ("torch", "diffusers", "open_clip", "torchvision"),
    "ghostreview.scoring.registry": ("torch", "torchvision", "open_clip"),
    "ghostreview.scoring.run": ("torch", "torchvision", "open_clip", "diffusers"),
}

CHILD = """
import importlib, json, runpy, sys
target = sys.argv[1]
if target.endswith(".py"):
    runpy.run_path(target, run_name="imported")  # the script's top level, not its main()
else:
    importlib.import_module(target)
print(json.dumps([m for m in json.loads(sys.argv[2]) if m in sys.modules]))
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[str]]:
    """{target: heavy libraries loaded by importing it}, every target in its own interpreter, all at once."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1")
    procs = {t: subprocess.Popen([sys.executable, "-c", CHILD, t, json.dumps(HEAVY)], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for t in NOT_LOADED}
    out = {}
    for target, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"importing {target} failed:\n{stderr[-2000:]}"
        out[target] = json.loads(stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("target", sorted(NOT_LOADED))
def test_importing_loads_none_of_what_it_does_not_use(loaded, target):
    assert sorted(set(loaded[target]) & set(NOT_LOADED[target])) == []


def test_the_scoring_stages_still_load_torch(loaded):
    """The list above can fail: the scoring stages do load torch (stage_runtime), so the child sees imports."""
    for stage in ("stages/score.py", "stages/refstats.py"):
        assert "torch" in loaded[stage], stage


def test_embeddings_and_metric_values_need_no_open_clip(tmp_path):
    """The aesthetic values of stored CLIP embeddings (the score store, read back; the head run) load torch but never
    open_clip: a score stage whose embeddings are all stored imports no CLIP library."""
    code = """
import sys
from pathlib import Path
import numpy as np
import torch
from ghostreview.scoring.aesthetic import LAYERS, aesthetic_scores, load_head
from ghostreview.scoring.store import ScoreStore
d = Path(sys.argv[1])
with ScoreStore(d / "scores.sqlite") as store:
    key = store.key({"feature": "clip image embedding"})
    store.put(key, {h: np.ones(768, np.float32).tobytes() for h in ("a", "b")})
    emb = np.stack([np.frombuffer(p, np.float32) for p in store.get(key, ["a", "b"]).values()])
state = {f"{n}.{k}": torch.zeros(shape if k == "weight" else shape[:1])
         for n, shape in LAYERS for k in ("weight", "bias")}
torch.save(state, d / "head.pth")
head = load_head(d / "head.pth")
print(aesthetic_scores(emb, head).shape, "open_clip" in sys.modules, "torchvision" in sys.modules)
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["(2,)", "False", "False"]


HELP_CHILD = """
import json, runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    assert exc.code == 0, exc.code
print(json.dumps([m for m in ("torch", "diffusers", "transformers", "open_clip") if m in sys.modules]))
"""


def test_every_stage_answers_help_before_loading_torch():
    """`python stages/<x>.py --help` (and a usage error) answers before torch and the model libraries load: under a
    second, not 3-7 (issue 15; figures in benchmarks/RESULTS.md; pandas, ~0.5 s, may load)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), DVC_NO_ANALYTICS="1")
    heavy = {}
    for script in sorted((ROOT / "stages").glob("*.py")):
        out = subprocess.run([sys.executable, "-c", HELP_CHILD, str(script)], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0 and "usage:" in out.stdout, (script, out.stderr[-2000:])
        heavy[script.name] = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == {name: [] for name in heavy}
