"""Checkpoint bases: detection from the file (modelspec metadata, v_pred / ztsnr markers), conflicts with the model
entry, bases.yaml (prompt conventions and settings per base; prose prompts for Flux) and how a model's settings are
resolved."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT

from ghostreview import config
from ghostreview.config import ConfigError, parse_params
from ghostreview.generation import bases, loading
from ghostreview.generation.bases import BaseError, read_file_base, resolve_base
from ghostreview.generation.families import FAMILIES, FLUX_FAMILY
from ghostreview.generation.loading import CheckpointFile
from ghostreview.generation.plan import sampler_name
from ghostreview.kit.sd import write_tiny_checkpoint
from ghostreview.protocol import (
    EMPHASIS,
    BaseProtocol,
    BaseSettings,
    BenchmarkError,
    base_protocol,
    benchmark_items,
    cut_benchmark,
    load_benchmark,
    lora_items,
    model_lora_table,
    parse_bases,
    parse_prompts,
)

V1 = ROOT / "data" / "benchmark" / "v1"
FEW = {"general": 2, "style": 2, "lora": 1}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, dict]:
    """The tensor shapes of the tiny SD1 and SDXL checkpoints (their real key layout), by family."""
    root = tmp_path_factory.mktemp("bases")
    return {f: dict(loading.inspect_checkpoint(write_tiny_checkpoint(root / f"{f}.safetensors", f, 1)).shapes)
            for f in FAMILIES}


def ckpt(shapes, family: str, metadata: dict | None = None, markers: tuple[str, ...] = ()) -> CheckpointFile:
    keys = {**shapes[family], **{m: [0] for m in markers}}
    return CheckpointFile(Path(f"/models/{family}.safetensors"), "safetensors", keys, metadata or {})


def test_copies_and_families_agree():
    assert config.BASES == bases.BASES
    assert loading.ZTSNR_KEY == bases.ZTSNR_KEY
    assert set(bases.BASE_FAMILIES) == set(bases.BASES)
    assert set(bases.BASE_FAMILIES.values()) <= {*FAMILIES, FLUX_FAMILY}
    assert {bases.BASE_FAMILIES[b] for b in bases.PLAIN_BASES.values()} == set(bases.PLAIN_BASES)
    assert bases.bases_of("sdxl") == ("sdxl", "pony", "illustrious", "noobai") and bases.bases_of("sd15") == ("sd15",)


def test_file_says_nothing(shapes):
    told = read_file_base(ckpt(shapes, "sdxl"))
    assert (told.architecture, told.prediction, told.ztsnr, told.family) == (None, None, False, None)
    assert resolve_base(ckpt(shapes, "sdxl")) == bases.ModelBase("sdxl", "sdxl", "epsilon", False)
    assert resolve_base(ckpt(shapes, "sd15")) == bases.ModelBase("sd15", "sd15", "epsilon", False)


def test_markers_and_modelspec_are_read(shapes):
    marked = ckpt(shapes, "sdxl", markers=("v_pred", "ztsnr"))
    told = read_file_base(marked)
    assert (told.prediction, told.ztsnr) == ("v_prediction", True) and "'v_pred' key" in told.prediction_source
    assert marked.ztsnr
    assert resolve_base(marked, "noobai") == bases.ModelBase("noobai", "sdxl", "v_prediction", True)
    spec = ckpt(shapes, "sdxl", {"modelspec.architecture": "stable-diffusion-xl-v1-base",
                                 "modelspec.prediction_type": "v"})
    assert read_file_base(spec).family == "sdxl" and resolve_base(spec, "pony").prediction == "v_prediction"
    said_eps = ckpt(shapes, "sdxl", {"modelspec.prediction_type": "epsilon"})
    assert resolve_base(said_eps).prediction == "epsilon"
    # v_pred alone (no ztsnr): v-prediction on the model's own schedule, as A1111 and ComfyUI do
    assert resolve_base(ckpt(shapes, "sdxl", markers=("v_pred",))) == bases.ModelBase("sdxl", "sdxl", "v_prediction",
                                                                                       False)


def test_base_of_another_family_is_refused(shapes):
    with pytest.raises(BaseError) as err:
        resolve_base(ckpt(shapes, "sd15"), "pony")
    message = str(err.value)
    assert all(part in message for part in ("'pony'", "an sdxl base", "/models/sd15.safetensors",
                                            "an sd15 checkpoint", "sd15"))


def test_modelspec_architecture_contradiction_names_both(shapes):
    lying = ckpt(shapes, "sdxl", {"modelspec.architecture": "stable-diffusion-v1"})
    with pytest.raises(BaseError) as err:
        resolve_base(lying, "illustrious")
    message = str(err.value)
    assert all(part in message for part in ("'illustrious'", "modelspec.architecture", "'stable-diffusion-v1'",
                                            "/models/sdxl.safetensors", "an sdxl checkpoint"))
    # an architecture naming no reviewed base (or an unknown one) decides nothing: the tensor keys do
    assert resolve_base(ckpt(shapes, "sdxl", {"modelspec.architecture": "something-else"})).base == "sdxl"


def test_prediction_contradiction_names_both_the_file_and_the_key(shapes):
    marked = ckpt(shapes, "sdxl", markers=("v_pred", "ztsnr"))
    with pytest.raises(BaseError) as err:
        resolve_base(marked, "noobai", "epsilon")
    message = str(err.value)
    assert all(part in message for part in ("'epsilon'", "'v_prediction'", "'v_pred' key",
                                            "/models/sdxl.safetensors"))
    assert resolve_base(marked, None, "v_prediction").prediction == "v_prediction"  # agreeing is fine
    # a file that says nothing lets the entry decide
    assert resolve_base(ckpt(shapes, "sdxl"), "noobai", "v_prediction").prediction == "v_prediction"
    spec_eps = ckpt(shapes, "sdxl", {"modelspec.prediction_type": "epsilon"})
    with pytest.raises(BaseError, match="modelspec.prediction_type = 'epsilon'"):
        resolve_base(spec_eps, None, "v_prediction")
    torn = ckpt(shapes, "sdxl", {"modelspec.prediction_type": "epsilon"}, ("v_pred",))
    with pytest.raises(BaseError, match="'v_pred' key .* says 'epsilon'"):
        read_file_base(torn)


def test_unknown_base_lists_the_valid_ones(shapes):
    with pytest.raises(BaseError, match="unknown base 'ponyxl'; valid: sd15, sdxl, pony, illustrious, noobai"):
        resolve_base(ckpt(shapes, "sdxl"), "ponyxl")
    with pytest.raises(ConfigError, match='models.m.base = .ponyxl. .*Did you mean "pony"'):
        parse_params({"models": {"m": {"checkpoint": "x", "base": "ponyxl"}}})
    with pytest.raises(ConfigError, match="models.m.width = 1004 is not a positive multiple of 8"):
        parse_params({"models": {"m": {"checkpoint": "x", "width": 1004}}})


def test_add_model_base_choice(shapes):
    assert bases.file_base_choice(ckpt(shapes, "sd15")) == "sd15"
    assert bases.file_base_choice(ckpt(shapes, "sdxl", markers=("v_pred",))) is None  # v-pred is not NoobAI's alone


# --------------------------------------------------------------------------------------------------- bases.yaml
@pytest.fixture(scope="module")
def bench():
    return load_benchmark(V1)


def test_v1_bases_cover_every_base_with_valid_settings(bench):
    assert tuple(bench.bases) == bases.BASES
    for name in ("sd15", "sdxl"):  # the plain bases keep params' settings and prompts.yaml as they are
        assert bench.bases[name] == BaseProtocol()
    for name in ("pony", "illustrious", "noobai"):
        entry = bench.bases[name]
        for prediction in ("epsilon", "v_prediction"):
            s = entry.settings_for(prediction)
            sampler_name(s.sampler, s.schedule_type)  # a sampler we draw with
            assert (s.width, s.height, s.hires, s.clip_skip) == (1024, 1024, False, 2)
        assert entry.prompt_prefix and entry.negative_prompt is not None
    noob = bench.bases["noobai"]
    assert (noob.settings_for("epsilon").sampler, noob.settings_for("v_prediction").sampler) == ("Euler a", "Euler")
    assert noob.settings_for("v_prediction").steps == noob.settings.steps  # only what v_prediction names changes


def test_bases_yaml_errors_name_the_line_and_fix():
    with pytest.raises(BenchmarkError, match=r"bases.yaml: bases.ponyy: unknown base 'ponyy'.*Did you mean"):
        parse_bases({"bases": {"ponyy": {}}})
    with pytest.raises(BenchmarkError, match=r"bases.pony.steps.*expected a whole number"):
        parse_bases({"bases": {"pony": {"steps": "25"}}})
    with pytest.raises(BenchmarkError, match=r"bases.pony.size.*multiples of 8"):
        parse_bases({"bases": {"pony": {"size": "1004x1024"}}})
    with pytest.raises(BenchmarkError, match=r"bases.pony.v_prediction.*unknown key.*cfg_scale"):
        parse_bases({"bases": {"pony": {"v_prediction": {"cfg": 4}}}})


def test_a_base_without_entry_is_refused_but_plain_bases_need_none(bench):
    empty = dataclasses.replace(bench, bases={})
    assert base_protocol(empty, "sdxl") == BaseProtocol()
    with pytest.raises(BenchmarkError, match="no entry for base 'pony'"):
        base_protocol(empty, "pony")


def test_base_conventions_keep_subjects_and_seeds(bench):
    plain = benchmark_items(bench, "sdxl", FEW)
    assert benchmark_items(bench, "sdxl", FEW, "sdxl") == plain  # the plain base: the images of before
    pony = benchmark_items(bench, "sdxl", FEW, "pony")
    conv = bench.bases["pony"]
    drawn_alike = [i for i in plain if i.task != "lora"]
    assert [(i.task, i.item, i.seed, i.subject) for i in pony if i.task != "lora"] == [
        (i.task, i.item, i.seed, i.subject) for i in drawn_alike]
    # Pony draws its own LoRA table (SDXL's LoRAs do not transfer), header prompts as written, the same seeds
    assert [i for i in pony if i.task == "lora"] == lora_items(bench, "pony", FEW["lora"])
    assert [i.seed for i in pony if i.task == "lora"] == [i.seed for i in plain if i.task == "lora"]
    for mine, theirs in zip([i for i in pony if i.task != "lora"], drawn_alike, strict=True):
        assert mine.prompt == f"{conv.prompt_prefix}, {theirs.prompt}"
        if mine.task == "general":
            assert (theirs.negative_prompt, mine.negative_prompt) == (bench.negative_prompt, conv.negative_prompt)
        else:  # the style's own negative first, then the base's instead of prompts.yaml's
            style = next(s for s in bench.styles if s.name == mine.item)
            assert mine.negative_prompt.startswith(style.negative_prompt.strip().strip(","))
            assert mine.negative_prompt.endswith(conv.negative_prompt)
            assert bench.negative_prompt not in mine.negative_prompt


def test_each_base_draws_its_lora_table(bench, tmp_path):
    """Pony and Illustrious LoRAs do not transfer from SDXL's table: their bases draw their own (NoobAI, trained from
    Illustrious-XL, Illustrious'); every other base its family's. A lora_table that is missing or of another family
    is refused at load."""
    tables = {base: model_lora_table(bench, bases.BASE_FAMILIES[base], base) for base in bases.BASES}
    assert tables == {"sd15": "sd15", "sdxl": "sdxl", "pony": "pony", "illustrious": "illustrious",
                      "noobai": "illustrious", "flux1-dev": "flux", "flux1-schnell": "flux"}
    with pytest.raises(BenchmarkError, match="unknown model family 'sd1.5'"):
        model_lora_table(bench, "sd1.5")
    cut = tmp_path / "cut"
    cut_benchmark(V1, cut, general=1, styles=1, loras=1)
    text = (cut / "bases.yaml").read_text(encoding="utf-8")
    (cut / "bases.yaml").write_text(text.replace("lora_table: pony", "lora_table: flux"), encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"bases.pony.lora_table: 'flux' holds flux LoRAs, but pony is an sdxl"):
        load_benchmark(cut)
    (cut / "loras_pony.yaml").unlink()
    (cut / "bases.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"bases.pony.lora_table: 'pony' is no LoRA table.*Add loras_pony.yaml"):
        load_benchmark(cut)


def test_prose_bases_draw_each_general_prompt_in_plain_sentences(bench):
    """Flux.1 reads natural language: its general images are drawn from each prompt's prose, same item and seeds;
    style and LoRA prompts are those of every base."""
    assert [b for b, conv in bench.bases.items() if conv.prose] == ["flux1-dev", "flux1-schnell"]
    assert all(p.prose and not EMPHASIS.search(p.prose) and "1girl" not in p.prose for p in bench.general)
    counts = dict(FEW, lora=0)  # Flux has no LoRA table
    tags = benchmark_items(bench, "sdxl", counts)
    flux = benchmark_items(bench, "flux", counts, "flux1-dev")
    assert [(i.task, i.item, i.seed, i.subject) for i in flux] == [(i.task, i.item, i.seed, i.subject) for i in tags]
    prose = {p.id: p.prose for p in bench.general}
    for mine, theirs in zip(flux, tags, strict=True):
        assert mine.prompt == (prose[mine.item] if mine.task == "general" else theirs.prompt)


def test_prose_is_checked_where_it_is_read(tmp_path):
    with pytest.raises(BenchmarkError, match=r"prompts.yaml: prompts\[0\].prose.*emphasis '\(bokeh:1.1\)'"):
        parse_prompts({"negative_prompt": "", "prompts": [{"id": "a", "group": "common", "category": "x", "prompt":
                                                           "a cat", "prose": "A cat in soft (bokeh:1.1) light."}]})
    cut = tmp_path / "cut"
    cut_benchmark(V1, cut, general=2, styles=1, loras=1)
    data = yaml.safe_load((cut / "prompts.yaml").read_text(encoding="utf-8"))
    del data["prompts"][1]["prose"]
    (cut / "prompts.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(BenchmarkError, match=rf"prompt '{data['prompts'][1]['id']}' has no prose.*flux1-dev, "
                                             r"flux1-schnell \(prose: true\)"):
        load_benchmark(cut)


# --------------------------------------------------------------------------------------------------- settings
@pytest.fixture(scope="module")
def stage():
    from conftest import stage_script

    module = stage_script("generate")
    torch.set_flush_denormal(False)
    return module


def settings(stage, bench, ckpt_file, entry: dict, generation: dict | None = None):
    params = parse_params({"models": {"m": {"checkpoint": "x.safetensors", **entry}},
                           "generation": generation or {"sampler": "DPM++ 2M Karras", "steps": 20, "width": 512,
                                                        "height": 512}})
    return stage.settings_for(params, "m", ckpt_file, Path("/work"), bench)


def test_settings_entry_over_base_over_generation(stage, bench, shapes):
    plain = settings(stage, bench, ckpt(shapes, "sdxl"), {})
    g = plain.generation
    assert (plain.base, g.sampler, g.steps, g.width, g.cfg_scale, plain.clip_skip) == (
        "sdxl", "DPM++ 2M Karras", 20, 512, 7.0, 1)
    assert g.hires is not None  # params' hires fix, as before bases
    pony = settings(stage, bench, ckpt(shapes, "sdxl"), {"base": "pony"})
    p = pony.generation
    assert (p.sampler, p.steps, p.cfg_scale, p.width, p.height, p.hires, pony.clip_skip) == (
        "Euler a", 25, 7.0, 1024, 1024, None, 2)
    vpred = settings(stage, bench, ckpt(shapes, "sdxl", markers=("v_pred", "ztsnr")), {"base": "noobai"})
    v = vpred.generation
    assert (vpred.prediction, v.sampler, v.cfg_scale, v.steps) == ("v_prediction", "Euler", 4.5, 28)
    own = settings(stage, bench, ckpt(shapes, "sdxl", markers=("v_pred", "ztsnr")),
                   {"base": "noobai", "width": 64, "height": 96, "steps": 3, "cfg_scale": 3, "sampler": "DPM++ 2M",
                    "clip_skip": 1})
    o = own.generation
    # a sampler named by the entry takes no schedule type from below it: "DPM++ 2M" alone is Uniform
    assert (o.sampler, o.steps, o.cfg_scale, o.width, o.height, own.clip_skip) == ("DPM++ 2M", 3, 3.0, 64, 96, 1)
    scheduled = settings(stage, bench, ckpt(shapes, "sdxl"), {"schedule_type": "Karras", "sampler": "Euler"})
    assert scheduled.generation.sampler == "Euler Karras"


def test_a_model_entry_chooses_prose_or_tags(stage, bench, shapes, tmp_path):
    """models.<m>.prose: an SDXL model trained on natural-language captions reads the prose; a Flux model may be
    given the tags; unset, the base decides. The override reaches the plan (the prompt each image is drawn with)."""
    prose = {p.id: p.prose for p in bench.general}
    tags = {p.id: p.prompt for p in bench.general}

    def general(family, base, choice):
        return {i.item: i.prompt for i in benchmark_items(bench, family, dict(FEW, lora=0), base, choice)
                if i.task == "general"}

    assert general("sdxl", None, True) == prose and general("sdxl", None, None) == tags
    assert general("flux", "flux1-dev", False) == tags and general("flux", "flux1-dev", None) == prose
    assert settings(stage, bench, ckpt(shapes, "sdxl"), {"prose": True}).prose is True
    assert settings(stage, bench, ckpt(shapes, "sdxl"), {}).prose is None
    cut = tmp_path / "cut"
    cut_benchmark(V1, cut, general=1, styles=1, loras=1)
    data = yaml.safe_load((cut / "prompts.yaml").read_text(encoding="utf-8"))
    del data["prompts"][0]["prose"]
    (cut / "prompts.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    (cut / "bases.yaml").write_text((cut / "bases.yaml").read_text().replace("prose: true", "prose: false"))
    bare = load_benchmark(cut)  # no base reads prose: a benchmark without it loads
    with pytest.raises(BenchmarkError, match=r"has no prose, which a model with `prose: true` is drawn from"):
        benchmark_items(bare, "sdxl", None, None, True)


def test_settings_errors_name_the_choice(stage, bench, shapes):
    from ghostreview.generation.plan import SamplerChoiceError

    with pytest.raises(SamplerChoiceError, match="unknown sampler 'Euler aa'"):
        settings(stage, bench, ckpt(shapes, "sdxl"), {"sampler": "Euler aa"})
    with pytest.raises(BaseError, match="an sdxl base"):
        settings(stage, bench, ckpt(shapes, "sd15"), {"base": "noobai"})


def test_base_settings_over():
    low = BaseSettings(sampler="Euler a", steps=25, cfg_scale=7.0)
    high = BaseSettings(steps=30, width=64)
    assert high.over(low) == BaseSettings(sampler="Euler a", steps=30, cfg_scale=7.0, width=64)
    assert BaseSettings().over(low) == low and low.over(BaseSettings()) == low


# --------------------------------------------------------------------------------------------------- add-model
def test_add_model_writes_a_checked_base(tmp_path):
    import yaml

    from ghostreview.kit.vpred import write_tiny_vpred_checkpoint
    from ghostreview.models_cli import ModelsError, add_model

    params = tmp_path / "params.yaml"
    params.write_text("paths:\n  cache: cache\nmodels:\n", encoding="utf-8")
    xl = write_tiny_checkpoint(tmp_path / "xl.safetensors", "sdxl", 2)
    sd = write_tiny_checkpoint(tmp_path / "sd.safetensors", "sd15", 2)
    vp = write_tiny_vpred_checkpoint(tmp_path / "vp.safetensors", 2)
    assert add_model(params, xl, name="p", base="pony").base == "pony"
    plain = add_model(params, sd, name="s")  # nothing to choose: the file's family has one base
    assert plain.base == "sd15"
    with pytest.raises(ModelsError, match=r"--base: base 'pony' is an sdxl base, but .*sd.safetensors is an sd15"):
        add_model(params, sd, name="s2", base="pony")
    with pytest.raises(ModelsError, match=r"v-prediction sdxl checkpoint \(the 'v_pred' key\).*pass --base, one of "
                                          r"sdxl, pony, illustrious, noobai"):
        add_model(params, vp, name="v")
    added = add_model(params, vp, name="v", base="noobai")
    assert (added.base, added.prediction, added.ztsnr) == ("noobai", "v_prediction", True)
    entries = yaml.safe_load(params.read_text())["models"]
    assert entries["p"]["base"] == "pony" and entries["v"]["base"] == "noobai" and "base" not in entries["s"]
    assert set(entries) == {"p", "s", "v"}  # the refused ones wrote nothing
