"""generate: planning, the content-addressed store, resuming, infotext in every PNG, LoRA statuses recorded."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import small_benchmark
from PIL import Image

from ghostreview.generation import generate as gen
from ghostreview.generation import worker
from ghostreview.generation.draw import Hires
from ghostreview.generation.generate import GenerateSettings, run_generate
from ghostreview.generation.infotext import parse_infotext, read_png_infotext
from ghostreview.generation.loading import CheckpointError, inspect_checkpoint
from ghostreview.generation.manifest import read_manifest
from ghostreview.generation.plan import DrawSettings
from ghostreview.kit.lora import write_tiny_lora
from ghostreview.kit.sd import write_tiny_checkpoint, write_tiny_config_dir
from ghostreview.protocol import load_benchmark
from ghostreview.util.hashing import autov2, file_sha256

GENERATION = DrawSettings(sampler="Euler a", steps=2, cfg_scale=7.0, width=64, height=64, batch_size=2, hires=None,
                          cpu_threads=1)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("kit")
    bench_dir = small_benchmark(root / "bench", general=2, styles=1, loras=2)
    bench = load_benchmark(bench_dir)
    write_tiny_config_dir(root / "configs" / "sd15", "sd15")
    write_tiny_config_dir(root / "configs" / "sdxl", "sdxl")
    write_tiny_checkpoint(root / "model.safetensors", "sd15", seed=7)
    for family in ("sd15", "sdxl"):
        for i, entry in enumerate(bench.loras[family]):
            write_tiny_lora(root / "loras" / family / entry.file, family, root / "configs" / family, seed=i)
    return root, bench


def settings(root: Path, store: Path, checkpoint: Path | None = None, **over) -> GenerateSettings:
    """The stage's settings for the kit's model (or ``checkpoint``), inspected as the stage inspects it."""
    path = checkpoint or root / "model.safetensors"
    base = dict(
        model_name="tiny", checkpoint=inspect_checkpoint(path, allow_pickle=over.get("allow_pickle", False)),
        config_dir=root / "configs" / "sd15", vae=None,
        clip_skip=1, prediction="epsilon", allow_pickle=False,
        lora_dirs={"sd15": root / "loras" / "sd15", "sdxl": root / "loras" / "sdxl"},
        counts={"general": 1, "style": 1, "lora": 1}, tasks=("general", "style", "lora"),
        generation=GENERATION, store=store, cache=root / "cache",
    )
    base.update(over)
    return GenerateSettings(**base)


def test_every_png_carries_a1111_infotext_and_the_manifest_lists_it(kit, tmp_path):
    root, bench = kit
    stats = run_generate(bench, settings(root, tmp_path / "store"), tmp_path / "out", progress=False)
    rows = read_manifest(tmp_path / "out")
    assert stats == {"images": 5, "drawn": 5, "reused": 0, "skipped": 0}
    assert [r["task"] for r in rows] == ["general", "general", "style", "lora", "lora"]
    sha = file_sha256(root / "model.safetensors")
    for row in rows:
        prompt, negative, fields = parse_infotext(read_png_infotext(tmp_path / "out" / row["image"]))
        assert prompt == row["prompt"] and negative == row["negative_prompt"]
        assert fields["Seed"] == row["seed"] and fields["Model hash"] == autov2(sha)
        assert fields["Sampler"] == "Euler a" and fields["Size"] == "64x64" and fields["Steps"] == "2"
        assert row["image"] == f"{row['image_hash']}.png"
    lora_rows = [r for r in rows if r["task"] == "lora"]
    for row in lora_rows:
        fields = parse_infotext(row["infotext"])[2]
        assert f"<lora:{row['item']}:" in row["prompt"] and row["item"] in fields["Lora hashes"]
        assert row["lora_status"] == "ok"
    assert (tmp_path / "out" / "model.json").is_file()


def test_second_run_reuses_the_store_and_more_seeds_draw_only_new_images(kit, tmp_path):
    root, bench = kit
    store = tmp_path / "store"
    run_generate(bench, settings(root, store), tmp_path / "a", progress=False)
    again = run_generate(bench, settings(root, store), tmp_path / "b", progress=False)
    assert again["drawn"] == 0 and again["reused"] == 5
    for row in read_manifest(tmp_path / "a"):
        assert (tmp_path / "a" / row["image"]).read_bytes() == (tmp_path / "b" / row["image"]).read_bytes()
    more = run_generate(bench, settings(root, store, counts={"general": 2, "style": 1, "lora": 1}),
                        tmp_path / "c", progress=False)
    assert more["drawn"] == 2 and more["reused"] == 5  # the second seed of each of the 2 general prompts


def test_interrupted_run_resumes_from_what_finished(kit, tmp_path, monkeypatch):
    root, bench = kit
    store = tmp_path / "store"
    real_draw, calls = worker.draw, []

    def dying_draw(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed midway")
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(worker, "draw", dying_draw)
    with pytest.raises(KeyboardInterrupt):
        run_generate(bench, settings(root, store), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # the stage output appears only complete
    finished = list(store.rglob("*.png"))
    assert len(finished) == 2  # the first batch (batch_size 2) landed in the store
    monkeypatch.setattr(worker, "draw", real_draw)
    stats = run_generate(bench, settings(root, store), tmp_path / "out", progress=False)
    assert stats["reused"] == 2 and stats["drawn"] == 3
    for png in (tmp_path / "out").glob("*.png"):
        Image.open(png).verify()


def test_a_disk_full_on_the_writer_thread_stops_the_run_with_the_store_error_and_keeps_what_was_stored(
        kit, tmp_path, monkeypatch):
    """The store writes run on a writer thread (StoreWriter): its error reaches run_generate as it is, the message the
    stage turns into its disk-full error (docs/failure-modes.md), and every image acknowledged before it is whole."""
    from ghostreview.generation.store import ImageStore, StoreError

    root, bench = kit
    store = tmp_path / "store"
    real_put, puts = ImageStore.put, []

    def put(self, key, *args):
        puts.append(key)
        if len(puts) == 3:
            raise StoreError(f"could not store image {key} (No space left on device)", self.path(key))
        return real_put(self, key, *args)

    monkeypatch.setattr(ImageStore, "put", put)
    with pytest.raises(StoreError) as err:
        run_generate(bench, settings(root, store), tmp_path / "out", progress=False)
    third = ImageStore(store).path(puts[2])
    assert str(err.value) == f"could not store image {puts[2]} (No space left on device): {third}"
    assert not (tmp_path / "out").exists()
    assert all(ImageStore(store).has(k) for k in puts[:2]) and len(list(store.rglob("*.png"))) == 2
    monkeypatch.setattr(ImageStore, "put", real_put)
    again = run_generate(bench, settings(root, store), tmp_path / "out", progress=False)
    assert again["reused"] == 2 and again["drawn"] == 3


def test_lycoris_and_other_family_loras_are_recorded_not_fatal(kit, tmp_path):
    root, bench = kit
    loras = tmp_path / "loras"
    entries = bench.loras["sd15"]
    write_tiny_lora(loras / "sd15" / entries[0].file, "sd15", root / "configs" / "sd15", seed=1, variant="loha")
    write_tiny_lora(loras / "sd15" / entries[1].file, "sdxl", root / "configs" / "sdxl", seed=2)
    s = settings(root, tmp_path / "store", lora_dirs={"sd15": loras / "sd15", "sdxl": loras / "sdxl"})
    stats = run_generate(bench, s, tmp_path / "out", progress=False)
    assert stats["skipped"] == 2 and stats["images"] == 3
    rows = {r["item"]: r for r in read_manifest(tmp_path / "out") if r["task"] == "lora"}
    first, second = rows[entries[0].name], rows[entries[1].name]
    assert first["flags"] == "lora_unsupported" and "LoHa" in first["lora_status"] and first["image"] == ""
    assert second["flags"] == "lora_incompatible" and "sdxl" in second["lora_status"] and second["image"] == ""


def test_missing_lora_file_stops_before_any_work(kit, tmp_path):
    root, bench = kit
    s = settings(root, tmp_path / "store", lora_dirs={"sd15": tmp_path / "nowhere", "sdxl": tmp_path / "nowhere"})
    with pytest.raises(ValueError, match=r"LoRA file\(s\) of the benchmark are missing.*benchmark.tasks"):
        run_generate(bench, s, tmp_path / "out", progress=False)
    assert not (tmp_path / "store").exists()


def test_image_key_covers_everything_that_decides_pixels(kit):
    root, bench = kit
    model = gen.ModelIdentity("m", "sd15", "model", "a" * 64)
    job = gen.plan_jobs(bench, "sd15", {"general": 1, "style": 1, "lora": 1}, ("general",),
                        GENERATION, 1, root / "loras" / "sd15", lambda p: "ok",
                        lambda p: "0" * 64)[0]
    runtime = {"torch": "x", "device": "cpu"}
    key = gen.job_key(gen.job_fields(job, model, runtime))
    variants = [
        gen.job_fields(dataclasses.replace(job, request=dataclasses.replace(job.request, steps=3)), model, runtime),
        gen.job_fields(dataclasses.replace(job, request=dataclasses.replace(job.request, seed=9)), model, runtime),
        gen.job_fields(dataclasses.replace(job, request=dataclasses.replace(job.request, prompt="x")), model, runtime),
        gen.job_fields(job, dataclasses.replace(model, sha256="b" * 64), runtime),
        gen.job_fields(job, dataclasses.replace(model, vae_sha256="c" * 64), runtime),
        gen.job_fields(job, model, {"torch": "y", "device": "cpu"}),
    ]
    keys = {gen.job_key(v) for v in variants}
    assert key not in keys and len(keys) == len(variants)


def test_a_schedule_type_draws_what_the_combined_name_draws_under_the_same_key(kit):
    """generation.sampler "DPM++ 2M" + generation.schedule_type "Karras" is "DPM++ 2M Karras": the same request,
    store key and infotext (A1111 1.9's split form), so images drawn before schedule types stay valid; the infotext
    reads back through import-infotext as the same sampler."""
    from ghostreview.generation.plan import sampler_name
    from ghostreview.import_infotext import sampler_settings

    root, bench = kit
    model = gen.ModelIdentity("m", "sd15", "model", "a" * 64)
    runtime = {"torch": "x", "device": "cpu"}

    def drawn(sampler: str, schedule: str | None) -> tuple[str, str]:
        settings_ = dataclasses.replace(GENERATION, sampler=sampler_name(sampler, schedule))
        job = gen.plan_jobs(bench, "sd15", {"general": 1, "style": 1, "lora": 1}, ("general",), settings_, 1,
                            root / "loras" / "sd15", lambda p: "ok", lambda p: "0" * 64)[0]
        return gen.job_key(gen.job_fields(job, model, runtime)), gen.infotext_for(job, model, "v", lambda p: "0" * 12)

    split, combined = drawn("DPM++ 2M", "Karras"), drawn("DPM++ 2M Karras", None)
    assert split == combined
    assert ", Sampler: DPM++ 2M, Schedule type: Karras, " in split[1]
    assert sampler_settings(parse_infotext(split[1])[2]) == {"sampler": "DPM++ 2M Karras", "schedule_type": "Karras"}
    assert drawn("DPM++ 2M", "Automatic") == combined  # A1111 1.9's Automatic for DPM++ 2M is Karras
    others = {drawn("DPM++ 2M", "Exponential")[0], drawn("DPM++ 2M", None)[0], drawn("DPM++ 2M", "Uniform")[0]}
    assert split[0] not in others and len(others) == 2  # None and Uniform: the plain name, as before
    text = drawn("DPM++ 3M SDE", "Automatic")[1]
    assert ", Sampler: DPM++ 3M SDE, Schedule type: Exponential, " in text
    assert sampler_settings(parse_infotext(text)[2])["sampler"] == "DPM++ 3M SDE Exponential"


@pytest.mark.parametrize("generation,fragments", [
    ({"sampler": "DPM++ 2M", "schedule_type": "karras"},
     ["generation.schedule_type:", "unknown schedule type 'karras'", "did you mean 'Karras'?",
      "Valid: Automatic, Uniform, Karras, Exponential, Beta"]),
    ({"sampler": "DPM++ 2M Karras", "schedule_type": "Exponential"},
     ["generation.schedule_type:", "contradicts sampler 'DPM++ 2M Karras'", "write sampler 'DPM++ 2M'"]),
    ({"sampler": "Euler a", "schedule_type": "Karras"}, ["not available for 'Euler a'; valid for it: Automatic"]),
    ({"sampler": "DPM++ 2M Karas", "schedule_type": "Karras"},
     ["generation.sampler:", "did you mean 'DPM++ 2M Karras'?"]),
])
def test_a_bad_schedule_type_stops_validation_naming_the_file_and_key(generation, fragments):
    from ghostreview import validate
    from ghostreview.config import parse_params

    params = parse_params({"models": {"m": {"checkpoint": "m.safetensors"}}, "generation": generation}, "my.yaml")
    with pytest.raises(validate.ParamsError) as err:
        validate.check_sampler(params, "my.yaml")
    assert str(err.value).startswith("my.yaml: generation.")
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


# ------------------------------------------------------------------------------------------------ pickle checkpoints


def pixels_by_image(out: Path) -> dict[tuple[str, str, str], bytes]:
    return {(r["task"], r["item"], r["seed"]): Image.open(out / r["image"]).tobytes() for r in read_manifest(out)}


def test_a_pickle_checkpoint_made_from_a_kit_model_generates_when_allowed(kit, tmp_path):
    """A .ckpt ({"state_dict": ...}, as A1111-era files are) draws exactly what its .safetensors twin draws."""
    from safetensors.torch import load_file

    root, bench = kit
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(root / "model.safetensors")), "global_step": 1234}, ckpt)
    only = {"tasks": ("general",)}
    run_generate(bench, settings(root, tmp_path / "store", **only), tmp_path / "st", progress=False)
    stats = run_generate(bench, settings(root, tmp_path / "store", checkpoint=ckpt, allow_pickle=True, **only),
                         tmp_path / "pk", progress=False)
    assert stats == {"images": 2, "drawn": 2, "reused": 0, "skipped": 0}  # another file hash: other image keys
    assert pixels_by_image(tmp_path / "pk") == pixels_by_image(tmp_path / "st")
    model = json.loads((tmp_path / "pk" / "model.json").read_text())
    assert model["sha256"] == file_sha256(ckpt) and model["checkpoint_name"] == "model"
    assert not model["random_weights"]  # no kit marker in this pickle: nothing claims it is a stand-in


def test_a_kit_pickle_checkpoint_loads_with_its_tiny_config_when_none_is_given(kit, tmp_path):
    from ghostreview.kit import sd

    root, bench = kit
    ckpt = sd.write_tiny_pickle_checkpoint(tmp_path / "kit.ckpt", "sd15", seed=7)
    s = settings(root, tmp_path / "store", checkpoint=ckpt, allow_pickle=True, config_dir=None, tasks=("general",))
    assert run_generate(bench, s, tmp_path / "out", progress=False)["drawn"] == 2
    assert json.loads((tmp_path / "out" / "model.json").read_text())["random_weights"] is True
    with pytest.raises(CheckpointError, match="allow_pickle: true"):  # refused where the stage reads it, once
        settings(root, tmp_path / "store", checkpoint=ckpt, allow_pickle=False, config_dir=None, tasks=("general",))


# ------------------------------------------------------------------------------------------------ LoRAs read in part


def test_a_lora_applied_in_part_is_flagged_and_one_diffusers_cannot_read_is_unsupported(kit, tmp_path):
    root, bench = kit
    loras, entries = tmp_path / "loras", bench.loras["sd15"]
    # text encoder q/k/v and fc1 without out_proj: diffusers drops q/k/v; a lone q_proj: diffusers cannot read it
    write_tiny_lora(loras / "sd15" / entries[0].file, "sd15", root / "configs" / "sd15", seed=1,
                    keep=r"^lora_unet_|_self_attn_[qkv]_proj$|_mlp_fc1$")
    write_tiny_lora(loras / "sd15" / entries[1].file, "sd15", root / "configs" / "sd15", seed=2,
                    keep=r"^lora_te_.*_q_proj$")
    s = settings(root, tmp_path / "store", lora_dirs={"sd15": loras / "sd15", "sdxl": loras / "sdxl"}, tasks=("lora",))
    for out in ("first", "again"):  # the second run draws nothing: the flag comes back from the store
        stats = run_generate(bench, s, tmp_path / out, progress=False)
        rows = {r["item"]: r for r in read_manifest(tmp_path / out)}
        partial, unreadable = rows[entries[0].name], rows[entries[1].name]
        assert partial["flags"] == "lora_partial" and partial["image"]
        assert partial["lora_status"].startswith(f"partial: {entries[0].name}: no delta on 36 targeted modules: ")
        assert "lora_te_text_model_encoder_layers_*_self_attn_q_proj (12)" in partial["lora_status"]
        assert unreadable["flags"] == "lora_unsupported" and unreadable["image"] == ""
        assert "Could not automatically infer state dict type" in unreadable["lora_status"]
    assert stats == {"images": 1, "drawn": 0, "reused": 1, "skipped": 1}


# ------------------------------------------------------------------------------------------------ A1111 reads our PNGs
# What AUTOMATIC1111 (1.9 and later) takes from an infotext pasted into it, written here from its documented
# behaviour (no code of it): the last line holds the parameters when at least 3 "Key: value" pairs are found in it
# (values with commas, colons or newlines are JSON strings); lines are stripped, and from the first one starting with
# "Negative prompt:" on they are the negative prompt. A "WxH" value becomes "<Key>-1" and "<Key>-2". Missing fields
# mean the defaults: Clip skip 1, RNG GPU, Schedule type Automatic, no hires resize, the same sampler and schedule for
# the hires pass. A sampler name ending in a schedule label ("DPM++ 2M Karras") is split into the two; "Automatic" is
# the sampler's own default schedule. A Version that parses as an A1111 version before 1.6/1.7/1.8 switches on
# backward-compatibility options; one that does not parse switches on none.

A1111_PAIR = r'\s*(\w[\w /-]+):\s*("(?:[^"\\]|\\.)+"|[^,]*)(?:,|$)'
A1111_SCHEDULE_LABELS = ("Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                         "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")
A1111_AUTOMATIC = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2S a": "Karras", "DPM++ 2M SDE": "Exponential",
                   "DPM++ 2M SDE Heun": "Exponential", "DPM++ 3M SDE": "Exponential", "DPM2": "Karras",
                   "DPM2 a": "Karras", "Restart": "Karras"}  # others: Uniform
A1111_TIMESTEP_SAMPLERS = ("DDIM", "PLMS", "UniPC")  # no sigma schedule: the Schedule type does not apply


def a1111_paste(text: str) -> dict[str, str]:
    import re

    *lines, last = text.strip().split("\n")
    pairs = re.findall(A1111_PAIR, last)
    if len(pairs) < 3:
        lines, pairs = [*lines, last], []
    prompt, negative, in_negative = [], [], False
    for line in (line.strip() for line in lines):
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    res = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in pairs:
        if value[:1] == '"' == value[-1:]:
            value = json.loads(value)
        size = re.fullmatch(r"(\d+)x(\d+)", value)
        res.update({f"{key}-1": size[1], f"{key}-2": size[2]} if size else {key: value})
    defaults = {"Clip skip": "1", "RNG": "GPU", "Schedule type": "Automatic", "Hires resize-1": "0",
                "Hires resize-2": "0", "Hires sampler": "Use same sampler", "Hires schedule type": "Use same scheduler"}
    return defaults | res


def a1111_sampler(res: dict[str, str]) -> tuple[str, str]:
    """(sampler, schedule) A1111 draws with."""
    name, schedule = res["Sampler"], res["Schedule type"]
    for label in sorted(A1111_SCHEDULE_LABELS, key=len, reverse=True):
        if name.endswith(" " + label):
            name, schedule = name[: -len(label) - 1], label
            break
    if name in A1111_TIMESTEP_SAMPLERS:
        return name, "-"
    return name, A1111_AUTOMATIC.get(name, "Uniform") if schedule == "Automatic" else schedule


def a1111_version_backcompat(version: str) -> bool:
    """Whether A1111 would switch on backward-compatibility options for this Version (it does below 1.8.0)."""
    import re

    from packaging.version import InvalidVersion, Version

    m = re.match(r"([^-]+-[^-]+)-.*", version)
    try:
        return Version(m[1] if m else version) < Version("1.8.0")
    except InvalidVersion:
        return False


OUR_SCHEDULES = ("Karras", "Exponential", "Beta")  # what our names may end in (generation.samplers)


def expected_sampler(ours: str) -> tuple[str, str]:
    """What our sampler name means: a trailing "Karras", "Exponential" or "Beta" is that schedule; anything else
    samples the model's own sigmas (A1111's Uniform); A1111's time-step samplers have no schedule."""
    schedule = next((s for s in OUR_SCHEDULES if ours.endswith(" " + s)), None)
    name = ours.removesuffix(f" {schedule}") if schedule else ours
    if name in A1111_TIMESTEP_SAMPLERS:
        return name, "-"
    return name, schedule or "Uniform"


def test_a1111_pasting_our_png_draws_with_our_settings(kit, tmp_path):
    from ghostreview.kit.sd import write_tiny_vae

    root, bench = kit
    vae = write_tiny_vae(tmp_path / "tiny-vae.safetensors", "sd15", seed=8)
    generation = dataclasses.replace(GENERATION, sampler="DPM++ 2M Karras", cfg_scale=6.5, hires=Hires(
        scale=1.5, steps=1, denoising_strength=0.5, upscaler="Latent"))
    s = settings(root, tmp_path / "store", generation=generation, vae=vae, clip_skip=2, tasks=("lora",),
                 counts={"general": 1, "style": 1, "lora": 1})
    run_generate(bench, s, tmp_path / "out", progress=False)
    lora_files = {e.name: e.file for e in bench.loras["sd15"]}
    for row in read_manifest(tmp_path / "out"):
        res = a1111_paste(read_png_infotext(tmp_path / "out" / row["image"]))
        assert (res["Prompt"], res["Negative prompt"]) == (row["prompt"], row["negative_prompt"])
        assert a1111_sampler(res) == ("DPM++ 2M", "Karras")
        assert res["RNG"] == "CPU"  # A1111 draws GPU noise unless told: a different image
        assert (res["Steps"], float(res["CFG scale"]), res["Seed"]) == ("2", 6.5, row["seed"])
        assert (res["Size-1"], res["Size-2"], res["Clip skip"]) == ("64", "64", "2")
        assert (float(res["Hires upscale"]), res["Hires steps"], res["Hires upscaler"]) == (1.5, "1", "Latent")
        assert float(res["Denoising strength"]) == 0.5 and res["Hires resize-1"] == "0"
        assert (res["Hires sampler"], res["Hires schedule type"]) == ("Use same sampler", "Use same scheduler")
        assert (res["Model hash"], res["Model"]) == (autov2(file_sha256(root / "model.safetensors")), "model")
        assert (res["VAE hash"], res["VAE"]) == (autov2(file_sha256(vae)), "tiny-vae.safetensors")
        assert res["Emphasis"] == "Original" and res["Pad conds"] == "True"  # our prompt encoding, whatever A1111's
        # A1111 finds the LoRA of a pasted <lora:alias:w> tag by this hash when no local file has that alias: the
        # first 12 hex digits of the sha256 of the file's bytes after the safetensors header ("addnet" hash).
        pairs = dict(p.strip().split(":", 1) for p in res["Lora hashes"].split(","))
        data = (root / "loras" / "sd15" / lora_files[row["item"]]).read_bytes()
        addnet = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]
        assert {k.strip(): v.strip() for k, v in pairs.items()} == {row["item"]: addnet}
        assert f"<lora:{row['item']}:" in res["Prompt"]
        assert not a1111_version_backcompat(res["Version"])


def test_every_sampler_name_reaches_a1111_as_the_same_sampler_and_schedule(kit):
    from ghostreview.generation.samplers import SAMPLERS

    root, bench = kit
    model = gen.ModelIdentity("m", "sd15", "model", "a" * 64)
    job = gen.plan_jobs(bench, "sd15", {"general": 1, "style": 1, "lora": 1}, ("general",),
                        GENERATION, 1, root / "loras" / "sd15", lambda p: "ok",
                        lambda p: "0" * 64)[0]
    for name in SAMPLERS:
        text = gen.infotext_for(dataclasses.replace(job, request=dataclasses.replace(job.request, sampler=name)),
                                model, "ghostreview-x", lora_hash=lambda p: "0" * 12)
        res = a1111_paste(text)
        assert a1111_sampler(res) == expected_sampler(name), name
        assert "VAE hash" not in res and res["VAE"] == "None"  # the checkpoint's own VAE, whatever A1111 has set
        assert "Hires upscale" not in res and "Hires steps" not in res


# ------------------------------------------------------------------------------------------------ damaged store entries
# (issue 12 item 2: an image reused from the store is the image that was stored, checked against its recorded hash)


@pytest.fixture(scope="module")
def stored(kit, tmp_path_factory):
    """A store filled by one run (3 images), copied by each test before it damages an entry."""
    root, bench = kit
    where = tmp_path_factory.mktemp("stored")
    run_generate(bench, settings(root, where / "store", tasks=("general", "style")), where / "out", progress=False)
    return where / "store", {r["image_hash"]: (where / "out" / r["image"]).read_bytes() for r in
                             read_manifest(where / "out")}


def damage_entry(store: Path, key: str, other: str, how: str) -> None:
    png = store / key[:2] / f"{key}.png"
    if how == "truncated":  # as a full disk or a killed copy leaves it
        png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    elif how == "swapped":  # a valid PNG, another image
        png.write_bytes((store / other[:2] / f"{other}.png").read_bytes())
    elif how == "unhashed":  # as code before the hash wrote the entry
        meta = json.loads(png.with_suffix(".json").read_text())
        meta.pop("png", None)
        png.with_suffix(".json").write_text(json.dumps(meta))


@pytest.mark.parametrize("how", ["truncated", "swapped", "unhashed"])
def test_a_damaged_store_entry_is_drawn_again_with_a_warning_and_the_output_is_whole(kit, stored, tmp_path, capsys,
                                                                                      how):
    root, bench = kit
    pristine, images = stored
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    key, other = sorted(images)[:2]
    damage_entry(store, key, other, how)
    capsys.readouterr()
    stats = run_generate(bench, settings(root, store, tasks=("general", "style")), tmp_path / "out", progress=False)
    assert stats == {"images": 3, "drawn": 1, "reused": 2, "skipped": 0}
    out = {r["image_hash"]: (tmp_path / "out" / r["image"]).read_bytes() for r in read_manifest(tmp_path / "out")}
    assert out == images  # the redrawn image is the image first stored, every other one is the stored one
    for name in out:
        with Image.open(tmp_path / "out" / f"{name}.png") as im:
            im.load()
    err = capsys.readouterr().err
    png = store / key[:2] / f"{key}.png"
    assert str(png) in err and "drawn again" in err and "Traceback" not in err
    if how != "unhashed":  # a damaged entry is kept aside for a look; one without a hash is simply overwritten
        assert (store / "corrupt" / png.name).is_file()
    again = run_generate(bench, settings(root, store, tasks=("general", "style")), tmp_path / "out2", progress=False)
    assert again["drawn"] == 0 and "warning" not in capsys.readouterr().err


def test_an_entry_damaged_after_the_check_stops_the_stage_with_an_error_and_the_rerun_draws_it(kit, stored, tmp_path,
                                                                                                 monkeypatch):
    """Checked when the run plans its work, changed before the run links it into the output (another process, a
    failing disk): the damaged file never reaches the output; the next run draws it again."""
    from ghostreview.generation.store import DamagedEntryError, StoreError

    root, bench = kit
    pristine, images = stored
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    key = sorted(images)[0]
    png = store / key[:2] / f"{key}.png"
    real_rows = gen.manifest_rows

    def damaging_rows(*args):
        png.write_bytes(png.read_bytes()[:100])
        return real_rows(*args)

    monkeypatch.setattr(gen, "manifest_rows", damaging_rows)
    s = settings(root, store, tasks=("general", "style"))
    with pytest.raises(DamagedEntryError, match="changed in the store after this run checked it") as err:
        run_generate(bench, s, tmp_path / "out", progress=False)
    assert str(png) in str(err.value) and "dvc repro" in str(err.value) and not (tmp_path / "out").exists()
    assert not isinstance(err.value, StoreError)  # the stage adds disk-full advice to a StoreError; no disk is full
    assert (store / "corrupt" / png.name).stat().st_size == 100 and not png.exists()
    monkeypatch.setattr(gen, "manifest_rows", real_rows)
    assert run_generate(bench, s, tmp_path / "out", progress=False)["drawn"] == 1
    assert (tmp_path / "out" / png.name).read_bytes() == images[key]
