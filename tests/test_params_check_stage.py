"""The checkparams stage: `dvc repro` never reports success over a params file with an unknown key.

DVC runs a stage only when something it tracks changed, and each stage tracks only the params it reads, so a typo'd
top-level key (``generaton:``) in an up-to-date workspace reaches no stage's validation. ``checkparams`` tracks the
whole params file (``params: - params.yaml:``): checked here through the real ``dvc`` CLI, in a copy of the project's
code with the real dvc.yaml (the demo kit is not built: only checkparams can run there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import stage_script

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", "stages/", "ghostreview/")


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def test_checkparams_is_the_first_stage_tracks_the_whole_params_file_and_feeds_every_stage():
    stages = dvc_yaml()
    assert list(stages)[0] == "checkparams"
    stage = stages["checkparams"]
    assert stage["cmd"] == "python stages/checkparams.py --params params.yaml --out data/params"
    assert stage["params"] == [{"params.yaml": None}]  # DVC's spelling of "every key of the file"
    # its files are rewritten only when their content changes, so DVC must not delete them before it runs
    assert stage["outs"] == [{"data/params": {"persist": True}}]
    for name, other in stages.items():  # each stage reads its code fingerprint (and per-model ones their settings)
        if name != "checkparams":
            deps = other.get("do", other)["deps"]
            assert any(d.startswith("data/params/code/") for d in deps), name
            assert "params" not in other.get("do", {}), f"{name}: per-model stages list no params (see dvc.yaml)"


def test_settings_files_are_rewritten_only_when_their_content_changes(tmp_path):
    check = stage_script("checkparams")
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    out = tmp_path / "params"
    texts = check.settings_texts(data)
    first = sorted(texts)
    assert "generate/demo-sd15-a.json" in first and "score.json" in first
    assert check.sync_dir(out, texts) == (len(texts), 0)
    assert check.sync_dir(out, texts) == (0, 0)
    stamps = {f: (out / f).stat().st_mtime_ns for f in first}
    model = next(iter(data["models"]))
    data["models"][model]["title"] = "Renamed"
    data["standardize"]["bootstrap"] = 10  # read by standardize only: no per-model stage's file
    texts = check.settings_texts(data)
    assert check.sync_dir(out, texts) == (1, 0)
    assert json.loads((out / f"generate/{model}.json").read_text(encoding="utf-8"))[f"models.{model}"]["title"] == \
        "Renamed"
    assert [f for f in first if (out / f).stat().st_mtime_ns != stamps[f]] == [f"generate/{model}.json"]
    del data["models"][model]  # a removed model's file goes (it is nobody's input any more)
    assert check.sync_dir(out, check.settings_texts(data)) == (0, 1)
    assert not (out / f"generate/{model}.json").exists()


def test_the_script_refuses_an_unknown_key_with_an_error_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text(encoding="utf-8") + "generaton:\n  steps: 30\n")
    proc = run([sys.executable, "stages/checkparams.py", "--params", str(params)], ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.match(r'error: \S*params\.yaml: unknown key generaton\. Did you mean "generation"\?', proc.stderr)
    proc = run([sys.executable, "stages/checkparams.py", "--params", "params.yaml"], ROOT)
    assert proc.returncode == 0 and "checkparams: params.yaml is valid (7 models)" in proc.stdout


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONPATH=str(cwd),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)


def dvc(ws: Path, *args: str, ok: bool = True) -> str:
    proc = run([sys.executable, "-m", "dvc", *args], ws)
    if ok and proc.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


@pytest.fixture
def workspace(tmp_path):
    """The project's code, dvc.yaml and params.yaml in a git + DVC workspace where checkparams has run."""
    files = run(["git", "ls-files", "-co", "--exclude-standard"], ROOT).stdout.split()
    for rel in files:
        if rel.startswith(COPIED) and "__pycache__" not in rel and (ROOT / rel).is_file():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, tmp_path / rel)
    for args in (["init", "-q"], ["config", "user.email", "t@ghostreview.invalid"], ["config", "user.name", "t"]):
        run(["git", *args], tmp_path)
    assert "Running stage 'checkparams'" in dvc(tmp_path, "repro", "checkparams")
    return tmp_path


TYPOS = [  # (edit of params.yaml, the message expected)
    (lambda t: t + "generaton:\n  steps: 30\n", r'unknown key generaton\. Did you mean "generation"\?'),
    # under a section no stage tracks as a whole (each scoring stage tracks only the scoring.* entries it reads)
    (lambda t: t.replace("\n  batch_size: 16 ", "\n  batchsize: 16 "),
     r'unknown key scoring\.batchsize\. Did you mean'),
]


@pytest.mark.dvc
def test_dvc_repro_stops_at_an_unknown_key_that_no_other_stage_tracks(workspace):
    params = workspace / "params.yaml"
    text = params.read_text(encoding="utf-8")
    for edit, message in TYPOS:
        assert "up to date" in dvc(workspace, "status", "checkparams")
        params.write_text(edit(text), encoding="utf-8")
        assert params.read_text(encoding="utf-8") != text

        status = dvc(workspace, "status", "checkparams")
        assert "checkparams:" in status and "params.yaml" in status  # DVC sees the new key as a change of the file
        out = dvc(workspace, "repro", ok=False)  # the whole pipeline: checkparams, first in dvc.yaml, stops it
        assert re.search(r"^error: params\.yaml: " + message, out, re.M), out
        assert "ERROR: failed to reproduce 'checkparams'" in out
        assert set(re.findall(r"Running stage '([^']+)'", out)) == {"checkparams"}, out
        assert "Traceback" not in out

        params.write_text(text, encoding="utf-8")  # fixed: the file the lock records as checked, so up to date again
    assert "up to date" in dvc(workspace, "status", "checkparams")
    params.write_text(text.replace("  seed: 0\n", "  seed: 1\n"), encoding="utf-8")  # a valid edit passes the check
    assert "checkparams: params.yaml is valid (7 models)" in dvc(workspace, "repro", "checkparams")
