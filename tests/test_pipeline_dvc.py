"""The whole review through the real ``dvc`` CLI, on the tiny kit, in a temporary copy of the project.

One module-scoped workspace: a full `dvc repro` with sockets blocked, then up-to-date checks and adding a model.
The benchmark is cut to a few items per task so the suite stays fast; the structure and the code path are the same.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import small_benchmark

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.dvc

# Blocks every network socket for the process and its children (DVC runs stages as subprocesses of the shell).
SITECUSTOMIZE = '''
import socket
_connect = socket.socket.connect
def _guard(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise OSError("network blocked by the GhostReview test: " + repr(address))
    return _connect(self, address)
socket.socket.connect = _guard
'''


def run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args: str, cwd: Path, env: dict) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd, env).stdout


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("review")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if rel.startswith(("data/images", "data/scores", "reports/", "demo/")) or not (ROOT / rel).is_file():
            continue
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, ws / rel)
    shutil.rmtree(ws / "data" / "benchmark" / "small", ignore_errors=True)
    small_benchmark(ws / "data" / "benchmark" / "small")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["benchmark"]["dir"] = "data/benchmark/small"
    params["paths"]["image_store"] = str(ws / "store")
    params["paths"]["cache"] = str(ws / "cache")
    params["standardize"]["bootstrap"] = 200
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    guard = ws / "netguard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONPATH=f"{guard}{os.pathsep}{ws}",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, ws, env)
    run([sys.executable, "-m", "ghostreview.cli", "kit", "demo/kit", "--benchmark", "data/benchmark/small"], ws, env)
    first = dvc("repro", cwd=ws, env=env)
    return ws, env, first


def test_full_review_offline_produces_reports(workspace):
    ws, env, first = workspace
    stages = ran_stages(first)
    for model in ("demo-sd15-a", "demo-sd15-b", "demo-sdxl-a"):
        for stage in ("generate", "embed", "aesthetic", "clipscore", "styleloss", "loraloss"):
            assert f"{stage}@{model}" in stages
    assert {"refstats", "standardize", "report"} <= stages
    board = (ws / "reports" / "leaderboard.csv").read_text()
    for model in ("demo-sd15-a", "demo-sd15-b", "demo-sdxl-a"):
        assert model in board
    assert "random" in (ws / "reports" / "leaderboard.md").read_text().lower()
    html = (ws / "reports" / "index.html").read_text()
    assert "random weights" in html.lower()
    assert list((ws / "reports" / "plots").glob("*.png"))


def test_rerun_is_up_to_date(workspace):
    ws, env, _ = workspace
    assert ran_stages(dvc("repro", cwd=ws, env=env)) == set()
    assert "up to date" in dvc("status", cwd=ws, env=env).lower()


def test_adding_a_model_runs_only_its_stages(workspace):
    ws, env, _ = workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["models"]["demo-sd15-c"] = {"checkpoint": "demo/kit/models/tiny-sd15-c.safetensors",
                                       "config": "demo/kit/configs/sd15"}
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = ran_stages(dvc("repro", cwd=ws, env=env))
    expected = {f"{s}@demo-sd15-c" for s in ("generate", "embed", "aesthetic", "clipscore", "styleloss", "loraloss")}
    assert ran == expected | {"standardize", "report"}
    assert "demo-sd15-c" in (ws / "reports" / "leaderboard.csv").read_text()
