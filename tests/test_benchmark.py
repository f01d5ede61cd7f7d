"""The shipped v1 benchmark and its loader: counts, names, seeds, tags, digest, and errors on malformed files.

Expectations are computed from the raw YAML with PyYAML and plain loops, independently of ghostreview.protocol.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from ghostreview.protocol import (
    EMPHASIS,
    BenchmarkError,
    LoraEntry,
    benchmark_digest,
    benchmark_items,
    images_per_item,
    load_benchmark,
    lora_tags,
)

V1 = Path(__file__).resolve().parents[1] / "data" / "benchmark" / "v1"
STYLES = ["Anime", "Manga", "Photographic", "Isometric", "Low_Poly", "Line_Art", "3D_Model", "Pixel_Art", "Watercolor"]
# Tags in header prompts that deliberately name a LoRA outside the table (none in v1: every LoRA a header uses is an
# entry of its own table, so the multi-LoRA headers are drawn with all their LoRAs).
INTENTIONAL_EXTRAS: dict[str, set[str]] = dict.fromkeys(("sd15", "sdxl", "flux", "pony", "illustrious"), set())
PLAIN_TAG = re.compile(r"<lora:([^:>]+):([^:>]+)>")


def raw(name: str) -> dict:
    return yaml.safe_load((V1 / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def bench():
    return load_benchmark(V1)


# --------------------------------------------------------------------------------------------------------------------
# The shipped protocol


def test_v1_gives_1568_images_per_checkpoint_in_both_families(bench):
    assert 30 * 32 + 9 * 32 + 16 * 20 == 1568
    assert bench.name == "ghostreview-v1"
    assert bench.images_per_checkpoint == 1568
    for family in ("sd15", "sdxl"):
        rows = benchmark_items(bench, family)
        assert len(rows) == 1568
        per_task = {t: sum(r.task == t for r in rows) for t in ("general", "style", "lora")}
        assert per_task == {"general": 960, "style": 288, "lora": 320}
        assert len({(r.task, r.item, r.index) for r in rows}) == 1568


def test_v1_counts_are_batch_times_iter(bench):
    assert {t: (c.batch_size, c.n_iter) for t, c in bench.counts.items()} == {
        "general": (4, 8), "style": (4, 8), "lora": (4, 5)}
    assert images_per_item(bench) == {"general": 32, "style": 32, "lora": 20}


def test_v1_has_30_general_prompts_25_common_5_stylized(bench):
    prompts = raw("prompts.yaml")["prompts"]
    assert len(bench.general) == len(prompts) == 30
    assert [p.group for p in bench.general].count("common") == 25
    assert [p.group for p in bench.general].count("stylized") == 5
    assert all(re.fullmatch(r"[a-z0-9_]+", p.id) for p in bench.general)
    assert not any("<lora:" in p.prompt for p in bench.general)
    common_categories = {p.category for p in bench.general if p.group == "common"}
    assert {"portrait", "character", "landscape", "animal", "architecture", "interior", "food", "vehicle",
            "fantasy", "sci_fi"} <= common_categories
    assert "(" in bench.negative_prompt and ":1." in bench.negative_prompt  # A1111 emphasis, as Civitai users write


def test_v1_has_the_nine_styles_in_order(bench):
    assert [s.name for s in bench.styles] == STYLES
    assert [s.reference_dir for s in bench.styles] == STYLES
    assert all(s.template.count("{subject}") == 1 for s in bench.styles)
    assert 32 % len(bench.subjects) == 0


def test_v1_has_16_loras_per_table_with_distinct_names(bench):
    tables = ("sd15", "sdxl", "flux", "pony", "illustrious")
    assert {t: len(entries) for t, entries in bench.loras.items()} == dict.fromkeys(tables, 16)
    names = [e.name for t in tables for e in bench.loras[t]]
    assert len(set(names)) == len(names) == 16 * len(tables)
    for table in bench.loras.values():
        assert all(e.file.endswith(".safetensors") and e.header_images and e.default_weight == 0.8 for e in table)
    # Flux headers: prose, no negative prompt (drawn at CFG 1), no A1111 emphasis
    assert all(e.negative_prompt == "" and not EMPHASIS.search(e.prompt) for e in bench.loras["flux"])
    # the base tables' headers in their base's conventions (bases.yaml's prefix first)
    for table in ("pony", "illustrious"):
        prefix = bench.bases[table].prompt_prefix
        assert all(e.prompt.startswith(prefix) for e in bench.loras[table])


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux", "pony", "illustrious"])
def test_every_header_tag_names_a_lora_of_the_same_table(family):
    entries = raw(f"loras_{family}.yaml")["loras"]
    names = {e["name"] for e in entries}
    tags = [(e["name"], t) for e in entries for t, _ in PLAIN_TAG.findall(e["prompt"])]
    assert tags, "the table should have tagged prompts"
    stray = [(owner, t) for owner, t in tags if t not in names and t not in INTENTIONAL_EXTRAS[family]]
    assert stray == []
    # both of the article's rules are exercised: a header with several LoRAs and a header with none
    counts = [len(PLAIN_TAG.findall(e["prompt"])) for e in entries]
    assert max(counts) >= 2 and min(counts) == 0
    # every tag carries an explicit weight
    assert all(e["prompt"].count("<lora:") == len(PLAIN_TAG.findall(e["prompt"])) for e in entries)


# --------------------------------------------------------------------------------------------------------------------
# Expansion against a plain re-implementation


def expected_rows(family: str, n: dict[str, int]) -> list[tuple]:
    """(task, item, index, seed, prompt, negative) computed from the raw YAML, the documented way."""
    proto, prompts, styles = raw("protocol.yaml"), raw("prompts.yaml"), raw("styles.yaml")
    table = raw(f"loras_{family}.yaml")["loras"]
    seeds, neg = proto["base_seeds"], prompts["negative_prompt"]
    rows = [("general", p["id"], k, seeds["general"] + k, p["prompt"], neg)
            for p in prompts["prompts"] for k in range(n["general"])]
    subjects = styles["subjects"]
    for s in styles["styles"]:
        for k in range(n["style"]):
            prompt = s["template"].replace("{subject}", subjects[k % len(subjects)])
            rows.append(("style", s["name"], k, seeds["style"] + k, prompt, s["negative_prompt"] + ", " + neg))
    for e in table:
        prompt = e["prompt"] if "<lora:" in e["prompt"] else f"{e['prompt']} <lora:{e['name']}:0.8>"
        rows += [("lora", e["name"], k, seeds["lora"] + k, prompt, e["negative_prompt"]) for k in range(n["lora"])]
    return rows


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("n", [{"general": 32, "style": 32, "lora": 20}, {"general": 2, "style": 3, "lora": 1}])
def test_items_match_a_plain_expansion(bench, family, n):
    got = [(r.task, r.item, r.index, r.seed, r.prompt, r.negative_prompt) for r in benchmark_items(bench, family, n)]
    assert got == expected_rows(family, n)


def test_smaller_counts_keep_the_first_seeds(bench):
    def keyed(n):
        return {(r.task, r.item, r.index): (r.seed, r.prompt, r.subject) for r in benchmark_items(bench, "sd15", n)}

    one = keyed({"general": 1, "style": 1, "lora": 1})
    two = keyed({"general": 2, "style": 2, "lora": 2})
    full = keyed(None)
    assert one.items() <= two.items() <= full.items()
    assert len(one) == 30 + 9 + 16 and len(two) == 2 * len(one)
    # two style images already show two different subjects; 32 show each of the 8 subjects 4 times
    assert {v[2] for k, v in two.items() if k[:2] == ("style", "Anime")} == set(bench.subjects[:2])
    full_subjects = [v[2] for k, v in full.items() if k[:2] == ("style", "Watercolor")]
    assert sorted(full_subjects.count(s) for s in bench.subjects) == [4] * 8


def test_zero_images_leaves_a_task_out_and_missing_tasks_keep_the_protocol(bench):
    rows = benchmark_items(bench, "sdxl", {"lora": 0, "general": 1})
    assert {r.task for r in rows} == {"general", "style"}
    assert len(rows) == 30 + 9 * 32


@pytest.mark.parametrize("seeds, message", [
    ({"general": 33}, "allows 0 to 32"),
    ({"lora": 21}, "allows 0 to 20"),
    ({"style": -1}, "allows 0 to 32"),
    ({"loras": 1}, 'Did you mean "lora"'),
    ({"general": 1.5}, "1.5"),
])
def test_bad_seed_counts_are_refused(bench, seeds, message):
    with pytest.raises(BenchmarkError, match=re.escape(message)):
        benchmark_items(bench, "sd15", seeds)


def test_unknown_family_is_refused(bench):
    with pytest.raises(BenchmarkError, match='Did you mean "sd15"'):
        benchmark_items(bench, "sd1.5")


def test_lora_tags_several_none_and_bare(bench):
    table = {e.name: e for e in bench.loras["sd15"]}
    assert lora_tags(table["ink_wash_painting"]) == [("ink_wash_painting", 0.85), ("watercolor_wash", 0.3)]
    assert lora_tags(table["render_3d_style"]) == [("render_3d_style", 0.8)]
    assert lora_tags(table["film_photo_35mm"]) == [("film_photo_35mm", 0.6)]
    bare = LoraEntry("x", "X", "x.safetensors", "a cat <lora:x> <lora:y:0.5>", "", ("x.png",), 0.7, ())
    assert lora_tags(bare) == [("x", 0.7), ("y", 0.5)]
    rows = [r for r in benchmark_items(bench, "sd15", {"lora": 1}) if r.task == "lora"]
    assert dict((r.item, r.loras) for r in rows)["render_3d_style"] == (("render_3d_style", 0.8),)
    assert dict((r.item, r.prompt) for r in rows)["render_3d_style"].endswith(" <lora:render_3d_style:0.8>")


# --------------------------------------------------------------------------------------------------------------------
# Digest


def test_digest_ignores_comments_and_tracks_content(bench, tmp_path):
    d = copy_v1(tmp_path)
    assert benchmark_digest(load_benchmark(d)) == benchmark_digest(bench)
    assert re.fullmatch(r"[0-9a-f]{64}", benchmark_digest(bench))
    edit(d / "prompts.yaml", "negative_prompt:", "# a new comment\nnegative_prompt:")
    assert benchmark_digest(load_benchmark(d)) == benchmark_digest(bench)
    edit(d / "prompts.yaml", "fluffy orange tabby cat", "fluffy grey tabby cat")
    assert benchmark_digest(load_benchmark(d)) != benchmark_digest(bench)
    d2 = copy_v1(tmp_path / "b")
    edit(d2 / "protocol.yaml", "lora: 3000000", "lora: 3000001")
    assert benchmark_digest(load_benchmark(d2)) != benchmark_digest(bench)


# --------------------------------------------------------------------------------------------------------------------
# Malformed files: every error names the file, the key path and the fix


def copy_v1(tmp_path: Path) -> Path:
    d = tmp_path / "bench"
    shutil.copytree(V1, d)
    return d


def edit(path: Path, old: str, new: str, nth: int = 1) -> int:
    """Replace the nth occurrence of ``old``; returns its 1-based line number."""
    text = path.read_text(encoding="utf-8")
    at = -1
    for _ in range(nth):
        at = text.index(old, at + 1)
    path.write_text(text[:at] + new + text[at + len(old):], encoding="utf-8")
    return text[:at].count("\n") + 1


MALFORMED = [
    # (file, old, new, nth, fragments that must all appear in the message)
    ("loras_sd15.yaml", "    prompt:", "    promt:", 4,
     ["loras_sd15.yaml", "loras[3].promt", "unknown key", 'Did you mean "prompt"']),
    ("loras_sd15.yaml", "default_weight: 0.8", "default_weight: heavy", 4,
     ["loras_sd15.yaml", "loras[3].default_weight", "expected a number"]),
    ("loras_sd15.yaml", "<lora:gacha_splash_art:0.7>", "<lora:gacha_splash:0.7>", 1,
     ["loras_sd15.yaml", "loras[2].prompt", "names no LoRA of this table", "Add an entry"]),
    ("loras_sd15.yaml", "<lora:paper_cut_art:1.0>", "<lora:paper_cut_art>", 1,
     ["loras_sd15.yaml", "loras[3].prompt", "has no weight", "<lora:paper_cut_art:1.0>"]),
    ("loras_sd15.yaml", "<lora:paper_cut_art:1.0>", "<lora:paper_cut_art:0.5:1.0>", 1,
     ["loras[3].prompt", "only <lora:name> and <lora:name:weight>"]),
    ("loras_sd15.yaml", "<lora:paper_cut_art:1.0>", "<hypernet:paper:1.0>", 1,
     ["loras[3].prompt", "Only LoRA tags"]),
    ("loras_sd15.yaml", "made_with: []", "made_with: [1234567890]", 1,
     ["loras[1].made_with[0]", "quoted string"]),
    ("loras_sd15.yaml", "sampler: Euler a", "sampeler: Euler a", 1,
     ["loras[1].settings.sampeler", 'Did you mean "sampler"']),
    ("loras_sd15.yaml", "size: 512x512", "size: 512*512", 1,
     ["loras[1].settings.size", "WIDTHxHEIGHT"]),
    ("loras_sd15.yaml", "file: render_3d_style.safetensors", "file: render_3d_style.ckpt", 1,
     ["loras[1].file", ".safetensors"]),
    ("loras_sd15.yaml", "header_images: [render_3d_style_01.png]", "header_images: []", 1,
     ["loras[1].header_images", "at least one"]),
    ("loras_sd15.yaml", "name: render_3d_style", "name: Render3D", 1,
     ["loras[1].name", "not a valid name", "'render3d'"]),
    ("loras_sd15.yaml", "  - name: render_3d_style", "  - name: ink_wash_painting", 1,
     ["loras_sd15.yaml", "loras[1].name", "duplicate LoRA name"]),
    ("loras_sdxl.yaml", "name: render_3d_xl", "name: render_3d_style", 1,
     ["loras_sdxl.yaml", "render_3d_style", "also in loras_sd15.yaml"]),
    ("prompts.yaml", "id: portrait_old_fisherman", "id: portrait_woman_cafe", 1,
     ["prompts.yaml", "prompts[1].id", "duplicate prompt id"]),
    ("prompts.yaml", "id: wolf_in_snow", "id: Wolf-In-Snow", 1,
     ["prompts.yaml", "prompts[11].id", "'wolf_in_snow'"]),
    ("prompts.yaml", "group: stylized", "group: stylised", 1,
     ["prompts[25].group", 'Did you mean "stylized"']),
    ("prompts.yaml", "grey wolf standing", "<lora:wolf:1> grey wolf standing", 1,
     ["prompts[11].prompt", "extra-network tag"]),
    ("styles.yaml", "anime artwork of {subject},", "anime artwork,", 1,
     ["styles.yaml", "styles[0].template", "{subject}"]),
    ("styles.yaml", "  - \"a sailboat on a calm lake at sunset\"\n", "", 1,
     ["styles.yaml", "subjects", "spread evenly", "7 subjects"]),
    ("protocol.yaml", "items: 30", "items: 31", 1,
     ["protocol.yaml", "counts.general.items", "prompts.yaml has 30"]),
    ("protocol.yaml", "images_per_checkpoint: 1568", "images_per_checkpoint: 1500", 1,
     ["protocol.yaml", "images_per_checkpoint", "1568"]),
    ("protocol.yaml", 'version: "1.0.0"', "version: 1.0", 1,
     ["protocol.yaml", "version", "quoted string"]),
    ("protocol.yaml", "n_iter: 5", "n_iter: 0", 1,
     ["protocol.yaml", "counts.lora.n_iter", "at least 1"]),
    ("protocol.yaml", "style: 2000000", "style: 5000000000", 1,
     ["protocol.yaml", "base_seeds.style", "between 0 and 4294967295"]),
    ("protocol.yaml", "base_seeds:", "base_seed:", 1,
     ["protocol.yaml", "base_seed", 'Did you mean "base_seeds"']),
    ("protocol.yaml", "  lora: 3000000\n", "", 1,
     ["protocol.yaml", "base_seeds", "missing key 'lora'"]),
    ("protocol.yaml", "name: ghostreview-v1", "name: ghostreview-v1\nname: again", 1,
     ["protocol.yaml", "invalid YAML", "duplicate key"]),
    ("prompts.yaml", "category: food", "category: food: fries", 2,
     ["prompts.yaml", "invalid YAML", "mapping values are not allowed", "line 116"]),
]


@pytest.mark.parametrize("file, old, new, nth, fragments", MALFORMED, ids=[f"{m[0]}:{m[2][:24]}" for m in MALFORMED])
def test_malformed_files_raise_errors_naming_file_key_and_fix(tmp_path, file, old, new, nth, fragments):
    d = copy_v1(tmp_path)
    edit(d / file, old, new, nth)
    with pytest.raises(BenchmarkError) as info:
        load_benchmark(d)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_errors_point_at_the_line(tmp_path):
    d = copy_v1(tmp_path)
    line = edit(d / "loras_sd15.yaml", "default_weight: 0.8", "default_weight: heavy", 4)
    with pytest.raises(BenchmarkError, match=rf"^loras_sd15\.yaml:{line}: loras\[3\]\.default_weight"):
        load_benchmark(d)


def test_a_missing_file_is_named(tmp_path):
    d = copy_v1(tmp_path)
    (d / "styles.yaml").unlink()
    with pytest.raises(BenchmarkError, match="styles.yaml: file not found"):
        load_benchmark(d)


# --------------------------------------------------------------------------------------------------------------------
# Helpers for users filling in files


def test_cut_benchmark_keeps_schema_seeds_and_comments(tmp_path):
    from ghostreview.protocol import cut_benchmark, load_benchmark

    full = load_benchmark(V1)
    cut = cut_benchmark(V1, tmp_path / "cut", general=3, styles=2, loras=2)
    assert cut.name == f"{full.name}-cut"
    assert [p.id for p in cut.general] == [p.id for p in full.general[:3]]
    assert [s.name for s in cut.styles] == [s.name for s in full.styles[:2]]
    for family in ("sd15", "sdxl"):
        names = [e.name for e in cut.loras[family]]
        assert len(names) == 2 and all("<lora:" not in e.prompt for e in cut.loras[family])
        assert names == [e.name for e in full.loras[family] if "<lora:" not in e.prompt][:2]
    assert dict(cut.base_seeds) == dict(full.base_seeds)  # the same seeds: cut results are the full run's subset
    assert ({t: c.images_per_item for t, c in cut.counts.items()}
            == {t: c.images_per_item for t, c in full.counts.items()})
    assert cut.images_per_checkpoint == 3 * 32 + 2 * 32 + 2 * 20
    for name in ("prompts.yaml", "loras_sd15.yaml"):  # the files' documentation comes along
        head = (V1 / name).read_text().splitlines()[0]
        assert head.startswith("#") and (tmp_path / "cut" / name).read_text().splitlines()[0] == head


def test_cut_benchmark_refuses_an_existing_directory_and_empty_tasks(tmp_path):
    from ghostreview.protocol import BenchmarkError, cut_benchmark

    (tmp_path / "there").mkdir()
    with pytest.raises(BenchmarkError, match="already exists"):
        cut_benchmark(V1, tmp_path / "there", 1, 1, 1)
    with pytest.raises(BenchmarkError, match="styles = 0"):
        cut_benchmark(V1, tmp_path / "new", 1, 0, 1)
