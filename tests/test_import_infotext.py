"""Importing LoRA-table entries from header PNGs written here with hand-written A1111 infotext."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ghostreview.import_infotext import ImportInfotextError, append_entries, lora_entry_from_png
from ghostreview.protocol import BenchmarkError, load_benchmark

V1 = Path(__file__).resolve().parents[1] / "data" / "benchmark" / "v1"

MOXIN = (
    "shuimo, (ink wash painting:1.2), a crane over misty mountains, <lora:MoXin_v1:0.7>, <lora:Paper Texture>\n"
    "Negative prompt: (worst quality:1.4), lowres, text\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, Schedule type: Karras, CFG scale: 7, Seed: 1829374650, Size: 512x768, "
    'Model hash: 7c3e9a1b44, Model: someMix_v2, Clip skip: 2, Lora hashes: "MoXin_v1: 1a2b3c4d5e6f, '
    'Paper Texture: 0a1b2c3d4e5f", Version: v1.6.0'
)
PAPER = (
    "paper texture, a fox <lora:Paper Texture:0.9>\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 6.5, Seed: 42, Size: 512x512"
)
NO_TAG = (
    "3d render style, a teddy bear\n"
    "Negative prompt: lowres\n"
    "Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 7, Size: 768x512, Model: otherMix"
)


GPU_NOISE_NOTE = ("drawn with A1111's default GPU noise (no RNG field): GhostReview draws CPU noise, so that image "
                  "cannot be reproduced bit-for-bit")


def png(path: Path, infotext: str | None) -> Path:
    info = PngInfo()
    if infotext is not None:
        info.add_text("parameters", infotext)
    Image.new("RGB", (8, 8), (200, 100, 50)).save(path, pnginfo=info)
    return path


def test_entry_from_png_reads_prompt_negative_settings_tags_and_model(tmp_path):
    entry = lora_entry_from_png(png(tmp_path / "moxin header.png", MOXIN))
    assert entry == {
        "name": "moxin_v1",
        "title": "MoXin_v1",
        "file": "MoXin_v1.safetensors",
        "prompt": "shuimo, (ink wash painting:1.2), a crane over misty mountains, <lora:moxin_v1:0.7>, "
                  "<lora:paper_texture:1>",
        "negative_prompt": "(worst quality:1.4), lowres, text",
        "header_images": ["moxin header.png"],
        "default_weight": 0.8,
        "made_with": ["someMix_v2", "7c3e9a1b44"],
        "source": "imported from the infotext of moxin header.png; " + GPU_NOISE_NOTE,
        "settings": {"sampler": "DPM++ 2M Karras", "schedule_type": "Karras", "steps": 28, "cfg": 7.0,
                     "seed": 1829374650, "size": "512x768", "clip_skip": 2,
                     "lora_hashes": "MoXin_v1: 1a2b3c4d5e6f, Paper Texture: 0a1b2c3d4e5f"},
    }
    # plain data: the CLI prints it with yaml.safe_dump
    assert yaml.safe_load(yaml.safe_dump(entry)) == entry


def test_a_given_name_renames_the_lora_s_own_tag_and_keeps_its_file(tmp_path):
    entry = lora_entry_from_png(png(tmp_path / "h.png", MOXIN), name="ink_wash_painting")
    assert entry["name"] == "ink_wash_painting" and entry["file"] == "MoXin_v1.safetensors"
    assert "<lora:ink_wash_painting:0.7>" in entry["prompt"] and "<lora:paper_texture:1>" in entry["prompt"]
    # a name that matches the second tag's slug picks that tag as the entry's own
    entry = lora_entry_from_png(png(tmp_path / "h2.png", MOXIN), name="paper_texture")
    assert entry["file"] == "Paper Texture.safetensors" and "<lora:moxin_v1:0.7>" in entry["prompt"]


def test_a_header_without_tags_is_named_after_the_file(tmp_path):
    entry = lora_entry_from_png(png(tmp_path / "3D Render.png", NO_TAG))
    assert (entry["name"], entry["file"]) == ("3d_render", "3d_render.safetensors")
    assert entry["prompt"] == "3d render style, a teddy bear"
    assert entry["made_with"] == ["otherMix"] and entry["settings"]["size"] == "768x512"


def test_png_without_infotext_says_so(tmp_path):
    path = png(tmp_path / "stripped.png", None)
    with pytest.raises(ImportInfotextError) as info:
        lora_entry_from_png(path)
    assert str(path) in str(info.value)
    assert "this image carries no A1111 parameters (saved from a site that strips metadata?)" in str(info.value)


def test_bad_name_and_non_image_are_refused(tmp_path):
    with pytest.raises(ImportInfotextError, match="not a slug"):
        lora_entry_from_png(png(tmp_path / "h.png", MOXIN), name="Ink Wash")
    bogus = tmp_path / "notes.png"
    bogus.write_text("hello")
    with pytest.raises(ImportInfotextError, match="cannot read it as an image"):
        lora_entry_from_png(bogus)


def copy_v1(tmp_path: Path) -> Path:
    d = tmp_path / "bench"
    shutil.copytree(V1, d)
    return d


def test_replace_a_slot_round_trips_through_the_loader_and_keeps_comments(tmp_path):
    d = copy_v1(tmp_path)
    table = d / "loras_sd15.yaml"
    before = table.read_text(encoding="utf-8")
    entry = lora_entry_from_png(png(tmp_path / "paper.png", PAPER), name="paper_cut_art")
    assert append_entries(table, [entry], replace=True) == []
    after = table.read_text(encoding="utf-8")
    loaded = {e.name: e for e in load_benchmark(d).loras["sd15"]}
    got = loaded["paper_cut_art"]
    assert (got.prompt, got.file, got.header_images, got.negative_prompt) == (
        "paper texture, a fox <lora:paper_cut_art:0.9>", "Paper Texture.safetensors", ("paper.png",), "")
    assert dict(got.settings) == {"sampler": "Euler a", "steps": 20, "cfg": 6.5, "seed": 42, "size": "512x512"}
    assert list(loaded)[3] == "paper_cut_art" and len(loaded) == 16  # same slot, same order
    # everything outside the replaced slot is byte-identical (comments included)
    old_lines, new_lines = before.splitlines(), after.splitlines()
    start = next(i for i, line in enumerate(old_lines) if line == "  - name: paper_cut_art")
    end = next(i for i in range(start + 1, len(old_lines)) if old_lines[i].startswith("  - name:"))
    new_end = next(i for i in range(start + 1, len(new_lines)) if new_lines[i].startswith("  - name:"))
    assert new_lines[:start] == old_lines[:start] and new_lines[new_end:] == old_lines[end:]
    assert "# THE SLOTS BELOW ARE GENERIC THEMES" in after


def test_append_multi_lora_header_warns_until_its_partner_is_added(tmp_path):
    d = copy_v1(tmp_path)
    table = d / "loras_sd15.yaml"
    warnings = append_entries(table, [lora_entry_from_png(png(tmp_path / "moxin.png", MOXIN))])
    assert warnings == ["moxin_v1: <lora:paper_texture:...> names no entry yet; import or add 'paper_texture', "
                        "or remove the tag"]
    with pytest.raises(BenchmarkError, match=r"loras\[16\]\.prompt.*paper_texture"):
        load_benchmark(d)
    assert append_entries(table, [lora_entry_from_png(png(tmp_path / "paper.png", PAPER))]) == []
    # now the tags resolve; only the protocol's 16-LoRA count is off, and the error says so
    with pytest.raises(BenchmarkError, match="the protocol says 16 but loras_sd15.yaml has 18"):
        load_benchmark(d)
    names = [e["name"] for e in yaml.safe_load(table.read_text(encoding="utf-8"))["loras"]]
    assert names[-2:] == ["moxin_v1", "paper_texture"]


def test_duplicate_and_invalid_entries_are_refused_before_writing(tmp_path):
    d = copy_v1(tmp_path)
    table = d / "loras_sd15.yaml"
    before = table.read_text(encoding="utf-8")
    entry = lora_entry_from_png(png(tmp_path / "paper.png", PAPER), name="paper_cut_art")
    with pytest.raises(ImportInfotextError, match=r"loras\[3\] is already named 'paper_cut_art'.*replace"):
        append_entries(table, [entry])
    with pytest.raises(ImportInfotextError, match=r"loras_sd15.yaml \(new entry\): loras\[16\]\.default_weight"):
        append_entries(table, [dict(entry, name="new_one", default_weight="strong")])
    assert table.read_text(encoding="utf-8") == before
    with pytest.raises(ImportInfotextError, match="not a LoRA table"):
        append_entries(d / "protocol.yaml", [entry])


# A1111 1.9 made the schedule its own field ("Schedule type: Karras"); sampler names lost "Karras". Both forms, and
# "Automatic" (the sampler's own default in 1.9+: Karras for DPM++ 2M), read as the sampler the image was drawn with.
SAMPLER_FORMS = [
    ("Sampler: DPM++ 2M Karras, Version: v1.6.0", {"sampler": "DPM++ 2M Karras"}),
    ("Sampler: DPM++ 2M, Version: v1.6.0", {"sampler": "DPM++ 2M"}),  # before 1.9: the model's own sigmas
    ("Sampler: DPM++ 2M, Schedule type: Karras, Version: v1.10.1", {"sampler": "DPM++ 2M Karras",
                                                                   "schedule_type": "Karras"}),
    ("Sampler: DPM++ 2M, Schedule type: Automatic, Version: v1.10.1", {"sampler": "DPM++ 2M Karras",
                                                                      "schedule_type": "Karras"}),
    ("Sampler: DPM++ 2M, Schedule type: Uniform, Version: v1.10.1", {"sampler": "DPM++ 2M",
                                                                    "schedule_type": "Uniform"}),
    ("Sampler: Euler a, Schedule type: Automatic, Version: v1.10.1", {"sampler": "Euler a",
                                                                     "schedule_type": "Uniform"}),
    ("Sampler: DPM++ 2M SDE, Schedule type: Automatic", {"sampler": "DPM++ 2M SDE Exponential",
                                                        "schedule_type": "Exponential"}),
    ("Sampler: DDIM, Schedule type: Automatic", {"sampler": "DDIM", "schedule_type": "Automatic"}),
]


@pytest.mark.parametrize("fields, expected", SAMPLER_FORMS)
def test_old_combined_and_new_split_sampler_names_read_alike(tmp_path, fields, expected):
    text = f"a fox <lora:fox:0.8>\nSteps: 20, {fields}, CFG scale: 7, Seed: 1, Size: 512x512"
    settings = lora_entry_from_png(png(tmp_path / "h.png", text))["settings"]
    assert {k: v for k, v in settings.items() if k in ("sampler", "schedule_type")} == expected


def test_an_infotext_without_rng_says_it_was_drawn_with_gpu_noise(tmp_path):
    base = "a fox <lora:fox:0.8>\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"
    assert lora_entry_from_png(png(tmp_path / "a.png", base))["source"].endswith(GPU_NOISE_NOTE)
    cpu = lora_entry_from_png(png(tmp_path / "b.png", base + ", RNG: CPU"))
    assert cpu["source"] == "imported from the infotext of b.png"
    nv = lora_entry_from_png(png(tmp_path / "c.png", base + ", RNG: NV"))
    assert "NV noise" in nv["source"] and "cannot be reproduced bit-for-bit" in nv["source"]
