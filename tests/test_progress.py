"""Progress and quiet (issue 14 item 10): one progress display per stage, plain lines when stderr is no terminal, no
bars or known-harmless notices from the libraries underneath.

The stage case runs ``stages/generate.py`` as ``dvc repro`` runs it (a subprocess whose stderr is a file), on a tiny
random-weight SD1.5 checkpoint of the kit: before, its log held diffusers' "Loading pipeline components" bar, a
per-step bar for every batch and two float32 notices.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import time
import warnings

import pytest
import yaml
from conftest import ROOT, placeholder_params, small_benchmark

from ghostreview.kit.sd import write_tiny_checkpoint, write_tiny_config_dir
from ghostreview.util import runtime
from ghostreview.util.runtime import PLAIN_INTERVAL, PlainProgress, progress_bar, quiet_third_party


class Clock:
    """A settable clock for PlainProgress."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_at_start_once_per_interval_and_at_the_end():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(total=40, desc="embed m", unit="img", interval=30, file=out, clock=clock)
    for _ in range(40):  # one image every 2 s: 80 s in all
        clock.now += 2
        bar.update(1)
    bar.close()
    bar.close()  # a second close writes nothing
    assert out.getvalue().splitlines() == [
        "embed m: 0/40 img (0%), 0s",
        "embed m: 15/40 img (37%), 30s, ETA 50s",
        "embed m: 30/40 img (75%), 1m00s, ETA 20s",
        "embed m: 40/40 img (100%), 1m20s",
    ]


def test_plain_progress_wraps_an_iterable_and_closes_when_it_ends():
    out, clock = io.StringIO(), Clock()
    seen = []
    for x in PlainProgress(range(3), desc="refstats", unit="img", file=out, clock=clock):
        seen.append(x)
        clock.now += 1
    assert seen == [0, 1, 2]
    assert out.getvalue().splitlines() == ["refstats: 0/3 img (0%), 0s", "refstats: 3/3 img (100%), 3s"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_tqdm_on_a_terminal_and_plain_lines_elsewhere():
    from tqdm import tqdm

    term, log = Terminal(), io.StringIO()
    with progress_bar(total=2, desc="generate@m", unit="img", file=term) as bar:
        assert isinstance(bar, tqdm)
        bar.update(2)
    assert "\r" in term.getvalue() and "2/2" in term.getvalue()
    with progress_bar(total=2, desc="generate@m", unit="img", file=log) as bar:
        assert isinstance(bar, PlainProgress)
        bar.update(2)
    assert "\r" not in log.getvalue() and log.getvalue().splitlines()[-1].startswith("generate@m: 2/2 img (100%)")
    with progress_bar(total=2, desc="off", file=log, disable=True) as bar:
        bar.update(2)
    assert "off" not in log.getvalue()


def test_quiet_drops_exactly_the_empty_float32_notice_and_keeps_the_rest():
    quiet_third_party()
    quiet_third_party()  # idempotent: one filter
    log = logging.getLogger("diffusers.models.modeling_utils")
    assert sum(isinstance(f, runtime._DropMessage) for f in log.filters) == 1
    harmless = ("There are modules in AutoencoderKL that should be kept in float32: []. Casting directly with `to()` "
                "can lead to inconsistent results; set `torch_dtype` in `from_pretrained()` instead to keep these "
                "modules in float32.")
    kept = [harmless.replace("[]", "['conv_in']"), "Some other diffusers warning"]
    records = [logging.LogRecord(log.name, logging.WARNING, __file__, 1, text, None, None)
               for text in [harmless, *kept]]
    assert [r.getMessage() for r in records if log.filter(r)] == kept
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"



def test_quiet_drops_torchsde_end_rounding_warnings_and_only_those():
    """DPM++ SDE's Brownian tree is queried at its own float32-rounded ends; torchsde clamps and warns each time."""
    rounding = ["Should have ta>=t0 but got ta=0.0291675366461277 and t0=0.029168.",
                "Should have tb<=t1 but got tb=14.614644050598145 and t1=14.614644."]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party()
        for text in rounding:
            warnings.warn_explicit(text, UserWarning, "brownian_interval.py", 599,
                                   module="torchsde._brownian.brownian_interval")
        warnings.warn_explicit(rounding[0], UserWarning, "elsewhere.py", 1, module="ghostreview.generation.draw")
        warnings.warn_explicit("BrownianInterval is optimised for interval-based queries, not point evaluation.",
                               UserWarning, "brownian_interval.py", 591, module="torchsde._brownian.brownian_interval")
    assert [(str(w.message)[:24], w.filename) for w in seen] == [(rounding[0][:24], "elsewhere.py"),
                                                                  ("BrownianInterval is opti", "brownian_interval.py")]


@pytest.fixture(scope="module")
def generate_log(tmp_path_factory):
    """stderr of the generate stage drawing 3 images (batches of 1) of a tiny SD1.5 model, stderr a file."""
    ws = tmp_path_factory.mktemp("progress")
    small_benchmark(ws / "bench", general=2, styles=1, loras=1)
    write_tiny_config_dir(ws / "configs" / "sd15", "sd15")
    write_tiny_checkpoint(ws / "models" / "m.safetensors", "sd15", seed=3)
    for d in ("refs", "loras/sd15", "loras/sdxl", "headers/sd15", "headers/sdxl"):
        (ws / d).mkdir(parents=True)
    (ws / "scorers").mkdir()
    for name in ("clip.safetensors", "clip.json", "head.pth", "vgg.safetensors"):  # generate loads no scorer
        (ws / "scorers" / name).write_bytes(b"placeholder")
    params = placeholder_params("m", "models/m.safetensors", benchmark={
        "dir": "bench", "images_per_item": {"general": 1, "style": 1, "lora": 1}, "tasks": ["general", "style"]})
    params["models"]["m"]["config"] = "configs/sd15"
    params["generation"] |= {"batch_size": 1, "cpu_threads": 1, "device": "cpu"}
    (ws / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1")
    start = time.monotonic()
    with open(ws / "stderr.txt", "w+", encoding="utf-8") as err:
        proc = subprocess.run([sys.executable, str(ROOT / "stages" / "generate.py"), "--model", "m", "--out",
                               "images/m"], cwd=ws, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                              timeout=600)
        err.seek(0)
        stderr = err.read()
    return proc, stderr, time.monotonic() - start


def test_generate_stage_log_is_its_own_plain_lines_only(generate_log):
    proc, stderr, seconds = generate_log
    assert proc.returncode == 0, stderr
    assert "generate@m: 3 images (3 drawn" in proc.stdout
    line = re.compile(r"generate@m: [0-3]/3 img \(\d+%\), \w+(, ETA \w+)?")
    lines = stderr.splitlines()
    assert [x for x in lines if not line.fullmatch(x)] == []  # no step or loading bars, no notices, no warnings
    assert "\r" not in stderr
    assert 2 <= len(lines) <= 2 + seconds / PLAIN_INTERVAL
    assert lines[0] == "generate@m: 0/3 img (0%), 0s" and lines[-1].startswith("generate@m: 3/3 img (100%)")
