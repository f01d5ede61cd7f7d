"""One error path for every stage (issue 11, item 8): a bad input ends each of the stage scripts with an
``error:`` line naming the file, the key and the fix, exit status 1 and no traceback; a bug keeps its traceback.

Each stage runs as `dvc repro` runs it: ``python stages/<stage>.py ...`` in a subprocess, from a small workspace
(a cut benchmark, a header-only SD1 checkpoint, placeholder scorer files, one model's manifest), on an input that
gave a Python traceback before. The scorer files are placeholders: every case must stop before a model loads.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, placeholder_params, small_benchmark
from PIL import Image
from safetensors.torch import save_file

from ghostreview import import_infotext, models_cli, validate
from ghostreview import protocol as benchmark
from ghostreview.errors import UserError, stage_main
from ghostreview.generation import loading, manifest, store
from ghostreview.generation.manifest import MANIFEST_COLUMNS
from ghostreview.scoring import run as scoring
from ghostreview.scoring import weights

SD1_KEYS = {  # the keys family detection reads, with tiny shapes: a header-only stand-in for an SD1.5 checkpoint
    "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (16, 8),
    "first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A project root whose params name existing files, model ``m`` with one style image and its manifest, and the
    bad inputs of the cases: an old manifest, params naming a missing benchmark or a file as the cache directory."""
    ws = tmp_path_factory.mktemp("stage-errors")
    bench = benchmark.load_benchmark(small_benchmark(ws / "bench", general=1, styles=1, loras=1))
    (ws / "models").mkdir()
    save_file({k: torch.zeros(s) for k, s in SD1_KEYS.items()}, str(ws / "models/m.safetensors"))
    (ws / "scorers").mkdir()
    for name in ("clip.safetensors", "clip.json", "head.pth", "vgg.safetensors"):
        (ws / "scorers" / name).write_bytes(b"placeholder: every case stops before a scorer loads")
    params = placeholder_params("m", "models/m.safetensors", benchmark={
        "dir": "bench", "images_per_item": {"general": 1, "style": 1, "lora": 1}, "tasks": ["general", "style"]})
    write_params(ws / "params.yaml", params)
    write_params(ws / "params-nobench.yaml", params, benchmark=params["benchmark"] | {"dir": "gone"})
    write_params(ws / "params-cache.yaml", params, paths=params["paths"] | {"cache": "not-a-dir"})
    write_params(ws / "params-badstore.yaml", params, paths=params["paths"] | {"cache": "badcache"})
    (ws / "badcache").mkdir()
    (ws / "badcache" / "scores.sqlite").write_bytes(b"not a database, " * 64)
    (ws / "not-a-dir").write_text("a file where paths.cache should be a directory")
    (ws / "images" / "m").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(ws / "images" / "m" / "0.png")
    row = dict.fromkeys(MANIFEST_COLUMNS, "") | {
        "model": "m", "family": "sd15", "task": "style", "item": bench.styles[0].name, "seed": "1", "image": "0.png",
        "image_hash": "ab" * 32, "prompt": "a cat"}
    write_manifest(ws / "images" / "m", MANIFEST_COLUMNS, row)
    old = [c for c in MANIFEST_COLUMNS if c != "image_hash"]  # an older manifest, or a hand-edited one
    (ws / "old" / "m").mkdir(parents=True)
    write_manifest(ws / "old" / "m", old, row)
    return ws, bench


def write_params(path: Path, params: dict, **changes) -> None:
    path.write_text(yaml.safe_dump(params | changes, sort_keys=False))


def write_manifest(directory: Path, columns, row: dict) -> None:
    with open(directory / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerow(row)


CASES = {  # stage script and its command line, on the workspace's bad inputs (relative paths, as dvc.yaml has them)
    "score-manifest": ["score", "--images", "old/m", "--refstats", "refstats", "--out", "scores/old"],
    "score-store": ["score", "--images", "images/m", "--refstats", "refstats", "--out", "scores/m",
                    "--params", "params-badstore.yaml"],
    "score": ["score", "--images", "images/m", "--refstats", "refstats", "--out", "scores/m"],
    "refstats": ["refstats", "--out", "refstats", "--params", "params-nobench.yaml"],
    "standardize": ["standardize", "--images", "images", "--scores", "scores", "--references", "references",
                    "--out", "standardized"],
    "report": ["report", "--standardized", "standardized", "--images", "images", "--scores", "scores",
               "--out", "reports"],
    "generate": ["generate", "--model", "m", "--out", "images/g", "--params", "params-cache.yaml"],
}


@pytest.fixture(scope="module")
def stderr_of(workspace):
    """{case: stderr} of every case, run at once (each stage process spends seconds importing torch)."""
    ws, _ = workspace
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1")
    running = {}
    out = {}
    with contextlib.ExitStack() as files:
        for case, (script, *args) in CASES.items():
            err = files.enter_context(open(ws / f"{case}.stderr", "w+", encoding="utf-8"))
            proc = subprocess.Popen([sys.executable, str(ROOT / "stages" / f"{script}.py"), *args], cwd=ws, env=env,
                                    stdout=subprocess.DEVNULL, stderr=err, text=True)
            running[case] = (proc, err)
        for case, (proc, err) in running.items():
            proc.wait(timeout=300)
            err.seek(0)
            out[case] = (proc.returncode, err.read())
    return out


def error_line(stderr_of, case: str) -> str:
    """The case's stage stopped with status 1, one ``error:`` line and no traceback; its message from there on."""
    code, stderr = stderr_of[case]
    assert code == 1, (code, stderr)
    assert "Traceback" not in stderr, stderr
    assert len([line for line in stderr.splitlines() if line.startswith("error: ")]) == 1, stderr
    return stderr[stderr.index("error: "):]


# ----------------------------------------------------------------------------------------- one case per stage


def test_score_manifest_without_a_column_names_file_column_and_fix(stderr_of):
    message = error_line(stderr_of, "score-manifest")
    assert message.startswith("error: old/m/manifest.csv: no column 'image_hash'"), message
    assert "dvc repro -f generate@m" in message


def test_score_store_that_is_not_a_database_names_file_and_fix(stderr_of, workspace):
    message = error_line(stderr_of, "score-store")
    store = workspace[0] / "badcache" / "scores.sqlite"
    assert message.startswith(f"error: {store} is not a usable score store ("), message
    assert f"delete {store}" in message and "paths.cache" in message
    assert store.read_bytes().startswith(b"not a database")  # a cache we could not read is named, never rewritten


def test_score_missing_reference_statistics_names_file_style_and_fix(stderr_of, workspace):
    style = workspace[1].styles[0].name
    message = error_line(stderr_of, "score")
    assert message.startswith(f"error: refstats/styles/{style}.safetensors (--refstats): no reference "), message
    assert f"style {style!r}" in message and "dvc repro" in message


def test_refstats_missing_benchmark_names_params_key_file_and_fix(stderr_of, workspace):
    message = error_line(stderr_of, "refstats")
    protocol = workspace[0] / "gone" / "protocol.yaml"
    assert message.startswith(f"error: params-nobench.yaml: benchmark.dir = 'gone': {protocol}: file not found."), \
        message
    assert "A benchmark directory holds" in message


def test_standardize_model_without_generate_output_names_file_model_and_fix(stderr_of):
    message = error_line(stderr_of, "standardize")
    assert message.startswith("error: images/m/model.json: model 'm' has no generate output"), message
    assert "dvc repro generate@m" in message


def test_report_before_standardize_names_directory_option_and_fix(stderr_of):
    message = error_line(stderr_of, "report")
    assert message.startswith("error: standardized (--standardized): missing ['images.csv'"), message
    assert "run the standardize stage first" in message


def test_generate_file_where_the_cache_directory_should_be_names_params_key_and_fix(stderr_of, workspace):
    message = error_line(stderr_of, "generate")
    assert message.startswith(f"error: params-cache.yaml: {workspace[0] / 'not-a-dir'} (paths.cache): File exists."), \
        message
    assert "move it away or fix the path" in message


# ------------------------------------------------------------------------------------------ the wrapper itself


def run_main(main, argv=None) -> str:
    with pytest.raises(SystemExit) as exc:
        stage_main(main)(argv or [])
    return str(exc.value)


def test_a_user_error_exits_with_its_message_and_a_bug_keeps_its_exception():
    def user_error(argv):
        raise validate.ParamsError("params.yaml: steps = 0; it must be a positive integer.")

    def bug(argv):
        raise KeyError("image_hash")

    def io_bug(argv):
        raise OSError(errno.EIO, "Input/output error", "x.png")

    assert run_main(user_error) == "error: params.yaml: steps = 0; it must be a positive integer."
    with pytest.raises(KeyError):
        stage_main(bug)([])
    with pytest.raises(OSError) as exc:
        stage_main(io_bug)([])
    assert exc.value.errno == errno.EIO


def test_bad_path_os_errors_name_the_stage_option_and_the_fix(tmp_path):
    def opens(path):
        return lambda argv: open(path, encoding="utf-8")

    def full_disk(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "out/m/aesthetic.csv")

    assert run_main(opens("in/m/manifest.csv"), ["--images", "in/m", "--out", "o"]) == (
        "error: in/m/manifest.csv (--images): No such file or directory. Fix the path, or run `dvc repro` so that "
        "the stage writing it runs first.")
    assert run_main(opens(tmp_path), [f"--dir={tmp_path}"]).startswith(f"error: {tmp_path} (--dir): Is a directory.")
    assert run_main(opens("elsewhere.csv"), ["--out", "o"]).startswith("error: elsewhere.csv: No such file")
    assert run_main(full_disk, ["--out", "out/m/aesthetic.csv"]) == (
        "error: out/m/aesthetic.csv (--out): No space left on device. Free space on that disk (or put the path on one "
        "with room) and run `dvc repro` again.")


@pytest.mark.parametrize("error, old_base", [
    (validate.ParamsError, ValueError), (benchmark.BenchmarkError, ValueError), (loading.CheckpointError, ValueError),
    (store.StoreError, OSError), (scoring.ReferenceImagesError, ValueError), (weights.WeightsError, RuntimeError),
    (import_infotext.ImportInfotextError, ValueError), (models_cli.ModelsError, ValueError),
    (manifest.ManifestError, UserError),
])
def test_library_user_errors_share_the_base_and_keep_their_old_one(error, old_base):
    assert issubclass(error, UserError) and issubclass(error, old_base)


def test_store_error_keeps_its_message_and_path():
    exc = store.StoreError("could not store image ab (No space left on device)", Path("/s/ab/ab.png"))
    assert str(exc) == "could not store image ab (No space left on device): /s/ab/ab.png"
    assert exc.path == Path("/s/ab/ab.png") and isinstance(exc, OSError)
