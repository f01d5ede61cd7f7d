"""Issue 12, items 6-8: images, scorer weights and params values that used to pass the checks and then crash.

Every case here stops with a project error (a :class:`UserError` naming the file, the key and the fix) before any
model loads; none escapes as a raw library exception (so no case prints a traceback).
"""

from __future__ import annotations

import math
import struct
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image, ImageFile
from PIL.PngImagePlugin import PngInfo
from typer.testing import CliRunner

from ghostreview import config, validate
from ghostreview.cli import app
from ghostreview.config import ConfigError, parse_params
from ghostreview.errors import UserError
from ghostreview.import_infotext import ImportInfotextError, lora_entry_from_png
from ghostreview.scoring import styleloss
from ghostreview.scoring.weights import WeightsError, read_state_dict
from ghostreview.util import runtime
from ghostreview.validate import check_files
from ghostreview.validate import load as load_params

# ----------------------------------------------------------------------------------------------- 6. image limits


def png_of_zeros(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit grayscale PNG of ``width`` x ``height`` black pixels in a few KB: a decompression bomb when big."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(1)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    data = b"".join(z.compress(row * 100) for _ in range(height // 100)) + z.compress(row * (height % 100)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """20000 x 20000 pixels (400 MP) in about 50 KB: Pillow itself refuses it at open (DecompressionBombError)."""
    return png_of_zeros(tmp_path_factory.mktemp("bomb") / "bomb.png", 20000, 20000)


def no_decoding(monkeypatch):
    """Make any pixel decoding fail loudly: the limits must be checked from the header alone."""

    def load(self):
        raise AssertionError("pixels decoded before the size was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_a_decompression_bomb_is_refused_naming_file_size_and_limit(bomb, monkeypatch):
    no_decoding(monkeypatch)
    with pytest.raises(styleloss.ImageLimitError) as err:
        styleloss.check_image_file(bomb)
    message = str(err.value)
    assert str(bomb) in message and "400,000,000 pixels" in message and f"{styleloss.MAX_IMAGE_PIXELS:,}" in message


def test_an_image_over_our_limit_but_under_pillows_is_refused_from_its_header(tmp_path, monkeypatch):
    """9000 x 9000 = 81 MP: below Pillow's own warning (89 MP), so only our limit stops it before decoding."""
    path = png_of_zeros(tmp_path / "big.png", 9000, 9000)
    no_decoding(monkeypatch)
    with pytest.raises(styleloss.ImageLimitError, match=r"9000x9000 \(81,000,000 pixels\)"):
        styleloss.check_image_file(path)


@pytest.mark.parametrize("size", [(6000, 1), (1, 6000), (2049, 512)])
def test_an_extreme_aspect_ratio_is_refused(tmp_path, monkeypatch, size):
    """6000 x 1 is a few hundred bytes, but resizing its shorter side to image_size makes it 512 x 3,072,000."""
    path = tmp_path / "strip.png"
    Image.new("RGB", size, (10, 20, 30)).save(path)
    no_decoding(monkeypatch)
    with pytest.raises(styleloss.ImageLimitError) as err:
        styleloss.check_image_file(path)
    assert f"{size[0]}x{size[1]}" in str(err.value) and f"{styleloss.MAX_ASPECT_RATIO}:1" in str(err.value)


def test_images_at_the_limits_pass(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (4 * 64, 64)).save(path)  # exactly MAX_ASPECT_RATIO
    styleloss.check_image_file(path)
    assert styleloss.MAX_ASPECT_RATIO == 4


def test_reference_sets_and_refstats_decoding_name_the_bomb(bomb, tmp_path):
    from conftest import small_benchmark

    from ghostreview.protocol import load_benchmark
    from ghostreview.scoring.run import ReferenceImagesError, reference_sets

    bench = load_benchmark(small_benchmark(tmp_path / "bench", general=1, styles=1, loras=1))
    style = bench.styles[0]
    (tmp_path / "refs" / style.reference_dir).mkdir(parents=True)
    (tmp_path / "refs" / style.reference_dir / "bomb.png").write_bytes(bomb.read_bytes())
    with pytest.raises(ReferenceImagesError, match=r"bomb\.png: 400,000,000 pixels.*paths\.style_refs"):
        reference_sets(bench, tmp_path / "refs", {})
    with pytest.raises(styleloss.ImageLimitError, match="400,000,000 pixels"):  # refstats decodes through open_images
        next(styleloss.open_images([bomb]))


def test_import_infotext_refuses_a_bomb_without_a_traceback(bomb):
    with pytest.raises(ImportInfotextError, match=r"bomb\.png: 400,000,000 pixels"):
        lora_entry_from_png(bomb)
    result = CliRunner().invoke(app, ["import-infotext", str(bomb)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "error: " in result.output and "400,000,000 pixels" in result.output


# ------------------------------------------------------------------------------------------------- 7. scorer weights


class Payload:
    """Unpickling this creates ``marker``: the proof that code in a weights file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_payload(path: Path, marker: Path) -> Path:
    torch.save({"layers.0.weight": torch.zeros(2, 2), "evil": Payload(marker)}, path)
    return path


def test_a_pickle_payload_in_scorer_weights_is_a_user_error_and_never_runs(tmp_path):
    weights = pickle_payload(tmp_path / "head.pth", tmp_path / "ran")
    with pytest.raises(WeightsError) as err:
        read_state_dict(weights)
    assert isinstance(err.value, UserError)
    assert str(weights) in str(err.value) and ".safetensors" in str(err.value)
    assert not (tmp_path / "ran").exists()


def scorer_files(root: Path, **replace: str) -> dict:
    """Params data whose every named file exists under ``root`` (tiny stand-ins), with ``replace`` {key: path}."""
    from safetensors.torch import save_file

    (root / "m.safetensors").write_bytes(b"x")  # checkpoints: read by check_checkpoint, not here
    for name in ("clip.safetensors", "vgg.safetensors"):
        save_file({"w": torch.zeros(1)}, str(root / name))
    torch.save({"w": torch.zeros(1)}, root / "head.pth")
    scoring = {"clip": {"weights": "clip.safetensors"}, "aesthetic": {"weights": "head.pth", "sha256": None},
               "style": {"vgg_weights": "vgg.safetensors"}}
    model = {"checkpoint": "m.safetensors"}
    for key, value in replace.items():
        section, _, field = key.rpartition(".")
        (model if section == "model" else scoring[section])[field] = value
    return {"models": {"m": model}, "scoring": scoring}


def test_check_weights_names_the_key_of_pickled_or_broken_weights(tmp_path):
    pickle_payload(tmp_path / "evil.pth", tmp_path / "ran")
    (tmp_path / "junk.safetensors").write_bytes(b"<html>log in</html>")
    params = parse_params(scorer_files(tmp_path,
                                       **{"aesthetic.weights": "evil.pth", "clip.weights": "junk.safetensors"}))
    check_files(params, tmp_path)  # they exist and are files
    with pytest.raises(ConfigError) as err:
        validate.check_weights(params, tmp_path, "params.yaml")
    clip, head = str(err.value).splitlines()
    assert clip.startswith("params.yaml: scoring.clip.weights = 'junk.safetensors': ") and "fetch it again" in clip
    assert head.startswith("params.yaml: scoring.aesthetic.weights = 'evil.pth': ") and ".safetensors" in head
    assert "GLOBAL io.open" in head and not (tmp_path / "ran").exists()
    validate.check_weights(parse_params(scorer_files(tmp_path)), tmp_path)  # real stand-ins pass


def test_a_legacy_torch_file_and_garbage_are_told_apart(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "junk.pth").write_bytes(b"placeholder")
    from ghostreview.scoring.weights import check_state_dict_file

    check_state_dict_file(tmp_path / "old.pth")
    assert torch.equal(read_state_dict(tmp_path / "old.pth")["w"], torch.zeros(2))
    with pytest.raises(WeightsError, match="not a weights file"):
        check_state_dict_file(tmp_path / "junk.pth")


@pytest.mark.parametrize("key", ["model.vae", "model.checkpoint", "clip.weights", "aesthetic.weights",
                                 "style.vgg_weights"])
def test_a_directory_where_a_file_belongs_is_refused(tmp_path, key):
    (tmp_path / "adir").mkdir()
    params = parse_params(scorer_files(tmp_path, **{key: "adir"}))
    with pytest.raises(ConfigError, match=r"is a directory, not a file"):
        check_files(params, tmp_path)


def test_a_file_where_the_config_directory_belongs_is_refused(tmp_path):
    params = parse_params(scorer_files(tmp_path, **{"model.config": "m.safetensors"}))
    with pytest.raises(ConfigError, match=r"models\.m\.config = 'm.safetensors'.*not a directory"):
        check_files(params, tmp_path)


# ------------------------------------------------------------------------------------- 8. values the pipeline can't use


def base(**sections) -> dict:
    data = {"models": {"m1": {"checkpoint": "m1.safetensors"}}}
    data.update(sections)
    return data


BAD_VALUES = {
    "cfg NaN": (base(generation={"cfg_scale": math.nan}), ["generation.cfg_scale = nan", "finite"]),
    "cfg inf": (base(generation={"cfg_scale": math.inf}), ["generation.cfg_scale = inf", "finite"]),
    "hires scale 0": (base(generation={"hires": {"scale": 0.0}}),
                      ["generation.hires.scale = 0", "at least 1", "1 <= scale <= 4"]),
    "hires scale negative": (base(generation={"hires": {"scale": -2}}), ["generation.hires.scale = -2"]),
    "hires scale 1000": (base(generation={"hires": {"scale": 1000}}), ["generation.hires.scale = 1000"]),
    "hires scale 0 while disabled": (base(generation={"hires": {"enabled": False, "scale": 0}}), ["hires.scale = 0"]),
    "width 65536": (base(generation={"width": 65536}),
                    ["generation.width = 65536", "at most 2048", "8 <= width <= 2048"]),
    "steps 10**30": (base(generation={"steps": 10**30}), ["generation.steps = ", "1 <= steps <= 150"]),
    "style image_size": (base(scoring={"style": {"image_size": 100000}}),
                         ["scoring.style.image_size = 100000", "16 <= image_size <= 2048"]),
    "confidence 1.5": (base(standardize={"confidence": 1.5}),
                       ["standardize.confidence = 1.5", "less than 1", "0 < confidence < 1"]),
    "confidence 1": (base(standardize={"confidence": 1}), ["standardize.confidence = 1.0"]),
    "confidence NaN": (base(standardize={"confidence": math.nan}), ["standardize.confidence = nan", "finite"]),
    "seed -1": (base(standardize={"seed": -1}), ["standardize.seed = -1", "0 <= seed <= 4294967295"]),
    "good_threshold NaN": (base(scoring={"aesthetic": {"good_threshold": math.nan}}),
                           ["scoring.aesthetic.good_threshold = nan", "finite"]),
    "device path": (base(generation={"device": "../../x"}),
                    ["generation.device = '../../x'", "auto, cpu, cuda, cuda:N or mps"]),
    "scoring device typo": (base(scoring={"device": "gpu"}), ["scoring.device = 'gpu'"]),
    "slug with a newline": ({"models": {"m1\n": {"checkpoint": "x"}}}, ["'m1\\n' is not a valid model name"]),
    "slug with a newline inside": ({"models": {"a\nb": {"checkpoint": "x"}}}, ["not a valid model name"]),
    "clip_skip 99": ({"models": {"m1": {"checkpoint": "x", "clip_skip": 99}}}, ["models.m1.clip_skip = 99"]),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_values_the_pipeline_cannot_use_are_refused(case):
    data, fragments = BAD_VALUES[case]
    with pytest.raises(ConfigError) as err:
        parse_params(data, "params.yaml")
    message = str(err.value)
    assert message.startswith("params.yaml: ")
    for fragment in fragments:
        assert fragment in message, message


def test_every_number_in_params_declares_its_range():
    """The mechanism, not a list of cases: a new numeric field without declared bounds fails here."""
    missing = []

    def walk(cls, path):
        hints = __import__("typing").get_type_hints(cls)
        for f in __import__("dataclasses").fields(cls):
            tp = hints[f.name]
            if __import__("dataclasses").is_dataclass(tp):
                walk(tp, f"{path}{f.name}.")
            elif tp in (int, float) and "range" not in f.metadata:
                missing.append(f"{path}{f.name}")

    walk(config.Params, "")
    walk(config.ModelParams, "models.*.")
    assert missing == []


def test_the_shipped_params_and_example_stay_inside_the_ranges():
    root = Path(__file__).resolve().parents[1]
    load_params(root / "params.yaml")
    parse_params(yaml.safe_load((root / "examples" / "params.full-v1.yaml").read_text()))


ALIAS_BOMB = """\
models:
  m1:
    checkpoint: m1.safetensors
    title:
      - &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
      - &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
      - &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
      - &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
      - &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
      - &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
      - &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
      - &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
      - [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_a_yaml_alias_bomb_is_refused_before_anything_expands_it(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(ALIAS_BOMB)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert time.perf_counter() - start < 5
    assert "aliases" in str(err.value) and len(str(err.value)) < 500


def test_yaml_merge_keys_of_normal_size_still_work(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("models:\n  a: &common\n    checkpoint: a.safetensors\n    clip_skip: 2\n"
                    "  b:\n    <<: *common\n    checkpoint: b.safetensors\n")
    params = load_params(path)
    assert params.models["b"].clip_skip == 2 and params.models["b"].checkpoint == "b.safetensors"


def test_deeply_nested_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("models: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nested"):
        load_params(path)


@pytest.mark.parametrize("data, fragment", [(b"models: {a: \x07}\n", "special characters are not allowed"),
                                            (b"models: {a: \xff}\n", "not UTF-8 text")])
def test_unreadable_params_text_is_a_config_error(tmp_path, data, fragment):
    (tmp_path / "params.yaml").write_bytes(data)
    with pytest.raises(ConfigError, match=fragment):
        load_params(tmp_path / "params.yaml")


def test_messages_show_a_shortened_value():
    """Even a huge value (built without YAML, so no alias check) is shown in a few hundred characters."""
    big = ["x" * 10_000] * 10
    for _ in range(6):
        big = [big] * 10
    with pytest.raises(ConfigError) as err:
        parse_params({"models": {"m1": {"checkpoint": "x", "title": big}}})
    assert "models.m1.title must be str" in str(err.value) and len(str(err.value)) < 500


# devices: syntax in params (above), availability where torch can see it


@pytest.mark.parametrize("name, count, fragment", [
    ("cuda", 0, "no CUDA GPU"), ("cuda:1", 1, "cuda:1: this machine has 1 CUDA GPU"), ("../../x", 1, "not a device"),
])
def test_pick_device_refuses_a_device_this_machine_lacks(monkeypatch, name, count, fragment):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(runtime.DeviceError, match=fragment) as err:
        runtime.pick_device(name)
    assert isinstance(err.value, UserError) and "auto" in str(err.value)


def test_pick_device_auto_and_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert runtime.pick_device("auto") == "cpu" and runtime.pick_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.pick_device("auto") == "cuda" and runtime.pick_device("cuda:1") == "cuda:1"


def test_check_devices_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    params = parse_params(base(scoring={"device": "cuda:0"}))
    with pytest.raises(ConfigError, match=r"^params.yaml: scoring.device = 'cuda:0': .*no CUDA GPU"):
        validate.check_devices(params, "params.yaml")
    ray = parse_params(base(generation={"device": "cuda", "engine": "ray"}))
    validate.check_devices(ray, "params.yaml")  # drawn on the cluster's workers: not this machine's GPU


# benchmark prompts that would break the infotext


@pytest.mark.parametrize("text, fragment", [
    ("a cat\nNegative prompt: dogs", "Negative prompt:"),
    ("a cat\n   Negative prompt: dogs", "Negative prompt:"),
    ("a cat\rdogs", "line break"),
    ("a cat\u2028dogs", "line break"),
    ("\na cat", "read back"),
])
def test_benchmark_prompts_that_break_the_infotext_are_refused(text, fragment):
    from ghostreview.protocol import BenchmarkError, Loc, read_prompt

    with pytest.raises(BenchmarkError, match=fragment):
        read_prompt(text, Loc("prompts.yaml", "prompts[0].prompt", 7))


def test_a_benchmark_with_such_a_prompt_does_not_load(tmp_path):
    from conftest import small_benchmark

    from ghostreview.protocol import BenchmarkError, load_benchmark

    def change(file, edit):
        d = small_benchmark(tmp_path / f"bench-{file}", general=1, styles=1, loras=1)
        data = yaml.safe_load((d / file).read_text())
        edit(data)
        (d / file).write_text(yaml.safe_dump(data, sort_keys=False))
        return d

    d = change("prompts.yaml", lambda data: data["prompts"][0].update(prompt="a cat\nNegative prompt: dogs"))
    with pytest.raises(BenchmarkError, match=r"prompts\.yaml:\d+: prompts\[0\]\.prompt: .*'Negative prompt:'"):
        load_benchmark(d)
    d = change("loras_sd15.yaml", lambda data: data["loras"][0].update(negative_prompt="a\n Negative prompt: b"))
    with pytest.raises(BenchmarkError, match=r"loras\[0\]\.negative_prompt"):
        load_benchmark(d)
    d = change("styles.yaml", lambda data: data["styles"][0].update(template="Negative {subject}"))
    d_subjects = yaml.safe_load((d / "styles.yaml").read_text())["subjects"]
    data = yaml.safe_load((d / "styles.yaml").read_text())
    data["subjects"] = ["prompt: " + s for s in d_subjects]  # neither part alone starts with it; the prompt does
    (d / "styles.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(BenchmarkError, match=r"styles\[0\]\.template with subject"):
        load_benchmark(d)


def test_multiline_prompts_that_round_trip_are_fine():
    from ghostreview.protocol import Loc, read_prompt

    assert read_prompt("a cat,\nsitting\n\non a mat", Loc("p.yaml")) == "a cat,\nsitting\n\non a mat"


# import-infotext numbers


def header(path: Path, settings: str) -> Path:
    info = PngInfo()
    info.add_text("parameters", f"a fox <lora:fox:0.8>\n{settings}")
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("settings, fragment", [
    ("Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1e999, Size: 512x512", "Seed: '1e999'"),
    ("Steps: 1e999, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512", "Steps: '1e999'"),
    ("Steps: 20, Sampler: Euler a, CFG scale: nan, Seed: 1, Size: 512x512", "CFG scale: 'nan'"),
    ("Steps: 20, Sampler: Euler a, CFG scale: inf, Seed: 1, Size: 512x512", "CFG scale: 'inf'"),
    ("Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: -5, Size: 512x512", "Seed: '-5'"),
    ("Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 99999999999999999999999, Size: 512x512", "Seed: "),
    ("Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 7", "Denoising"),
])
def test_import_infotext_numbers_are_parsed_with_bounds(tmp_path, settings, fragment):
    path = header(tmp_path / "fox.png", settings)
    with pytest.raises(ImportInfotextError) as err:
        lora_entry_from_png(path)
    assert fragment in str(err.value) and str(path) in str(err.value)
    result = CliRunner().invoke(app, ["import-infotext", str(path)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output


def test_import_infotext_reads_plain_numbers(tmp_path):
    path = header(tmp_path / "fox.png", "Steps: 20.0, Sampler: Euler a, CFG scale: 6.5, Seed: 4294967295, "
                                        "Size: 512x512, Denoising strength: 0.45, Hires upscale: 2")
    settings = lora_entry_from_png(path)["settings"]
    assert settings["steps"] == 20 and settings["cfg"] == 6.5 and settings["seed"] == 4294967295
    assert settings["denoising_strength"] == 0.45 and settings["hires_upscale"] == 2.0
