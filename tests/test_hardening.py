"""Issue 7, fast cases: bad params, untrusted checkpoints and LoRAs, odd reference images and prompts, NaN/black
images, a disk that refuses a write and a kill in the middle of one.

Each case shows either a clear error that names the file, the key and the fix BEFORE any model work (the generate
stage is called with its model-loading entry point replaced by a tripwire), or a flag recorded in the manifest and
the report; and that finished work is never lost or half-written. The slow process-level cases (SIGKILL during
`dvc repro`, two `dvc repro` at once, a replaced checkpoint) are in test_hardening_runtime.py. The user-facing list of
every case is docs/failure-modes.md.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, placeholder_params, small_benchmark
from PIL import Image
from safetensors.torch import save_file

from ghostreview.analysis import aggregate
from ghostreview.analysis.report.html import write_html
from ghostreview.analysis.report.tables import write_tables
from ghostreview.analysis.standardize import EXCLUDING_FLAGS, parse_flags, standardize
from ghostreview.generation.generate import GenerateSettings, run_generate
from ghostreview.generation.infotext import read_png_infotext
from ghostreview.generation.loading import inspect_checkpoint
from ghostreview.generation.manifest import read_manifest
from ghostreview.generation.plan import DrawSettings
from ghostreview.generation.store import ImageStore, job_key
from ghostreview.protocol import BenchmarkError, load_benchmark
from ghostreview.scoring import run as scoring
from ghostreview.scoring import styleloss
from ghostreview.scoring.registry import REGISTRY
from ghostreview.scoring.table import score_rows

MODEL = "m"
GOOD_CKPT = "models/good.safetensors"
SD1_KEYS = {  # the keys family detection reads, with tiny shapes: a header-only stand-in for an SD1.5 checkpoint
    "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (16, 8),
    "first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3),
}
LORA_UNET = "lora_unet_down_blocks_0_attentions_0_proj_in"
HOSTILE = "<script>window.pwned=1</script><img src=x onerror=alert`1`> café 🎨 ねこ"


class ModelWorkStarted(Exception):
    """Raised by the tripwire standing in for run_generate: validation let the case through to model work."""


class Payload:
    """Unpickling this object creates ``marker`` (the classic malicious-checkpoint trick)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ------------------------------------------------------------------------------------------------------ fixtures


def tensors(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(s) for k, s in shapes.items()}


def kohya(prefixes: list[str], kind: str = "lora") -> dict[str, torch.Tensor]:
    """A kohya-style LoRA state dict (``lora``) or a LyCORIS LoHa / LoKr one, with real module names."""
    out = {}
    for p in prefixes:
        if kind == "lora":
            out |= {f"{p}.lora_down.weight": torch.zeros(4, 8), f"{p}.lora_up.weight": torch.zeros(8, 4)}
        elif kind == "loha":
            out |= {f"{p}.hada_w1_a": torch.zeros(8, 4), f"{p}.hada_w1_b": torch.zeros(4, 8)}
        else:
            out |= {f"{p}.lokr_w1": torch.zeros(2, 2), f"{p}.lokr_w2": torch.zeros(4, 4)}
        out[f"{p}.alpha"] = torch.tensor(4.0)
    return out


def png(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project root: a cut benchmark (2 LoRAs per family), a header-only SD1 checkpoint, two sets of bad sd15 LoRA
    files (loras/: a LoHa and an SDXL LoRA; loras-b/: a truncated file and a LoKr), reference images, placeholder
    scorer files and the params to start from."""
    root = tmp_path_factory.mktemp("project")
    bench_dir = small_benchmark(root / "bench", general=1, styles=1, loras=2)
    bench = load_benchmark(bench_dir)
    (root / "models").mkdir()
    save_file(tensors(SD1_KEYS), str(root / GOOD_CKPT))
    for d in ("loras/sd15", "loras/sdxl", "loras-b/sd15"):
        (root / d).mkdir(parents=True)
    first, second = (e.file for e in bench.loras["sd15"])
    te1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"  # an SDXL text-encoder LoRA key
    save_file(kohya([LORA_UNET], "loha"), str(root / "loras/sd15" / first))
    save_file(kohya([te1]), str(root / "loras/sd15" / second))
    save_file(kohya([LORA_UNET, LORA_UNET.replace("proj_in", "proj_out")]), str(root / "whole.safetensors"))
    (root / "loras-b/sd15" / first).write_bytes((root / "whole.safetensors").read_bytes()[:-100])  # truncated download
    save_file(kohya([LORA_UNET], "lokr"), str(root / "loras-b/sd15" / second))
    for entry in bench.loras["sdxl"]:
        save_file(kohya([te1]), str(root / "loras/sdxl" / entry.file))
    rng = np.random.default_rng(0)
    for style in bench.styles:
        png(root / "refs" / style.reference_dir / "a.png", Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)))
    for entry in bench.loras["sd15"]:  # the SD1 model's LoRA loss needs these; no SDXL model here, no SDXL headers
        for h in entry.header_images:
            png(root / "headers/sd15" / entry.name / h, Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)))
    for scorer in ("clip.safetensors", "clip.json", "head.pth", "vgg.safetensors"):
        (root / "scorers").mkdir(exist_ok=True)
        (root / "scorers" / scorer).write_bytes(b"placeholder: only its existence is checked here")
    params = placeholder_params(MODEL, GOOD_CKPT)
    return root, bench, params


@pytest.fixture(scope="module")
def generate_stage():
    """stages/generate.py as a module (its import flushes denormals for the process; restored afterwards)."""
    spec = importlib.util.spec_from_file_location("hardening_stage_generate", ROOT / "stages" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.set_flush_denormal(False)
    return module


def write_params(root: Path, name: str, data: dict | str) -> Path:
    path = root / f"params-{name}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    return path


def with_changes(params: dict, changes: dict) -> dict:
    """A deep copy of ``params`` with ``changes`` merged in ({"generation": {"steps": 3}} changes one key)."""
    out = json.loads(json.dumps(params))

    def merge(dst: dict, src: dict) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    merge(out, changes)
    return out


def run_stage(stage, monkeypatch, params_path: Path, model: str = MODEL) -> str:
    """Run the generate stage with run_generate replaced by a tripwire; return the error it exits with."""
    calls = []

    def tripwire(*args, **kwargs):
        calls.append(args)
        raise ModelWorkStarted

    monkeypatch.setattr(stage, "run_generate", tripwire)
    with pytest.raises(SystemExit) as exc:
        stage.main(["--model", model, "--out", str(params_path.parent / "out"), "--params", str(params_path)])
    assert not calls, "the bad input reached model work"
    return str(exc.value)


def test_valid_params_pass_every_check_and_reach_model_work(project, generate_stage, monkeypatch):
    """The control for every stage case below: the same project with nothing broken gets through to run_generate."""
    root, _, params = project
    path = write_params(root, "valid", params)
    monkeypatch.setattr(generate_stage, "run_generate", lambda *a, **k: (_ for _ in ()).throw(ModelWorkStarted()))
    with pytest.raises(ModelWorkStarted):
        generate_stage.main(["--model", MODEL, "--out", str(root / "out"), "--params", str(path)])


def test_a_model_whose_family_has_no_lora_header_images_stops_before_drawing(project, generate_stage, monkeypatch):
    root, bench, params = project
    path = write_params(root, "no-headers", with_changes(params, {"paths": {"lora_headers": {"sd15": "headers/none"}}}))
    message = run_stage(generate_stage, monkeypatch, path)
    entry = bench.loras["sd15"][0]
    assert f"LoRA {entry.name!r} (sd15)" in message and "paths.lora_headers.sd15" in message
    assert str(root / "headers/none" / entry.name) in message


def test_refstats_leaves_out_a_family_with_an_empty_header_directory(tmp_path):
    (tmp_path / "sd15" / "some_lora").mkdir(parents=True)
    (tmp_path / "sd15" / "some_lora" / "header.png").write_bytes(b"")
    (tmp_path / "sdxl").mkdir()  # an SD1.5-only review: nothing here
    present, notes = scoring.header_families({"sd15": tmp_path / "sd15", "sdxl": tmp_path / "sdxl"})
    assert present == {"sd15": tmp_path / "sd15"}
    assert len(notes) == 1 and notes[0].startswith("paths.lora_headers.sdxl") and "no LoRA loss" in notes[0]


# ------------------------------------------------------------------------------------------------------ params

PARAM_CASES = {
    "unknown key": ({"generaton": {"steps": 3}}, ["unknown key generaton", 'Did you mean "generation"?']),
    "unknown nested key": ({"models": {MODEL: {"chekpoint": GOOD_CKPT}}},
                           [f"unknown key models.{MODEL}.chekpoint", 'Did you mean "checkpoint"?']),
    "wrong type": ({"generation": {"steps": "25"}},
                   ["generation.steps must be int, got str ('25')", "Fix the value of generation.steps"]),
    "wrong type (bool for a number)": ({"generation": {"cfg_scale": True}}, ["generation.cfg_scale must be float"]),
    "missing checkpoint file": ({"models": {MODEL: {"checkpoint": "models/gone.safetensors"}}},
                                [f"models.{MODEL}.checkpoint = 'models/gone.safetensors'", "file not found",
                                 "put the checkpoint there or fix the path"]),
    "zero seed count": ({"benchmark": {"images_per_item": {"general": 0}}},
                        ["benchmark.images_per_item.general = 0", "at least 1", "remove it from benchmark.tasks"]),
    "negative seed count": ({"benchmark": {"images_per_item": {"lora": -2}}},
                            ["benchmark.images_per_item.lora = -2", "at least 1"]),
    "more seeds than the protocol fixes": ({"benchmark": {"images_per_item": {"general": 40}}},
                                           ["benchmark.images_per_item: images per item: general = 40",
                                            "allows 0 to 32", "Use a count in that range"]),
    "size not divisible by 8": ({"generation": {"width": 500}},
                                ["generation.width = 500", "multiple of 8", "use e.g. 496"]),
    "hires size not divisible by 8": ({"generation": {"hires": {"enabled": True, "scale": 1.3}}},
                                      ["generation.width × hires.scale = 83.2 is not a multiple of 8",
                                       "use e.g. generation.hires.scale: 1.25"]),
    "unknown sampler": ({"generation": {"sampler": "DPM++ 2M Karas"}},
                        ["generation.sampler", "unknown sampler 'DPM++ 2M Karas'", "did you mean 'DPM++ 2M Karras'?",
                         "Valid: ", "Euler a", "case-sensitive"]),
    "sampler in other casing": ({"generation": {"sampler": "euler a"}}, ["did you mean 'Euler a'?"]),
}


@pytest.mark.parametrize("case", PARAM_CASES)
def test_bad_params_stop_the_stage_naming_file_key_and_fix(project, generate_stage, monkeypatch, case):
    root, _, params = project
    changes, expected = PARAM_CASES[case]
    path = write_params(root, case.replace(" ", "-").replace("(", "").replace(")", ""), with_changes(params, changes))
    message = run_stage(generate_stage, monkeypatch, path)
    assert message.startswith(f"error: {path}:")
    for fragment in expected:
        assert fragment in message, message


def test_duplicate_model_name_is_an_error_with_its_line(project, generate_stage, monkeypatch):
    root, _, params = project
    text = yaml.safe_dump(params, sort_keys=False) + f"  {MODEL}:\n    checkpoint: models/other.safetensors\n"
    path = write_params(root, "duplicate", text)
    message = run_stage(generate_stage, monkeypatch, path)
    line = text.splitlines().index(f"  {MODEL}:", text.splitlines().index("models:") + 2) + 1
    assert f"duplicate key '{MODEL}'" in message and "may appear once" in message
    assert str(path) in message and f"line {line}" in message


@pytest.mark.parametrize("name", ["a/b", "..", "../../etc", "sub\\dir", "my.model"])
def test_model_name_with_a_path_separator_or_dots_is_refused(project, generate_stage, monkeypatch, name):
    """The name becomes data/images/<name>: a separator or '..' would write outside the output directory."""
    root, _, params = project
    data = with_changes(params, {})
    data["models"] = {name: {"checkpoint": GOOD_CKPT}}
    path = write_params(root, "badname", data)
    message = run_stage(generate_stage, monkeypatch, path, model=name)
    assert f"models.{name!r} is not a valid model name" in message and "slug" in message
    assert not (root / "out").exists() and not (root / "store").exists()


# ------------------------------------------------------------------------------------------------- checkpoints


def checkpoint_cases(root: Path) -> dict[str, tuple[Path, list[str]]]:
    """Broken checkpoint files, written once; each with the message fragments the user must see."""
    d = root / "models"
    good = (d / "good.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(good[: len(good) - 64])
    (d / "zero.safetensors").write_bytes(b"")
    (d / "html.safetensors").write_bytes(b"<!DOCTYPE html><html><body>Please log in to download</body></html>")
    corrupt = bytearray(good)
    corrupt[8:20] = b"\x00garbage!!\xff\xfe"
    (d / "corrupt.safetensors").write_bytes(bytes(corrupt))
    save_file(kohya([LORA_UNET]), str(d / "lora-as-model.safetensors"))
    save_file(tensors({"text_model.embeddings.token_embedding.weight": (16, 8)}), str(d / "text-encoder.safetensors"))
    return {
        "truncated": (d / "truncated.safetensors", ["truncated", "fetch it again"]),
        "zero-byte": (d / "zero.safetensors", ["empty (0 bytes)", "fetch it again"]),
        "not safetensors (an HTML page)": (d / "html.safetensors", ["not a safetensors file", "fetch it again"]),
        "corrupt header": (d / "corrupt.safetensors", ["not a safetensors file", "fetch it again"]),
        "a LoRA, not a checkpoint": (d / "lora-as-model.safetensors",
                                     ["not a Stable Diffusion checkpoint", "looks like a LoRA", "not as a checkpoint"]),
        "a diffusers component": (d / "text-encoder.safetensors",
                                  ["not a Stable Diffusion checkpoint", "diffusers-format component"]),
    }


CHECKPOINT_CASES = ["truncated", "zero-byte", "not safetensors (an HTML page)", "corrupt header",
                    "a LoRA, not a checkpoint", "a diffusers component"]


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_broken_checkpoint_stops_before_model_work(project, generate_stage, monkeypatch, case):
    root, _, params = project
    path, expected = checkpoint_cases(root)[case]
    rel = str(path.relative_to(root))
    params_path = write_params(root, "ckpt", with_changes(params, {"models": {MODEL: {"checkpoint": rel}}}))
    message = run_stage(generate_stage, monkeypatch, params_path)
    assert message.startswith(f"error: {params_path}: models.{MODEL}.checkpoint = {rel!r}: {path}:")
    for fragment in expected:
        assert fragment in message, message


def test_pickle_checkpoint_payload_never_runs(project, generate_stage, monkeypatch):
    root, _, params = project
    marker = root / "pwned"
    evil = root / "models" / "evil.ckpt"
    torch.save({"state_dict": tensors(SD1_KEYS), "payload": Payload(marker)}, evil)
    evil_params = with_changes(params, {"models": {MODEL: {"checkpoint": "models/evil.ckpt"}}})
    refused = write_params(root, "pickle", evil_params)
    message = run_stage(generate_stage, monkeypatch, refused)
    assert f"models.{MODEL}.checkpoint" in message and "arbitrary code" in message and "allow_pickle" in message
    opted_in = write_params(root, "pickle-allowed", with_changes(
        params, {"models": {MODEL: {"checkpoint": "models/evil.ckpt", "allow_pickle": True}}}))
    message = run_stage(generate_stage, monkeypatch, opted_in)
    assert "refused by torch.load(weights_only=True)" in message and "safetensors" in message
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the control: the payload is real and runs when code is allowed
    assert marker.exists()


# ------------------------------------------------------------------------------------------------------ LoRAs


def test_corrupt_lycoris_and_other_family_loras_are_flagged_in_manifest_and_report(project, tmp_path):
    """No model work at all: every LoRA of the cut table is unusable, so nothing needs drawing."""
    root, bench, _ = project
    rows = {}
    for model, loras in ((MODEL, root / "loras"), ("n", root / "loras-b")):
        settings = GenerateSettings(
            model_name=model, checkpoint=inspect_checkpoint(root / GOOD_CKPT), config_dir=None, vae=None, clip_skip=1,
            prediction="epsilon", allow_pickle=False, lora_dirs={"sd15": loras / "sd15", "sdxl": loras / "sdxl"},
            counts={"general": 1, "style": 1, "lora": 1}, tasks=("lora",),
            generation=DrawSettings(sampler="Euler a", steps=2, cfg_scale=7.0, width=64, height=64),
            store=tmp_path / "store", cache=tmp_path / "cache")
        stats = run_generate(bench, settings, tmp_path / "images" / model, progress=False)
        assert stats["skipped"] == 2 and stats["drawn"] == 0
        rows[model] = [r for r in read_manifest(tmp_path / "images" / model)]
    (loha, sdxl), (broken, lokr) = rows[MODEL], rows["n"]
    assert loha["lora_status"].startswith("unsupported: LyCORIS LoHa") and loha["flags"] == "lora_unsupported"
    assert sdxl["lora_status"] == "incompatible: sdxl LoRA on sd15 checkpoint" and sdxl["flags"] == "lora_incompatible"
    assert lokr["lora_status"].startswith("unsupported: LyCORIS LoKr") and lokr["flags"] == "lora_unsupported"
    assert broken["lora_status"].startswith("error: ") and "truncated" in broken["lora_status"]
    assert str(root / "loras-b/sd15" / bench.loras["sd15"][0].file) in broken["lora_status"]
    for row in rows[MODEL] + rows["n"]:
        assert row["image"] == "" and parse_flags(row["flags"]) & EXCLUDING_FLAGS

    # The report: the pairs reach standardize as flagged rows (aggregate.undrawn_rows) and are listed.
    manifests = aggregate.manifests(tmp_path / "images", [MODEL, "n"])
    undrawn = aggregate.undrawn_rows(manifests, REGISTRY)
    assert len(undrawn) == 4 and set(undrawn["metric"]) == {"loraloss"} and undrawn["value"].isna().all()
    general = pd.DataFrame(score_rows(
        [{"model": m, "task": "general", "item": f"p{i}", "seed": "0", "image_hash": f"{m}{i}", "flags": ""}
         for m in (MODEL, "n") for i in range(3)], "aesthetic", [5.0, 6.0, 7.0, 4.0, 6.5, 6.0], "2", "w"))
    models = pd.DataFrame({"model": [MODEL, "n"], "family": ["sd15", "sd15"]})
    result = standardize(pd.concat([general, undrawn], ignore_index=True), models, REGISTRY, {}, n_boot=20)
    excluded = result.scores.set_index(["model", "metric"])["n_excluded"]
    assert excluded[(MODEL, "loraloss")] == 2 and excluded[("n", "loraloss")] == 2
    tables = write_tables(result, models, tmp_path / "report", metrics=REGISTRY)
    md = tables["leaderboard.md"].read_text(encoding="utf-8")
    section = md.split("## Unsupported / incompatible LoRA pairs")[1].split("## ")[0]
    for row in rows[MODEL] + rows["n"]:
        assert f"| {row['model']} | {row['item']} | {row['flags']} | 1 |" in section
    html = write_html(result, general, manifests, models, tmp_path / "images", tmp_path / "report", plot_pngs={},
                      metrics=REGISTRY)
    page = html.read_text(encoding="utf-8")
    table = page.split('id="lora-problems"')[1].split("</table>")[0]
    assert all(e.name in table for e in bench.loras["sd15"]) and "lora_incompatible" in table and "<td>n</td>" in table


def test_prompt_tag_naming_a_lora_missing_from_the_table_is_an_error(project, generate_stage, monkeypatch, tmp_path):
    root, _, params = project
    bench_dir = small_benchmark(tmp_path / "bench", general=1, styles=1, loras=2)
    table_path = bench_dir / "loras_sd15.yaml"
    table = yaml.safe_load(table_path.read_text())
    first = table["loras"][0]["name"]
    table["loras"][0]["prompt"] += f", <lora:{first}:0.8>, <lora:{first}x:0.5>"
    table_path.write_text(yaml.safe_dump(table, sort_keys=False))
    with pytest.raises(BenchmarkError) as err:
        load_benchmark(bench_dir)
    message = str(err.value)
    assert re.match(r"loras_sd15\.yaml:\d+: loras\[0\]\.prompt: ", message), message  # file, line, key
    assert f"<lora:{first}x:...> names no LoRA of this table" in message and f'Did you mean "{first}"' in message
    assert f"Add an entry named '{first}x'" in message
    path = write_params(root, "badtag", with_changes(params, {"benchmark": {"dir": str(bench_dir)}}))
    assert "names no LoRA of this table" in run_stage(generate_stage, monkeypatch, path)


# -------------------------------------------------------------------------------------------- reference images


@pytest.fixture
def refs(tmp_path):
    """A cut benchmark (1 style, 1 LoRA per family) with valid reference and header images."""
    bench = load_benchmark(small_benchmark(tmp_path / "bench", general=1, styles=1, loras=1))
    rng = np.random.default_rng(1)
    style_dir, header_dirs = tmp_path / "refs", {f: tmp_path / "headers" / f for f in ("sd15", "sdxl")}
    style = bench.styles[0]
    png(style_dir / style.reference_dir / "a.png", Image.fromarray(rng.integers(0, 256, (24, 24, 3), np.uint8)))
    for family, directory in header_dirs.items():
        for entry in bench.loras[family]:
            for h in entry.header_images:
                png(directory / entry.name / h, Image.fromarray(rng.integers(0, 256, (24, 24, 3), np.uint8)))
    return bench, style_dir, header_dirs, style_dir / style.reference_dir


def test_reference_images_missing_directory(refs):
    bench, style_dir, headers, style_refs = refs
    with pytest.raises(scoring.ReferenceImagesError) as err:
        scoring.reference_sets(bench, style_dir.with_name("nowhere"), headers)
    message = str(err.value)
    assert f"style {bench.styles[0].name!r}" in message and "Reference directory not found" in message
    assert str(style_dir.with_name("nowhere") / bench.styles[0].reference_dir) in message
    assert "paths.style_refs" in message and "docs/benchmark.md" in message
    entry = bench.loras["sd15"][0]
    gone = {"sd15": headers["sd15"].with_name("gone"), "sdxl": headers["sdxl"]}
    with pytest.raises(scoring.ReferenceImagesError, match=rf"LoRA '{entry.name}' \(sd15\): header image .* not found"
                       r".*paths\.lora_headers\.sd15"):
        scoring.reference_sets(bench, style_dir, gone)


def test_a_base_table_without_header_folders_is_left_out_unless_a_model_draws_it(refs):
    """Pony's and Illustrious' header images live in the SDXL folder: a review without such models has none of them,
    and refstats (tables None) leaves those tables out; a model that draws one (tables named) needs it complete."""
    bench, style_dir, headers, _ = refs
    sets = scoring.reference_sets(bench, style_dir, headers)
    assert {s.split("/")[2] for s in sets if s.startswith("loras/")} == {e.name for t in ("sd15", "sdxl")
                                                                        for e in bench.loras[t]}
    pony = bench.loras["pony"][0]
    with pytest.raises(scoring.ReferenceImagesError, match=rf"LoRA '{pony.name}' \(sdxl\): header image .* not "
                                                           r"found.*paths\.lora_headers\.sdxl"):
        scoring.reference_sets(bench, None, headers, ["pony"])
    (headers["sdxl"] / pony.name).mkdir()  # one folder of the table there: the table is expected whole
    with pytest.raises(scoring.ReferenceImagesError, match=rf"LoRA '{pony.name}'"):
        scoring.reference_sets(bench, style_dir, headers)
    for h in pony.header_images:
        png(headers["sdxl"] / pony.name / h, Image.new("RGB", (24, 24), (9, 9, 9)))
    assert f"loras/sdxl/{pony.name}" in scoring.reference_sets(bench, style_dir, headers)


def test_every_broken_reference_set_is_listed_at_once(refs):
    """One round of fixes is enough: a missing style directory and two missing header folders, three lines."""
    bench, style_dir, headers, style_refs = refs
    gone = {f: d.with_name(f"gone-{f}") for f, d in headers.items()}
    with pytest.raises(scoring.ReferenceImagesError) as err:
        scoring.reference_sets(bench, style_dir.with_name("nowhere"), gone)
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"style {bench.styles[0].name!r}")
    assert [line.split(": ")[0] for line in lines[1:]] == [
        f"LoRA {bench.loras[f][0].name!r} ({f})" for f in ("sd15", "sdxl")]


def test_reference_images_non_image_and_corrupt_files(refs):
    bench, style_dir, headers, style_refs = refs
    notes = style_refs / "notes.txt"
    notes.write_text("downloaded from ...")
    with pytest.raises(scoring.ReferenceImagesError) as err:
        scoring.reference_sets(bench, style_dir, headers)
    assert f"Not an image file: {notes}" in str(err.value) and "move out or replace any file" in str(err.value)
    notes.unlink()
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8)).save(good, format="PNG")
    broken = style_refs / "broken.png"
    broken.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])  # a truncated download
    with pytest.raises(scoring.ReferenceImagesError) as err:
        scoring.reference_sets(bench, style_dir, headers)
    assert f"Corrupt or unreadable image {broken}" in str(err.value) and "paths.style_refs" in str(err.value)
    (style_refs / ".hidden-notes").write_text("hidden files are skipped")
    broken.unlink()
    assert scoring.reference_sets(bench, style_dir, headers)[f"styles/{bench.styles[0].name}"] == [style_refs / "a.png"]


def test_grayscale_rgba_palette_and_16bit_references_are_read_as_rgb(refs, tmp_path):
    """Each odd mode gives the pixels a plain numpy conversion gives, and the same Gram statistics as that RGB file."""
    bench, style_dir, headers, style_refs = refs
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (24, 32), np.uint8)
    rgb = rng.integers(0, 256, (24, 32, 3), np.uint8)
    alpha = rng.integers(0, 256, (24, 32), np.uint8)
    files = {
        "gray.png": (Image.fromarray(gray, "L"), np.repeat(gray[..., None] / 255.0, 3, axis=2)),
        "rgba.png": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
                     rgb / 255.0 * (alpha[..., None] / 255.0) + (1 - alpha[..., None] / 255.0)),
        "gray16.png": (Image.fromarray(gray.astype(np.uint16) * 257), np.repeat(gray[..., None] / 255.0, 3, axis=2)),
        "palette.png": (Image.fromarray(rgb).quantize(16), None),
    }
    for name, (image, _) in files.items():
        png(style_refs / name, image)
    found = scoring.reference_sets(bench, style_dir, headers)[f"styles/{bench.styles[0].name}"]
    assert sorted(p.name for p in found) == sorted([*files, "a.png"])
    with Image.open(style_refs / "gray16.png") as im:
        assert im.mode.startswith("I")  # really 16-bit on disk
    from ghostreview.kit.scorers import write_tiny_vgg19

    vgg = styleloss.load_vgg19_features(write_tiny_vgg19(tmp_path / "vgg.safetensors", seed=0))
    for name, (_, expected) in files.items():
        with Image.open(style_refs / name) as im:
            im.load()
            x = styleloss.to_rgb_tensor(im)
        if expected is None:  # palette: compare with Pillow's own RGB conversion
            with Image.open(style_refs / name) as im:
                expected = np.asarray(im.convert("RGB")) / 255.0
        assert np.allclose(x.permute(1, 2, 0).numpy(), expected, atol=1e-6), name
        plain = Image.fromarray(np.round(expected * 255).astype(np.uint8), "RGB")
        ours = styleloss.ref_stats(vgg, styleloss.open_images([style_refs / name]), 24)
        theirs = styleloss.ref_stats(vgg, [plain], 24)
        if name != "rgba.png":  # RGBA composites to non-integer levels; its pixels are checked above
            for a, b in zip(ours.means, theirs.means):
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), name


# ------------------------------------------------------------------------------------------------------ prompts


def test_empty_prompt_is_an_error_naming_file_and_line(tmp_path):
    for text in ("", "   "):
        bench_dir = small_benchmark(tmp_path / f"bench{len(text)}", general=2, styles=1, loras=1)
        prompts = yaml.safe_load((bench_dir / "prompts.yaml").read_text())
        prompts["prompts"][1]["prompt"] = text
        (bench_dir / "prompts.yaml").write_text(yaml.safe_dump(prompts, sort_keys=False))
        with pytest.raises(BenchmarkError) as err:
            load_benchmark(bench_dir)
        message = str(err.value)
        assert re.match(r"prompts\.yaml:\d+: prompts\[1\]\.prompt: ", message), message  # file, line, key
        assert "is empty" in message and "Write the text, or remove the entry" in message


def sd_tokenizer(tmp_path: Path):
    from transformers import CLIPTokenizer

    from ghostreview.generation.tokenizer import EOS_TOKEN, write_clip_tokenizer

    return CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tmp_path / "tok", pad_token=EOS_TOKEN)))


def test_unicode_emoji_and_html_survive_store_infotext_and_tokenizers(tmp_path):
    from ghostreview.generation.encode import prompt_chunks
    from ghostreview.generation.prompts import plain_text

    prompt = f"{HOSTILE}, Ünïcödé — ✨ (glow:1.2) 🐱‍👤"
    store = ImageStore(tmp_path / "store")
    key = job_key({"prompt": prompt, "seed": 1})
    assert key != job_key({"prompt": prompt.encode("ascii", "replace").decode(), "seed": 1})
    infotext = f"{prompt}\nNegative prompt: 低品質\nSteps: 2, Seed: 1"
    store.put(key, Image.new("RGB", (8, 8)), infotext, {"flags": [], "prompt": prompt})
    assert read_png_infotext(store.path(key)) == infotext  # stored as iTXt, not mangled to Latin-1
    assert store.get_meta(key)["prompt"] == prompt
    words = plain_text(prompt)  # what CLIPScore reads: A1111 weights gone, every character kept
    assert words.startswith(HOSTILE) and "(glow" not in words and "glow" in words and "🐱‍👤" in words
    tok = sd_tokenizer(tmp_path)
    chunk = prompt_chunks(tok, prompt)[0]
    ids = [i for i in chunk.ids[1:] if i != tok.eos_token_id]
    decoded = tok.decode(ids)
    for piece in ("café", "🎨", "ねこ", "✨", "🐱‍👤", "ünïcödé", "pwned"):  # byte-level BPE: no unknowns
        assert piece in decoded, decoded


def test_300_token_prompt_is_chunked_for_drawing_and_flagged_when_clipscore_truncates(tmp_path):
    from ghostreview.generation.encode import prompt_chunks
    from ghostreview.kit.scorers import write_tiny_clip
    from ghostreview.scoring.clip import load_clip, tokenize

    words = [f"{w}{i % 7}" for i, w in enumerate(["red", "blue", "green", "cat", "house"] * 60)]
    prompt = " ".join(words)
    tok = sd_tokenizer(tmp_path)
    plain_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert len(plain_ids) >= 300
    chunks = prompt_chunks(tok, prompt)
    assert len(chunks) == -(-len(plain_ids) // 75) and all(len(c.ids) == 77 for c in chunks)
    body = [i for c in chunks for i in c.ids[1:76] if i != tok.pad_token_id]
    assert body == plain_ids  # every token drawn, in order: A1111 chunking, no truncation

    arch, weights, config = write_tiny_clip(tmp_path / "clip", seed=0)
    clip = load_clip(arch, weights, model_config=config)
    ids, flags = tokenize(clip.tokenizer, [prompt, "a cat"])
    assert flags == [True, False] and ids[0, -1].item() == clip.tokenizer.eot_token_id
    images = tmp_path / "images"
    rows = []
    for i, text in enumerate([prompt, "a red cat"]):
        name = f"{i}.png"
        png(images / name, Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), np.uint8)))
        rows.append({"model": MODEL, "task": "general", "item": f"p{i}", "seed": "0", "image": name,
                     "image_hash": f"h{i}", "prompt": text, "flags": ""})
    spec = scoring.ClipSpec(arch, weights, model_config=config)
    from ghostreview.scoring.scorers import ClipScoreScorer, ClipTower, score_model
    from ghostreview.scoring.store import ScoreStore

    with ScoreStore(tmp_path / "scores.sqlite") as store:
        tower = ClipTower(spec, images, 16, store, tmp_path / "sha256.json")
        scores = score_model(rows, [ClipScoreScorer(tower)], store)["clipscore"]
    assert [r["flags"] for r in scores] == ["text_truncated", ""]
    assert "text_truncated" not in EXCLUDING_FLAGS  # scored on its first 77 tokens, kept, and listed as flagged


# ------------------------------------------------------------------------------------------------------ runtime


def test_nan_and_black_images_are_flagged_excluded_and_listed(tmp_path):
    from ghostreview.generation.draw import image_flags

    assert image_flags(np.full((8, 8, 3), np.nan, np.float32)) == ["nan"]
    assert image_flags(np.zeros((8, 8, 3), np.float32)) == ["black"]
    night = np.full((8, 8, 3), 0.01, np.float32)
    night[2, 3] = 0.6  # a dark scene with one highlight is a real image
    assert image_flags(night) == []

    manifest = [{"model": m, "family": "sd15", "task": "general", "item": f"p{i}", "seed": str(s),
                 "image_hash": f"{m}-{i}-{s}",
                 "image": f"{m}-{i}-{s}.png", "prompt": HOSTILE, "negative_prompt": "", "infotext": HOSTILE,
                 "flags": ""} for m in ("a", "b", "c") for i in range(2) for s in range(2)]
    manifest[0]["flags"] = "black"
    manifest[5]["flags"] = "nan"
    values = np.random.default_rng(4).normal(5.0, 1.0, len(manifest))
    values[5] = np.nan
    scores = pd.DataFrame(score_rows(manifest, "aesthetic", values, "2", "w"))
    assert list(scores["flags"][[0, 5]]) == ["black", "nan"]
    models = pd.DataFrame({"model": ["a", "b", "c"], "family": ["sd15"] * 3})
    result = standardize(scores, models, REGISTRY, {}, n_boot=20)
    status = result.images.set_index("image_hash")["status"]
    assert status["a-0-0"] == "flagged" and status["b-0-1"] == "flagged" and (status == "ok").sum() == 10
    for _, group in result.images.groupby("item"):  # z groups: (metric, task, item, pool)
        usable = group[group["status"] == "ok"]
        x = usable["value"].to_numpy()
        assert len(usable) == len(group) - sum(bool(f) for f in group["flags"])  # exactly the flagged rows left out
        assert np.allclose(usable["z"], (x - x.mean()) / x.std())  # z over the usable images only (ddof=0)
    excluded = result.scores.set_index(["model", "metric"])["n_excluded"]
    assert (excluded[("a", "aesthetic")], excluded[("b", "aesthetic")], excluded[("c", "aesthetic")]) == (1, 1, 0)
    tables = write_tables(result, models, tmp_path / "report", metrics=REGISTRY)
    md = tables["leaderboard.md"].read_text(encoding="utf-8")
    flagged = md.split("## Flagged images")[1].split("## ")[0]
    assert "| a | general | p0 | 0 | a-0-0 | black |" in flagged and "| b | general | p0 | 1 | b-0-1 | nan |" in flagged

    manifests = {m: pd.DataFrame([r for r in manifest if r["model"] == m]) for m in ("a", "b", "c")}
    page = write_html(result, scores, manifests, models, tmp_path / "images", tmp_path / "report",
                      plot_pngs={}, metrics=REGISTRY).read_text(encoding="utf-8")
    assert "window.pwned" in page and "<script>window.pwned" not in page and "<img src=x" not in page
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page and "café 🎨 ねこ" in page
    assert 'id="flagged-images"' in page and "b-0-1" in page.split('id="flagged-images"')[1].split("</table>")[0]


STORE_SCRIPT = textwrap.dedent("""
    import os, resource, signal, sys
    from pathlib import Path
    import numpy as np
    from PIL import Image
    from ghostreview.generation.store import ImageStore, StoreError

    store = ImageStore(Path(sys.argv[1]))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), np.uint8))
    store.put("a" * 64, Image.new("RGB", (8, 8), (10, 20, 30)), "small", {"flags": []})
    print("FIRST_OK", flush=True)
    if sys.argv[2] == "disk-refuses":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the kernel then fails the write with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            store.put("b" * 64, noise, "noise", {"flags": []})
        except StoreError as exc:
            print("STORE_ERROR", exc, flush=True)
    else:  # killed: write half of the PNG, then SIGKILL ourselves in the middle of the write
        real_save = Image.Image.save
        def dying_save(self, fp, *args, **kwargs):
            buf = __import__("io").BytesIO()
            real_save(self, buf, *args, **kwargs)
            fp.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            fp.flush(); os.fsync(fp.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        Image.Image.save = dying_save
        store.put("b" * 64, noise, "noise", {"flags": []})
""")


def run_store_script(root: Path, mode: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", STORE_SCRIPT, str(root), mode], capture_output=True, text=True,
                          env=env, timeout=120)


def store_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_disk_refusing_a_write_is_an_error_and_nothing_is_half_written(tmp_path):
    """A real refusal by the kernel (RLIMIT_FSIZE -> EFBIG), in a child process so the limit stays there."""
    proc = run_store_script(tmp_path, "disk-refuses")
    assert proc.returncode == 0, proc.stderr
    store = ImageStore(tmp_path)
    assert "FIRST_OK" in proc.stdout and "STORE_ERROR could not store image " + "b" * 64 in proc.stdout
    assert "File too large" in proc.stdout and str(store.path("b" * 64)) in proc.stdout
    assert not store.has("b" * 64)
    assert sorted(store_files(tmp_path)) == [f"aa/{'a' * 64}.json", f"aa/{'a' * 64}.png"]  # no temp, no half
    with Image.open(store.path("a" * 64)) as im:
        assert im.getpixel((0, 0)) == (10, 20, 30)


def test_stage_turns_a_store_failure_into_an_error_with_the_fix(project, generate_stage, monkeypatch):
    from ghostreview.generation.store import StoreError

    root, _, params = project
    path = write_params(root, "store-error", params)

    def refusing(*args, **kwargs):
        raise StoreError("could not store image abc (No space left on device)", root / "store" / "ab" / "abc.png")

    monkeypatch.setattr(generate_stage, "run_generate", refusing)
    with pytest.raises(SystemExit) as exc:
        generate_stage.main(["--model", MODEL, "--out", str(root / "out"), "--params", str(path)])
    message = str(exc.value)
    assert "No space left on device" in message and "abc.png" in message
    assert "will be reused" in message and "paths.image_store" in message and "dvc repro" in message


def test_sigkill_in_the_middle_of_a_store_write_leaves_no_corrupt_entry(tmp_path):
    proc = run_store_script(tmp_path, "killed")
    assert proc.returncode == -9 and "FIRST_OK" in proc.stdout
    store = ImageStore(tmp_path)
    files = store_files(tmp_path)
    halves = [name for name in files if name.startswith(f"bb/.{'b' * 64}.png.") and name.endswith(".tmp")]
    assert len(halves) == 1  # killed mid-write: half a PNG under a temporary name...
    assert not store.path("b" * 64).exists() and not store.has("b" * 64)  # ...never under the entry's name
    assert store.has("a" * 64)
    with Image.open(store.path("a" * 64)) as im:
        im.load()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), np.uint8))
    store.put("b" * 64, image, "noise", {"flags": []})  # the rerun writes the entry whole
    with Image.open(store.path("b" * 64)) as im:
        assert np.array_equal(np.asarray(im), np.asarray(image))
