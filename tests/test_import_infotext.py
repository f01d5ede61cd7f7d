"""Importing LoRA-table entries from header PNGs written here with hand-written A1111 infotext."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo
from typer.testing import CliRunner

from ghostreview.cli import app
from ghostreview.generation.prompts import extract_lora_tags
from ghostreview.import_infotext import (
    ImportInfotextError,
    append_entries,
    decode_user_comment,
    lora_entry_from_png,
    placement,
)
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


# --------------------------------------------------------------------------------------------------------------------
# JPEG and WebP: A1111 writes the parameters as the EXIF UserComment (piexif's UserComment.dump(text,
# encoding="unicode"): the 8-byte code "UNICODE\0", then UTF-16 big-endian without a byte order mark)

def with_user_comment(path: Path, comment: bytes | None) -> Path:
    """An image whose EXIF UserComment is ``comment`` (raw bytes, character code included), saved by Pillow."""
    exif = Image.Exif()
    if comment is not None:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = comment
    Image.new("RGB", (8, 8), (200, 100, 50)).save(path, exif=exif)
    return path


def a1111_comment(text: str) -> bytes:
    return b"UNICODE\0" + text.encode("utf-16-be")


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_jpeg_and_webp_parameters_are_read_from_the_exif_user_comment(tmp_path, suffix):
    expected = lora_entry_from_png(png(tmp_path / "moxin header.png", MOXIN))
    path = with_user_comment(tmp_path / f"moxin header{suffix}", a1111_comment(MOXIN))
    entry = lora_entry_from_png(path)
    assert entry == dict(expected, header_images=[path.name],
                         source=expected["source"].replace("moxin header.png", path.name))


def test_user_comment_character_codes_and_byte_orders():
    text = "水墨, a crane <lora:MoXin_v1:0.7>\nSteps: 20"
    assert decode_user_comment(a1111_comment(text)) == text
    assert decode_user_comment(b"UNICODE\0" + text.encode("utf-16-le")) == text  # other tools: little-endian
    assert decode_user_comment(b"UNICODE\0" + text.encode("utf-16")) == text  # with a byte order mark
    assert decode_user_comment(b"ASCII\0\0\0a fox\0") == "a fox"
    assert decode_user_comment(b"\0" * 8 + "a fox, 水墨".encode()) == "a fox, 水墨"
    assert decode_user_comment(b"UNICODE\0" + b"\0\0") is None and decode_user_comment(None) is None


def test_a_jpeg_without_parameters_says_where_it_looked(tmp_path):
    for path in (with_user_comment(tmp_path / "stripped.jpg", None),
                 with_user_comment(tmp_path / "empty.webp", a1111_comment(""))):
        with pytest.raises(ImportInfotextError) as info:
            lora_entry_from_png(path)
        message = str(info.value)
        assert message.startswith(f"{path}: this image carries no A1111 parameters (saved from a site that strips "
                                  f"metadata?)")
        assert "EXIF UserComment" in message


# --------------------------------------------------------------------------------------------------------------------
# The table is edited as text: only the new or replaced entry's lines change, in the table's own indentation


def indentless(text: str, newline: str = "\n") -> str:
    """The v1 table written in another common style: the list's dashes at column 0, keys at column 2."""
    out = []
    for line in text.splitlines():
        if line.startswith(("  - ", "    ")):
            line = line[2:]
        out.append(line)
    return newline.join(out) + newline


def split_around(before: str, after: str, start: int, end: int) -> str:
    """What ``after`` holds in place of ``before[start:end]``, asserting that every byte around it is unchanged."""
    head, tail = before[:start], before[end:]
    assert after.startswith(head) and after.endswith(tail) and len(after) >= len(head) + len(tail)
    return after[len(head):len(after) - len(tail)]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_replace_changes_only_the_entry_s_lines_in_the_table_s_own_layout(tmp_path, newline):
    d = copy_v1(tmp_path)
    table = d / "loras_sd15.yaml"
    before = indentless((V1 / "loras_sd15.yaml").read_text(encoding="utf-8"), newline)
    table.write_bytes(before.encode("utf-8"))
    start = before.index("- name: paper_cut_art")
    end = before.index("- name:", start + 1)
    entry = lora_entry_from_png(png(tmp_path / "paper.png", PAPER), name="paper_cut_art")
    assert append_entries(table, [entry], replace=True) == []
    after = table.read_bytes().decode("utf-8")
    lines = split_around(before, after, start, end).splitlines(keepends=True)
    assert lines[0] == "- name: paper_cut_art" + newline and all(line.endswith(newline) for line in lines)
    assert all(line.startswith("  ") and line[2] != " " for line in lines[1:])  # keys at the table's column 2
    assert yaml.safe_load("".join(lines)) == [entry]
    assert after.count("\r\n") == (after.count("\n") if newline == "\r\n" else 0)
    loaded = {e.name: e for e in load_benchmark(d).loras["sd15"]}
    assert loaded["paper_cut_art"].prompt == "paper texture, a fox <lora:paper_cut_art:0.9>"
    assert list(loaded)[3] == "paper_cut_art" and len(loaded) == 16


def test_append_adds_lines_after_the_last_entry_and_keeps_every_other_byte(tmp_path):
    table = tmp_path / "loras_sd15.yaml"
    before = indentless((V1 / "loras_sd15.yaml").read_text(encoding="utf-8")) + "\n# the end of the table\n"
    table.write_text(before, encoding="utf-8")
    entry = lora_entry_from_png(png(tmp_path / "paper.png", PAPER))
    assert append_entries(table, [entry]) == []
    after = table.read_text(encoding="utf-8")
    end = before.index("\n# the end of the table")  # after the last entry's line, before the blank line
    added = split_around(before, after, end, end)
    assert added.startswith("- name: paper_texture\n") and yaml.safe_load(added) == [entry]
    rows = yaml.safe_load(after)["loras"]
    assert len(rows) == 17 and rows[-1] == entry


def test_an_empty_table_gets_its_first_entry(tmp_path):
    table = tmp_path / "loras_sdxl.yaml"
    table.write_text("# my SDXL LoRAs\nloras: []\n", encoding="utf-8")
    entry = lora_entry_from_png(png(tmp_path / "paper.png", PAPER))
    assert append_entries(table, [entry]) == []
    after = table.read_text(encoding="utf-8")
    assert after.startswith("# my SDXL LoRAs\n") and yaml.safe_load(after) == {"loras": [entry]}


def test_a_duplicate_name_points_at_replace_and_two_images_of_one_name_are_refused(tmp_path):
    d = copy_v1(tmp_path)
    table = d / "loras_sd15.yaml"
    before = table.read_text(encoding="utf-8")
    entry = lora_entry_from_png(png(tmp_path / "paper.png", PAPER), name="paper_cut_art")
    with pytest.raises(ImportInfotextError) as info:
        append_entries(table, [entry])
    assert str(info.value).endswith("Choose another name (--name), or replace that slot (--replace).")
    assert "replace=True" not in str(info.value)
    with pytest.raises(ImportInfotextError, match="give entries named 'paper_texture'"):
        append_entries(table, [lora_entry_from_png(png(tmp_path / f"p{i}.png", PAPER)) for i in range(2)])
    assert table.read_text(encoding="utf-8") == before


# --------------------------------------------------------------------------------------------------------------------
# The command


def test_cli_name_with_several_images_is_an_error(tmp_path):
    images = [str(png(tmp_path / "a.png", PAPER)), str(png(tmp_path / "b.png", NO_TAG))]
    result = CliRunner().invoke(app, ["import-infotext", *images, "--name", "paper_cut_art"])
    assert result.exit_code == 2
    assert result.output.startswith("error: --name paper_cut_art names one LoRA but 2 images were given")


def test_cli_warns_of_a_multi_lora_header_without_a_table_too(tmp_path):
    result = CliRunner().invoke(app, ["import-infotext", str(png(tmp_path / "moxin.png", MOXIN))])
    assert result.exit_code == 0, result.output
    assert ("warning: moxin_v1: <lora:paper_texture:...> names no entry yet; import or add 'paper_texture', or "
            "remove the tag") in result.output
    printed = yaml.safe_load(result.stdout)["loras"]
    assert [e["name"] for e in printed] == ["moxin_v1"]
    # imported together, the partner resolves the tag: no warning
    both = CliRunner().invoke(app, ["import-infotext", str(tmp_path / "moxin.png"),
                                    str(png(tmp_path / "paper.png", PAPER))])
    assert both.exit_code == 0 and "warning" not in both.output


def test_cli_reads_a_jpeg_header_into_a_table(tmp_path):
    d = copy_v1(tmp_path)
    jpeg = with_user_comment(tmp_path / "paper.jpg", a1111_comment(PAPER))
    result = CliRunner().invoke(app, ["import-infotext", str(jpeg), "--table", str(d / "loras_sd15.yaml"),
                                      "--name", "paper_cut_art", "--replace"])
    assert result.exit_code == 0, result.output
    got = {e.name: e for e in load_benchmark(d).loras["sd15"]}["paper_cut_art"]
    assert got.header_images == ("paper.jpg",) and got.prompt == "paper texture, a fox <lora:paper_cut_art:0.9>"


# --------------------------------------------------------------------------------------------------------------------
# The entry's own tag and its file agree: the tag renamed to the entry's name draws the file of that same header tag


@pytest.mark.parametrize("infotext, name, tag, file", [
    (MOXIN, None, "moxin_v1", "MoXin_v1.safetensors"),
    (MOXIN, "ink_wash_painting", "ink_wash_painting", "MoXin_v1.safetensors"),  # the first tag is this LoRA
    (MOXIN, "paper_texture", "paper_texture", "Paper Texture.safetensors"),  # a name that is a tag's slug picks it
    (PAPER, None, "paper_texture", "Paper Texture.safetensors"),
])
def test_the_entry_s_tag_draws_the_file_of_the_same_header_tag(tmp_path, infotext, name, tag, file):
    entry = lora_entry_from_png(png(tmp_path / "h.png", infotext), name=name)
    assert entry["name"] == tag and entry["file"] == file
    assert f"<lora:{tag}:" in entry["prompt"]
    # the header's own tag (by its original name) is the one renamed: its weight moved with it
    original = file.removesuffix(".safetensors")
    header_weight = next(w for n, w in extract_lora_tags(infotext.splitlines()[0])[1] if n == original)
    assert dict(extract_lora_tags(entry["prompt"])[1])[tag] == (1.0 if header_weight is None else header_weight)
    assert placement(entry, "sd15") == (
        f"{tag}: its tag <lora:{tag}:...> draws {file} (the LoRA file of the header's tag): put {file} in "
        f"paths.loras.sd15 and h.png in paths.lora_headers.sd15/{tag}/")


def test_a_header_without_a_tag_says_which_file_it_draws(tmp_path):
    entry = lora_entry_from_png(png(tmp_path / "3D Render.png", NO_TAG), name="render_3d_style")
    assert entry["file"] == "render_3d_style.safetensors" and "<lora:" not in entry["prompt"]
    assert placement(entry) == (
        "render_3d_style: the header prompt has no LoRA tag, so the entry draws render_3d_style.safetensors at "
        "default_weight 0.8: put render_3d_style.safetensors in paths.loras.<family> and 3D Render.png in "
        "paths.lora_headers.<family>/render_3d_style/ (your LoRA file under that name, or edit file: in the entry)")


def test_cli_says_where_the_files_go(tmp_path):
    d = copy_v1(tmp_path)
    result = CliRunner().invoke(app, ["import-infotext", str(png(tmp_path / "paper.png", PAPER)), "--table",
                                      str(d / "loras_sd15.yaml"), "--name", "paper_cut_art", "--replace"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"added 1 entry to {d / 'loras_sd15.yaml'}\n"
    assert ("paper_cut_art: its tag <lora:paper_cut_art:...> draws Paper Texture.safetensors (the LoRA file of the "
            "header's tag): put Paper Texture.safetensors in paths.loras.sd15 and paper.png in "
            "paths.lora_headers.sd15/paper_cut_art/") in result.stderr
