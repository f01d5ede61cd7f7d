"""The `ghostreview` command line itself: light commands never import torch, --version, convert-clip's one-line
errors, leaderboard --format."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ghostreview.cli import app

MODELS = ["alpha", "beta", "gamma"]  # alpha scores highest on both metrics
HEAVY = ("torch", "diffusers", "transformers", "open_clip", "matplotlib")
# Runs the CLI in a fresh interpreter with its arguments, then (at exit, after typer's SystemExit) prints which heavy
# libraries were imported: what the user's process loaded, measured by sys.modules, not by the clock.
RUNNER = (
    "import atexit, sys\n"
    f"HEAVY = {HEAVY!r}\n"
    "atexit.register(lambda: print('HEAVY:' + ','.join(m for m in HEAVY if m in sys.modules), file=sys.stderr))\n"
    "from ghostreview.cli import app\n"
    "app(prog_name='ghostreview')\n"
)


def run_cli(*args: str) -> tuple[int, str, list[str]]:
    """(exit status, stdout, heavy modules imported) of ``ghostreview <args>`` in a new process."""
    done = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, timeout=120)
    heavy_line = [line for line in done.stderr.splitlines() if line.startswith("HEAVY:")]
    assert heavy_line, done.stderr
    return done.returncode, done.stdout, [m for m in heavy_line[-1][len("HEAVY:"):].split(",") if m]


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> Path:
    """A leaderboard.csv written by the report's own table writer for a 3-model review (2 prompts, 2 seeds, aesthetic
    and CLIPScore; random-weight demo models, so the text form opens with its warning)."""
    import numpy as np
    import pandas as pd

    from ghostreview.analysis.report.tables import write_tables
    from ghostreview.analysis.standardize import standardize
    from ghostreview.scoring.registry import REGISTRY

    rng = np.random.default_rng(0)
    models = pd.DataFrame({"model": MODELS, "family": ["sd15"] * 3, "checkpoint_file": [f"{m}.safetensors" for m in
                           MODELS], "sha256": ["ab" * 32] * 3, "autov2": ["ABCDEF0123", "BCDEF01234", "CDEF012345"],
                           "random_weights": [True] * 3})
    rows = [dict(model=m, task="general", item=item, seed=seed, image_hash=f"{m}{item}{seed}", metric=metric,
                 value=float(base - i + rng.normal(0, 0.1)), flags="", metric_version="1", weights_sha256="0" * 64)
            for i, m in enumerate(MODELS) for item in ("p1", "p2") for seed in (0, 1)
            for metric, base in (("aesthetic", 6.0), ("clipscore", 30.0))]
    result = standardize(pd.DataFrame(rows), models, REGISTRY, {}, n_boot=50, seed=0, good_threshold=6.0)
    root = tmp_path_factory.mktemp("board")
    return write_tables(result, models, root / "reports", metrics=REGISTRY)["leaderboard.csv"]


def test_the_runner_sees_torch_when_it_is_imported():
    """The check below can fail: a command that does load torch shows up in the runner's list."""
    done = subprocess.run([sys.executable, "-c", "import torch\n" + RUNNER, "--help"], capture_output=True,
                          text=True, timeout=120)
    assert "HEAVY:torch" in done.stderr


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["leaderboard", "--help"], ["add-model", "--help"]])
def test_help_and_version_import_no_heavy_library(args):
    status, out, heavy = run_cli(*args)
    assert status == 0 and out
    assert heavy == []


def test_leaderboard_imports_no_heavy_library(board):
    status, out, heavy = run_cli("leaderboard", str(board))
    assert status == 0 and "alpha" in out and "gamma" in out
    assert heavy == []


def test_version_is_the_installed_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"ghostreview {metadata.version('ghostreview')}\n"


def one_error_line(result) -> str:
    """The single ``error:`` line of a refused command (exit status 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_convert_clip_refuses_what_is_no_torchscript_archive_in_one_line(tmp_path):
    dst = tmp_path / "clip.bin"
    missing = tmp_path / "ViT-L-14.pt"
    line = one_error_line(CliRunner().invoke(app, ["convert-clip", str(missing), str(dst)]))
    assert f"{missing}: no such file" in line and "ViT-L-14.pt" in line
    junk = tmp_path / "download.pt"
    junk.write_text("<html>please log in</html>")
    line = one_error_line(CliRunner().invoke(app, ["convert-clip", str(junk), str(dst)]))
    assert f"{junk}: not a TorchScript archive" in line and "Download OpenAI's ViT-L-14.pt again" in line
    state = tmp_path / "state.pt"
    torch.save({"visual.proj": torch.zeros(2, 2)}, state)
    line = one_error_line(CliRunner().invoke(app, ["convert-clip", str(state), str(dst)]))
    assert f"{state}: a torch.save file, not a TorchScript archive" in line and "scoring.clip.weights" in line
    line = one_error_line(CliRunner().invoke(app, ["convert-clip", str(tmp_path), str(dst)]))
    assert f"{tmp_path}: is a directory" in line
    assert not dst.exists()


def scripted(path: Path) -> Path:
    """A TorchScript archive like OpenAI's (a scripted module with the attributes the converter drops)."""

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(2, 3)
            self.register_buffer("context_length", torch.tensor(77))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    torch.jit.script(Tiny()).save(str(path))
    return path


def test_convert_clip_writes_the_state_dict_and_names_an_unwritable_destination(tmp_path):
    src = scripted(tmp_path / "ViT-L-14.pt")
    dst = tmp_path / "out" / "clip.bin"
    result = CliRunner().invoke(app, ["convert-clip", str(src), str(dst)])
    assert result.exit_code == 0, result.output
    state = torch.load(dst, weights_only=True)
    assert set(state) == {"proj.weight", "proj.bias"}  # context_length dropped, as from OpenAI's file
    line = one_error_line(CliRunner().invoke(app, ["convert-clip", str(src), str(tmp_path)]))
    assert f"{tmp_path}: is a directory" in line
    (tmp_path / "blocker").write_text("a file where the directory should be")
    line = one_error_line(CliRunner().invoke(app, ["convert-clip", str(src), str(tmp_path / "blocker" / "c.bin")]))
    assert f"cannot write {tmp_path / 'blocker' / 'c.bin'}: {tmp_path / 'blocker'}: File exists. A file stands" in line
    # a damaged archive with TorchScript's layout: torch.jit.load's complaint, in one line
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("ViT-L-14/constants.pkl", b"not a pickle")
    line = one_error_line(CliRunner().invoke(app, ["convert-clip", str(broken), str(dst)]))
    assert f"{broken}: torch.jit.load cannot read it" in line


def test_leaderboard_text_is_the_default(board):
    result = CliRunner().invoke(app, ["leaderboard", str(board)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("DEMO / RANDOM WEIGHTS")
    assert all(m in result.output for m in ("alpha", "beta", "gamma"))
    assert CliRunner().invoke(app, ["leaderboard", str(board), "--format", "text"]).output == result.output


def test_leaderboard_formats_carry_the_board(board):
    """md, json and csv (``print_leaderboard(path, fmt=...)``): the files the report wrote, on stdout (the demo warning
    of json and csv goes to stderr, so that stdout parses)."""
    order = [row["model"] for row in csv.DictReader(board.open(encoding="utf-8"))]
    assert order == MODELS
    out = {fmt: CliRunner().invoke(app, ["leaderboard", str(board), "--format", fmt]) for fmt in ("md", "json", "csv")}
    assert all(r.exit_code == 0 for r in out.values()), {f: r.output for f, r in out.items()}
    assert out["csv"].stdout == board.read_text(encoding="utf-8")
    assert [r["model"] for r in csv.DictReader(io.StringIO(out["csv"].stdout))] == order
    assert [r["model"] for r in json.loads(out["json"].stdout)["models"]] == order
    assert out["md"].stdout == board.with_suffix(".md").read_text(encoding="utf-8")
    assert all(f"| {m} |" in out["md"].stdout for m in order)


def test_leaderboard_refuses_an_unknown_format_and_a_missing_board(board, tmp_path):
    result = CliRunner().invoke(app, ["leaderboard", str(board), "--format", "xlsx"])
    assert result.exit_code == 2 and "xlsx" in result.output
    line = one_error_line(CliRunner().invoke(app, ["leaderboard", str(tmp_path / "none.csv")]))
    assert "none.csv not found" in line and "dvc repro" in line
