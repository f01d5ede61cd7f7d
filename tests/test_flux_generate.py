"""Flux through the generate stage: the split stand-in drawn by run_generate with Forge's Flux infotext, no negative
prompt, LoRA images from the benchmark's Flux LoRA table (kohya and ai-toolkit files); its separate text-encoder
files in the image key; its base read from the file; a prompt past T5's 512 tokens flagged in the manifest."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import dataclasses

import pytest
import torch
import yaml
from conftest import placeholder_params, small_benchmark

from ghostreview import validate
from ghostreview.generation.bases import BaseError, resolve_base
from ghostreview.generation.families import LORA_FAMILIES
from ghostreview.generation.generate import GenerateSettings, run_generate
from ghostreview.generation.infotext import parse_infotext
from ghostreview.generation.loading import inspect_checkpoint
from ghostreview.generation.manifest import read_manifest
from ghostreview.generation.plan import DrawSettings, ModelIdentity, job_fields, plan_jobs
from ghostreview.kit import flux as kit
from ghostreview.kit.demo import lora_step
from ghostreview.protocol import load_benchmark

torch.set_num_threads(1)
DRAW = DrawSettings(sampler="Euler", steps=2, cfg_scale=3.5, width=64, height=64, batch_size=2, hires=None,
                    cpu_threads=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fluxgen")
    bench = load_benchmark(small_benchmark(root / "bench", general=1, styles=1, loras=2))
    for i, entry in enumerate(bench.loras["flux"]):  # the kit's writers: kohya's format, then ai-toolkit's
        lora_step(root, "flux", entry.file, i, seed=i)()
    return root, bench, kit.write_transformer_only(root / "sep", "flux1-dev", 7)


def settings(root, files, **over) -> GenerateSettings:
    base = dict(
        model_name="tiny-flux", checkpoint=inspect_checkpoint(files["checkpoint"]), config_dir=None,
        vae=files["vae"], clip_skip=1, prediction="epsilon", allow_pickle=False,
        lora_dirs={f: root / "loras" / f for f in LORA_FAMILIES},
        counts={"general": 1, "style": 1, "lora": 1}, tasks=("general", "style", "lora"), generation=DRAW,
        store=root / "store", cache=root / "cache", base="flux1-dev", clip_l=files["clip_l"], t5xxl=files["t5xxl"],
    )
    return GenerateSettings(**(base | over))


def test_split_flux_model_is_drawn_with_forge_fields_its_loras_and_no_negative(setup, no_network):
    root, bench, files = setup
    stats = run_generate(bench, settings(root, files), root / "out", progress=False)
    rows = read_manifest(root / "out")
    assert stats["skipped"] == 0 and stats["drawn"] == len(rows) > 0
    loras = [r for r in rows if r["task"] == "lora"]
    assert [r["item"] for r in loras] == [e.name for e in bench.loras["flux"]]  # Flux's own table, both formats
    assert all(r["lora_status"] == "ok" and r["flags"] == "" and r["loras"] == f"{r['item']}:0.8" for r in loras)
    assert all("Lora hashes" in parse_infotext(r["infotext"])[2] for r in loras)
    for row in rows:
        prompt, negative, fields = parse_infotext(row["infotext"])
        assert negative == "" and row["negative_prompt"] == ""
        assert fields["CFG scale"] == "1" and fields["Distilled CFG Scale"] == "3.5"
        assert fields["Sampler"] == "Euler" and fields["Schedule type"] == "Simple" and "Shift" in fields
        assert "Emphasis" not in fields and "Pad conds" not in fields and "Clip skip" not in fields


def test_the_separate_text_encoders_are_part_of_the_key_and_sd_keys_are_unchanged(setup):
    root, bench, files = setup
    job = plan_jobs(bench, "flux", {"general": 1, "style": 0, "lora": 0}, ("general",), DRAW, 1, root,
                    lambda p: "ok", lambda p: "0" * 64)[0]
    plain = ModelIdentity("m", "flux", "m", "a" * 64)
    with_t5 = dataclasses.replace(plain, clip_l_sha256="b" * 64, t5xxl_sha256="c" * 64)
    other_t5 = dataclasses.replace(with_t5, t5xxl_sha256="d" * 64)
    keys = [job_fields(job, m, {}) for m in (plain, with_t5, other_t5)]
    assert "t5xxl_sha256" not in keys[0] and "clip_l_sha256" not in keys[0]  # SD and all-in-one keys as before
    assert keys[1]["t5xxl_sha256"] == "c" * 64 and keys[1] != keys[2]


def test_the_flux_base_is_read_from_the_file_and_a_contradiction_named(setup):
    _, _, files = setup
    ckpt = inspect_checkpoint(files["checkpoint"])
    assert resolve_base(ckpt).base == "flux1-dev"
    with pytest.raises(BaseError, match="flux1-schnell.*flux1-dev"):
        resolve_base(ckpt, "flux1-schnell")


def test_validate_names_a_missing_or_unreadable_separate_file(setup):
    root, _, files = setup
    (root / "t5-truncated.safetensors").write_bytes(files["t5xxl"].read_bytes()[:100])

    def check(**entry):
        data = placeholder_params("tiny-flux", str(files["checkpoint"]))
        data["models"]["tiny-flux"] |= {"vae": str(files["vae"]), **entry}
        params = validate.parse(data)
        return validate.check_checkpoint(params, "tiny-flux", root)

    assert check(clip_l=str(files["clip_l"]), t5xxl=str(files["t5xxl"])).family == "flux"
    with pytest.raises(validate.ParamsError, match="t5xxl"):
        check(clip_l=str(files["clip_l"]))
    with pytest.raises(validate.ParamsError, match=r"models\.tiny-flux\.t5xxl = .*t5-truncated"):
        check(clip_l=str(files["clip_l"]), t5xxl=str(root / "t5-truncated.safetensors"))
    with pytest.raises(validate.ParamsError, match="flux1-schnell"):
        check(clip_l=str(files["clip_l"]), t5xxl=str(files["t5xxl"]), base="flux1-schnell")


def test_a_prompt_past_t5s_512_tokens_is_flagged_through_the_stage(setup, tmp_path, no_network):
    """A general prompt longer than T5's 512 positions (Flux.1 dev) is drawn on its first 512 tokens and flagged
    ``text_truncated`` in the manifest; the image is kept (the flag excludes nothing) and the short prompt's is not."""
    from ghostreview.analysis.standardize import EXCLUDING_FLAGS, parse_flags

    root, _, files = setup
    cut = small_benchmark(tmp_path / "bench", general=2, styles=1, loras=1)
    data = yaml.safe_load((cut / "prompts.yaml").read_text(encoding="utf-8"))
    long_item, short_item = data["prompts"][0]["id"], data["prompts"][1]["id"]
    data["prompts"][0]["prose"] = " ".join(["A cat is sleeping on a sunny windowsill."] * 100)  # what Flux draws
    (cut / "prompts.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    bench = load_benchmark(cut)
    run_generate(bench, settings(root, files, counts={"general": 1, "style": 0, "lora": 0}, tasks=("general",),
                                 store=tmp_path / "store"), tmp_path / "out", progress=False)
    rows = {r["item"]: r for r in read_manifest(tmp_path / "out")}
    assert rows.keys() == {long_item, short_item}
    assert parse_flags(rows[long_item]["flags"]) == {"text_truncated"} and rows[short_item]["flags"] == ""
    assert "text_truncated" not in EXCLUDING_FLAGS and (tmp_path / "out" / rows[long_item]["image"]).is_file()
    assert rows[long_item]["prompt"] == data["prompts"][0]["prose"]  # Flux draws the prose, recorded as written
    assert parse_infotext(rows[long_item]["infotext"])[0] == rows[long_item]["prompt"]
