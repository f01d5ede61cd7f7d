"""Issue 12, items 3-5: files we did not write are checked before any model work.

3. A model's ``config:`` directory names only the classes of its family's pipeline: it can never make diffusers import
   a module or point at a hub repository. 4. Every LoRA problem (modules the model lacks, deltas of other shapes, a
   load that fails) is recorded for its (model, LoRA) pair, never fatal for the model, never "ok". 5. Safetensors
   headers are validated as the safetensors loader validates them; SD2 checkpoints are refused up front.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
from conftest import small_benchmark
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ghostreview import config, validate
from ghostreview.generation import loading, lora
from ghostreview.generation.generate import GenerateSettings, run_generate
from ghostreview.generation.loading import CheckpointError, inspect_checkpoint
from ghostreview.generation.lora import LoraSpec, apply_loras, lora_status
from ghostreview.generation.manifest import read_manifest
from ghostreview.generation.plan import DrawSettings
from ghostreview.kit import lora as kit_lora
from ghostreview.kit import sd
from ghostreview.protocol import load_benchmark

# 2 shared cores: OpenMP threads spin against other processes and make tiny models 10-50x slower.
torch.set_num_threads(1)

UNET_KEY = loading.UNET_IN_KEY
CLIP_KEY = loading.SD1_CLIP_KEY


def entry(dtype: str, shape: list, offsets: list) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


def write_raw(path: Path, header: dict | bytes, data_len: int) -> Path:
    """A safetensors file written by hand: 8-byte little-endian header length, the JSON header, ``data_len`` zeros."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(data_len))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"root": root, "ckpt": sd.write_tiny_checkpoint(root / "model.safetensors", "sd15", seed=3),
            "config": sd.write_tiny_config_dir(root / "config-sd15", "sd15")}


# ------------------------------------------------------------------------------------ 5. safetensors headers

# Each header passed today's shallow check (or raised RecursionError) and fails in the safetensors loader.
HOSTILE_HEADERS = {
    "overlapping ranges": ({"a": entry("F32", [2], [0, 8]), "b": entry("F32", [2], [0, 8])}, 8, "overlap"),
    "bytes of no tensor": ({"a": entry("F32", [1], [0, 4]), "b": entry("F32", [1], [8, 12])}, 12, "belong to no"),
    "dtype x shape != byte range": ({"a": entry("F32", [4], [0, 8])}, 8, "needs 16 bytes, data_offsets give 8"),
    "__metadata__ a list": ({"__metadata__": [1, 2], "a": entry("F32", [2], [0, 8])}, 8, "__metadata__ must map"),
    "__metadata__ value not a string": ({"__metadata__": {"k": 1}, "a": entry("F32", [2], [0, 8])}, 8,
                                        "__metadata__ must map"),
    "unknown dtype": ({"a": entry("F33", [2], [0, 8])}, 8, "unknown dtype"),
    "dtype not a string": ({"a": entry([], [2], [0, 8])}, 8, "unknown dtype"),
    "negative dimension": ({"a": entry("F32", [-2], [0, 8])}, 8, "non-negative"),
    "boolean dimension": ({"a": entry("F32", [True, 2], [0, 8])}, 8, "non-negative integers"),
    "nested 200,000 levels deep": (b'{"a":' * 200_000 + b"1" + b"}" * 200_000, 0, "nested too deeply"),
}


@pytest.mark.parametrize("case", HOSTILE_HEADERS)
def test_a_header_the_loader_refuses_is_a_checkpoint_error_naming_the_file(tmp_path, case):
    header, data_len, match = HOSTILE_HEADERS[case]
    path = write_raw(tmp_path / "x.safetensors", header, data_len)
    with pytest.raises(CheckpointError, match=match) as info:
        loading.read_safetensors_header(path)
    assert str(info.value).startswith(f"{path}: ") and "fetch it again" in str(info.value)
    if case != "nested 200,000 levels deep":  # the control: these really fail to load
        with pytest.raises(Exception, match="deserializing header"):
            load_file(str(path))


def test_a_duplicated_tensor_name_is_refused_and_unknown_entry_fields_are_ignored_as_the_loader_does(tmp_path):
    one = '{"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'
    dup = write_raw(tmp_path / "dup.safetensors", f'{{"a": {one}, "a": {one}}}'.encode(), 8)
    with pytest.raises(CheckpointError, match="'a' appears twice"):
        loading.read_safetensors_header(dup)
    extra = write_raw(tmp_path / "extra.safetensors", {"a": {**entry("F32", [2], [0, 8]), "note": 1}}, 8)
    assert loading.read_safetensors_header(extra)["a"]["shape"] == [2]
    assert load_file(str(extra))["a"].shape == (2,)


def test_real_files_pass_with_every_dtype_and_empty_tensors(tmp_path):
    tensors = {f"t{i}": torch.zeros(3, 2, dtype=d) for i, d in enumerate(
        (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.uint8, torch.bool,
         torch.float64, torch.float8_e4m3fn))}
    tensors["empty"] = torch.zeros(0, 5)
    save_file(tensors, str(tmp_path / "all.safetensors"), metadata={"k": "v"})
    header = loading.read_safetensors_header(tmp_path / "all.safetensors")
    assert set(loading.tensor_shapes(header)) == set(tensors) and header["__metadata__"] == {"k": "v"}


def test_the_one_reader_serves_loras_and_vaes_too(tiny, tmp_path):
    bad = write_raw(tmp_path / "lora.safetensors", {
        "lora_unet_x.lora_down.weight": entry("F16", [2, 2], [0, 8]),
        "lora_unet_x.lora_up.weight": entry("F16", [2, 2], [0, 8])}, 8)
    status = lora_status(bad, "sd15")
    assert status.startswith(f"error: {bad}: ") and "overlap" in status
    with pytest.raises(CheckpointError, match="overlap"):
        loading.check_vae_file(bad)


def sd15_overlapping(path: Path) -> Path:
    """An SD1-looking header whose text-encoder tensor reuses the UNet tensor's bytes."""
    return write_raw(path, {UNET_KEY: entry("F16", [8, 4, 3, 3], [0, 576]), CLIP_KEY: entry("F16", [10, 4], [0, 80])},
                     576)


def sd2_header(path: Path) -> Path:
    return write_raw(path, {UNET_KEY: entry("F16", [8, 4, 3, 3], [0, 576]),
                            "cond_stage_model.model.token_embedding.weight": entry("F16", [10, 4], [576, 656])}, 656)


def test_an_sd2_checkpoint_is_refused_up_front_naming_the_families_reviewed(tmp_path):
    path = sd2_header(tmp_path / "v2.safetensors")
    assert loading.family_from_shapes(loading.inspect_checkpoint(path).shapes) == "sd2"  # still recognised
    with pytest.raises(CheckpointError, match=r"an SD2\.x checkpoint .* reviews sd15 and sdxl checkpoints only"):
        loading.detect_family(path)
    params = config.parse_params({"models": {"v2": {"checkpoint": str(path)}}})
    with pytest.raises(config.ConfigError, match=r"models\.v2\.checkpoint = .*SD2\.x"):
        validate.check_checkpoint(params, "v2", tmp_path)


# ------------------------------------------------------------------------------------ 3. config directories

PROBE_MODULE = "ghostreview_probe_config_import"


def edit_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


# (file in the config dir, changes, expected words of the message)
HOSTILE_CONFIGS = {
    "scheduler from any module": ("model_index.json", {"scheduler": [PROBE_MODULE, "Evil"]}, "key 'scheduler'"),
    "the Zen of Python": ("model_index.json", {"scheduler": ["this", "Evil"]}, "key 'scheduler'"),
    "unet of another class": ("model_index.json", {"unet": ["diffusers", "UNet2DModel"]}, "key 'unet'"),
    "text encoder from another library": ("model_index.json", {"text_encoder": [PROBE_MODULE, "CLIPTextModel"]},
                                          "key 'text_encoder'"),
    "an extra component": ("model_index.json", {"image_processor": ["transformers", "CLIPImageProcessor"]},
                           "unknown key 'image_processor'"),
    "a loaded image encoder": ("model_index.json", {"image_encoder": ["transformers", "CLIPVisionModel"]},
                               "key 'image_encoder'"),
    "a safety checker from anywhere": ("model_index.json", {"safety_checker": [PROBE_MODULE, "Evil"]},
                                       "key 'safety_checker'"),
    "an unknown option": ("model_index.json", {"requires_safety_checker": "yes"}, "key 'requires_safety_checker'"),
    "auto_map in model_index": ("model_index.json", {"auto_map": {"AutoModel": "evil.Model"}}, "key 'auto_map'"),
    "remote code for the text encoder": ("text_encoder/config.json", {"auto_map": {"AutoModel": "evil.Model"}},
                                         "key 'auto_map'"),
    "a hub id": ("text_encoder/config.json", {"_name_or_path": "someone/evil-clip"}, "key '_name_or_path'"),
    "another architecture": ("text_encoder/config.json", {"architectures": ["EvilModel"]}, "key 'architectures'"),
    "another model type": ("text_encoder/config.json", {"model_type": "bert"}, "key 'model_type'"),
    "another tokenizer class": ("tokenizer/tokenizer_config.json", {"tokenizer_class": "AutoTokenizer"},
                                "key 'tokenizer_class'"),
    "a tokenizer with remote code": ("tokenizer/tokenizer_config.json", {"auto_map": {"AutoTokenizer": ["x.T", None]}},
                                     "key 'auto_map'"),
    "a tokenizer from the hub": ("tokenizer/tokenizer_config.json", {"name_or_path": "someone/evil"},
                                 "key 'name_or_path'"),
    "another scheduler class in its config": ("scheduler/scheduler_config.json", {"_class_name": "Evil"},
                                              "key '_class_name'"),
    "another unet class in its config": ("unet/config.json", {"_class_name": "UNet2DModel"}, "key '_class_name'"),
}


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """An importable module that leaves a marker file when imported: the proof that a config dir chose code."""
    marker = tmp_path / "imported"
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / f"{PROBE_MODULE}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Evil:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "probe"))
    monkeypatch.delitem(sys.modules, PROBE_MODULE, raising=False)
    return marker


def hostile_config(tiny, tmp_path: Path, case: str) -> Path:
    file, changes, _ = HOSTILE_CONFIGS[case]
    bad = tmp_path / "config"
    shutil.copytree(tiny["config"], bad)
    edit_json(bad / file, **changes)
    return bad


@pytest.mark.parametrize("case", HOSTILE_CONFIGS)
def test_a_config_dir_that_could_choose_code_is_refused_naming_file_and_key(tiny, tmp_path, case):
    bad = hostile_config(tiny, tmp_path, case)
    file, _, match = HOSTILE_CONFIGS[case]
    with pytest.raises(CheckpointError, match=match) as info:
        loading.check_config_dir(bad, "sd15")
    assert str(info.value).startswith(f"{bad / file}: ")
    params = config.parse_params({"models": {"m": {"checkpoint": str(tiny["ckpt"]), "config": str(bad)}}})
    with pytest.raises(config.ConfigError, match=rf"models\.m\.config = .*{bad / file}: .*{match}"):
        validate.check_checkpoint(params, "m", tmp_path)  # the check ghostreview validate and the generate stage run


def test_loading_with_a_hostile_config_dir_imports_nothing(tiny, tmp_path, probe):
    bad = hostile_config(tiny, tmp_path, "scheduler from any module")
    with pytest.raises(CheckpointError, match="key 'scheduler'"):
        loading.load_pipeline(tiny["ckpt"], "sd15", bad)
    assert not probe.exists() and PROBE_MODULE not in sys.modules
    __import__(PROBE_MODULE)  # the control: the probe does leave its marker when imported
    assert probe.exists()


def test_config_json_nested_too_deeply_or_not_an_object_is_refused(tiny, tmp_path):
    bad = tmp_path / "config"
    shutil.copytree(tiny["config"], bad)
    (bad / "vae" / "config.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        loading.check_config_dir(bad, "sd15")
    (bad / "vae" / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not an object"):
        loading.check_config_dir(bad, "sd15")


@pytest.mark.parametrize("family", loading.CONFIG_FAMILIES)
def test_the_config_dirs_we_ship_and_build_pass(tmp_path, family):
    loading.check_config_dir(loading.family_config_dir(family, tmp_path), family)
    if family in sd.FAMILIES:
        loading.check_config_dir(loading.tiny_config_dir(family, tmp_path), family)


def test_validate_lists_each_file_problem_without_a_traceback(tiny, tmp_path):
    from ghostreview.cli import app

    bad_config = hostile_config(tiny, tmp_path, "the Zen of Python")
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"models": {
        "overlap": {"checkpoint": str(sd15_overlapping(tmp_path / "overlap.safetensors"))},
        "evil-config": {"checkpoint": str(tiny["ckpt"]), "config": str(bad_config)},
        "v2": {"checkpoint": str(sd2_header(tmp_path / "v2.safetensors"))},
    }}))
    result = CliRunner().invoke(app, ["validate", "--params", str(params)])
    assert result.exit_code == 2 and "Traceback" not in result.output and result.exception.__class__ is SystemExit
    errors = "\n".join(line for line in result.output.splitlines() if line.startswith("error: "))
    assert "models.overlap.checkpoint" in errors and "overlap those of" in errors
    index = bad_config / "model_index.json"
    assert f"models.evil-config.config = {str(bad_config)!r}: {index}: key 'scheduler'" in errors
    assert "models.v2.checkpoint" in errors and "SD2.x" in errors
    assert "Beautiful is better than ugly" not in result.output


# ------------------------------------------------------------------------------------ 4. LoRAs

def rewritten(src: Path, dest: Path, rename=None, reshape=None, drop=None) -> Path:
    """A copy of a kohya file with keys renamed (``rename(key) -> key``), tensors replaced (``reshape(key, t)``) or
    keys left out (``drop(key)``)."""
    tensors = load_file(str(src))
    out = {}
    for key, value in tensors.items():
        if drop and drop(key):
            continue
        out[rename(key) if rename else key] = reshape(key, value) if reshape else value
    save_file(out, str(dest))
    return dest


@pytest.fixture(scope="module")
def loras(tiny):
    """kohya files for the tiny SD1.5 model: one that fits, and four that do not (all pass today's header check)."""
    root, cfg = tiny["root"] / "loras", tiny["config"]
    good = kit_lora.write_tiny_lora(root / "good.safetensors", "sd15", cfg, seed=1)
    to_k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    return {
        "good": good,
        # a LoRA for another UNet: none of its UNet modules exists in this model (NoMatchingPeftModuleError today)
        "no_module": rewritten(good, root / "no_module.safetensors", drop=lambda k: not k.startswith("lora_unet_"),
                               rename=lambda k: k.replace("lora_unet_", "lora_unet_extra_")),
        # one delta trained for a wider cross-attention (PEFT's size-mismatch RuntimeError today)
        "misshaped": rewritten(good, root / "misshaped.safetensors",
                               reshape=lambda k, t: torch.zeros(4, 30, dtype=t.dtype) if k == to_k else t),
        # the modules of the first attention of each block name nothing in this model (drawn as "ok" with the rest)
        "half": rewritten(good, root / "half.safetensors",
                          rename=lambda k: k.replace("_attentions_0_", "_attentions_7_")),
        # a lora_up without its lora_down: no delta can be built for that module
        "unpaired": rewritten(good, root / "unpaired.safetensors", drop=lambda k: k == to_k),
    }


def test_a_lora_that_does_not_fit_the_model_gets_a_status_before_anything_is_drawn(tiny, loras):
    modules = lora.model_modules("sd15", tiny["config"])
    assert lora_status(loras["good"], "sd15", modules) == "ok"
    assert lora_status(loras["no_module"], "sd15", modules).startswith(
        "incompatible: none of its 212 modules is in the sd15 model (e.g. lora_unet_extra_down_blocks_0_attentions_0")
    misshaped = lora_status(loras["misshaped"], "sd15", modules)
    assert misshaped.startswith("incompatible: 1 of its 284 modules have other shapes than the sd15 model's")
    assert "lora_down [4, 30], lora_up [8, 4], module weight [8, 24]" in misshaped
    half = lora_status(loras["half"], "sd15", modules)
    assert half.startswith("partial: half.safetensors: no delta on 84 targeted modules (not in the sd15 model): ")
    assert "lora_unet_down_blocks_*_attentions_*_proj_in (3)" in half
    assert lora_status(loras["unpaired"], "sd15", modules).startswith(
        "unsupported: 1 modules have a lora_down or a lora_up weight but not both")


def test_the_model_modules_are_the_pipelines_own(tiny):
    """The meta-device modules from the config dir are those of the loaded pipeline, names (kohya) and shapes."""
    for family in sd.FAMILIES:
        pipe = sd.tiny_pipeline(family, seed=0)
        parts = {c: getattr(pipe, c) for c in ("unet", *sd.TEXT_ENCODERS[family])}
        config_dir = loading.tiny_config_dir(family, tiny["root"] / "cache")
        assert lora.model_modules(family, config_dir) == lora.module_shapes(parts, family)
        targets = kit_lora._target_shapes(family, config_dir)  # every module the kit's LoRAs target is among them
        assert all(lora.model_modules(family, config_dir)[k] == shape for k, (_, shape) in targets.items())


def test_a_lora_diffusers_fails_to_load_is_recorded_and_the_others_stay_applied(loras):
    """apply_loras without the plan's check (a problem only loading finds): nothing raises, the status names it."""
    pipe = sd.tiny_pipeline("sd15", seed=5)
    problems = apply_loras(pipe, "sd15", [LoraSpec("good", loras["good"], 1.0),
                                          LoraSpec("misshaped", loras["misshaped"], 1.0),
                                          LoraSpec("no_module", loras["no_module"], 1.0)])
    assert set(problems) == {"misshaped", "no_module"}
    assert problems["misshaped"].startswith("partial: misshaped: no delta on 284 targeted modules (diffusers could "
                                            "not load it: RuntimeError: Error(s) in loading state_dict")
    assert "NoMatchingPeftModuleError" in problems["no_module"]
    assert len(pipe.get_active_adapters()) == 1  # the good one, fully applied
    assert any("lora_A" in k for k in pipe.unet.state_dict())


def test_a_lora_named_like_a_torch_attribute_applies(loras):
    pipe = sd.tiny_pipeline("sd15", seed=5)
    assert apply_loras(pipe, "sd15", [LoraSpec("half", loras["good"], 1.0), LoraSpec("to", loras["good"], 0.5)]) == {}


@pytest.mark.parametrize("pair", [("good", "no_module"), ("misshaped", "half")])
def test_every_lora_problem_is_recorded_for_its_pair_and_the_model_is_drawn(tiny, loras, tmp_path, pair):
    bench = load_benchmark(small_benchmark(tmp_path / "bench", general=1, styles=1, loras=2))
    entries = bench.loras["sd15"]
    lora_dir = tmp_path / "loras"
    (lora_dir / "sd15").mkdir(parents=True)
    for entry, kind in zip(entries, pair, strict=True):
        shutil.copy(loras[kind], lora_dir / "sd15" / entry.file)
    s = GenerateSettings(
        model_name="tiny", checkpoint=inspect_checkpoint(tiny["ckpt"]), config_dir=tiny["config"], vae=None,
        clip_skip=1,
        prediction="epsilon", allow_pickle=False, lora_dirs={"sd15": lora_dir / "sd15", "sdxl": lora_dir / "sdxl"},
        counts={"general": 1, "style": 1, "lora": 1}, tasks=("general", "lora"),
        generation=DrawSettings(sampler="Euler a", steps=2, cfg_scale=7.0, width=64, height=64, batch_size=1,
                                cpu_threads=1),
        store=tmp_path / "store", cache=tmp_path / "cache")
    stats = run_generate(bench, s, tmp_path / "out", progress=False)  # today: NoMatchingPeftModuleError / RuntimeError
    rows = {r["item"]: r for r in read_manifest(tmp_path / "out")}
    got = dict(zip(pair, (rows[e.name] for e in entries)))
    expected = {  # kind: (flags, start of the status)
        "good": ("", "ok"),
        "no_module": ("lora_incompatible", "incompatible: none of its 212 modules is in the sd15 model"),
        "misshaped": ("lora_incompatible", "incompatible: 1 of its 284 modules have other shapes than the sd15"),
        "half": ("lora_partial", f"partial: {entries[1].file}: no delta on 84 targeted modules (not in the sd15"),
    }
    for kind, row in got.items():
        flags, status = expected[kind]
        assert row["flags"] == flags and row["lora_status"].startswith(status), (kind, row["lora_status"])
        assert bool(row["image"]) == (kind == "good")  # a pair that cannot be drawn as asked is not drawn
    drawn = 2 if "good" in pair else 1  # the model's general prompt is drawn in every case
    assert stats == {"images": drawn, "drawn": drawn, "reused": 0, "skipped": 2 - (drawn - 1)}
    assert [r["task"] for r in rows.values() if r["image"]] == ["general", "lora"][:drawn]
