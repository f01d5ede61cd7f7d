"""generate: planning, the content-addressed store, resuming, infotext in every PNG, LoRA statuses recorded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import small_benchmark
from PIL import Image

from ghostreview import generate as gen
from ghostreview.benchmark import load_benchmark
from ghostreview.config import GenerationParams, HiresParams
from ghostreview.generate import GenerateSettings, run_generate
from ghostreview.loading import CheckpointError
from ghostreview.manifest import read_manifest
from ghostreview.hashing import autov2, file_sha256
from ghostreview.infotext import parse_infotext, read_png_infotext
from ghostreview.kit.lora import write_tiny_lora
from ghostreview.kit.sd import write_tiny_checkpoint, write_tiny_config_dir

GENERATION = GenerationParams(sampler="Euler a", steps=2, width=64, height=64, batch_size=2,
                              hires=HiresParams(enabled=False), cpu_threads=1)


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


def settings(root: Path, store: Path, **over) -> GenerateSettings:
    base = dict(
        model_name="tiny", checkpoint=root / "model.safetensors", config_dir=root / "configs" / "sd15", vae=None,
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
    real_draw, calls = gen.draw, []

    def dying_draw(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed midway")
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(gen, "draw", dying_draw)
    with pytest.raises(KeyboardInterrupt):
        run_generate(bench, settings(root, store), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # the stage output appears only complete
    finished = list(store.rglob("*.png"))
    assert len(finished) == 2  # the first batch (batch_size 2) landed in the store
    monkeypatch.setattr(gen, "draw", real_draw)
    stats = run_generate(bench, settings(root, store), tmp_path / "out", progress=False)
    assert stats["reused"] == 2 and stats["drawn"] == 3
    for png in (tmp_path / "out").glob("*.png"):
        Image.open(png).verify()


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
                        dataclasses.asdict(GENERATION), 1, root / "loras" / "sd15", lambda p: "ok",
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
    refused = dataclasses.replace(s, allow_pickle=False)
    with pytest.raises(CheckpointError, match="allow_pickle: true"):
        run_generate(bench, refused, tmp_path / "out2", progress=False)


# ------------------------------------------------------------------------------------------------ LoRAs read in part


def test_a_lora_applied_in_part_is_flagged_and_one_diffusers_cannot_read_is_unsupported(kit, tmp_path):
    root, bench = kit
    loras, entries = tmp_path / "loras", bench.loras["sd15"]
    # text encoder q/k/v and fc1 without out_proj: diffusers drops q/k/v; a lone q_proj: diffusers cannot read it
    write_tiny_lora(loras / "sd15" / entries[0].file, "sd15", root / "configs" / "sd15", seed=1,
                    keep=r"^lora_unet_|_self_attn_[qkv]_proj$|_mlp_fc1$")
    write_tiny_lora(loras / "sd15" / entries[1].file, "sd15", root / "configs" / "sd15", seed=2, keep=r"^lora_te_.*_q_proj$")
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
