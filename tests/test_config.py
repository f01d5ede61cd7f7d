"""params.yaml validation: every bad input stops with the file, the key and the fix."""

from pathlib import Path

import pytest
import yaml

from ghostreview import config
from ghostreview.config import ConfigError, parse_params
from ghostreview.util import runtime
from ghostreview.validate import check_files
from ghostreview.validate import load as load_params

ROOT = Path(__file__).resolve().parents[1]


def base(**over):
    data = {"models": {"m1": {"checkpoint": "m1.safetensors"}}}
    data.update(over)
    return data


def test_shipped_params_parse():
    params = load_params(ROOT / "params.yaml")
    assert len(params.models) == 7
    assert {"sd15", "sdxl"} <= {Path(m.config).name for m in params.models.values() if m.config}


def test_defaults_are_the_full_protocol():
    p = parse_params(base())
    counts = p.benchmark.images_per_item
    assert 30 * counts.general + 9 * counts.style + 16 * counts.lora == 1568
    assert p.generation.hires.enabled and p.generation.sampler == "DPM++ 2M Karras"


@pytest.mark.parametrize(
    "data, expected",
    [
        (base(generaton={}), ['unknown key generaton', 'Did you mean "generation"']),
        ({"models": {"m1": {"checkpoint": "x", "clipskip": 2}}}, ["models.m1.clipskip", '"clip_skip"']),
        ({"models": {"m1": {"checkpoint": 5}}}, ["models.m1.checkpoint must be str", "(5)"]),
        ({"models": {"m1": {}}}, ["missing required key models.m1.checkpoint"]),
        ({"models": {"../evil": {"checkpoint": "x"}}}, ["not a valid model name", "slug"]),
        ({"models": {"a/b": {"checkpoint": "x"}}}, ["not a valid model name", "'a-b'"]),
        ({"models": {"My Model.v2": {"checkpoint": "x"}}}, ["not a valid model name"]),
        ({"models": {}}, ["models is empty", "add-model"]),
        (base(benchmark={"images_per_item": {"general": 0}}), ["images_per_item.general = 0"]),
        (base(benchmark={"images_per_item": {"style": -3}}), ["images_per_item.style = -3"]),
        (base(benchmark={"tasks": ["general", "styles"]}), ["'styles'", '"style"']),
        (base(generation={"width": 500}), ["generation.width = 500", "multiple of 8", "496"]),
        (base(generation={"steps": "25"}), ["generation.steps must be int", "'25'"]),
        (base(generation={"steps": True}), ["generation.steps must be int"]),
        (base(generation={"hires": {"upscaler": "ESRGAN"}}), ["hires.upscaler", "'Latent'"]),
        (base(generation={"hires": {"denoising_strength": 1.5}}), ["denoising_strength"]),
        ({"models": {"m1": {"checkpoint": "x", "clip_skip": 0}}}, ["clip_skip = 0", "starts at 1"]),
        (base(scoring={"clip": {"arch": 3}}), ["scoring.clip.arch must be str"]),
    ],
)
def test_bad_params_name_key_and_fix(data, expected):
    with pytest.raises(ConfigError) as err:
        parse_params(data, "params.yaml")
    message = str(err.value)
    assert message.startswith("params.yaml:")
    for fragment in expected:
        assert fragment in message


def test_duplicate_model_name_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("models:\n  a:\n    checkpoint: x\n  a:\n    checkpoint: y\n")
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_params(path)


def test_missing_files_named_before_work(tmp_path):
    params = parse_params(base())
    with pytest.raises(ConfigError, match=r"models.m1.checkpoint = 'm1.safetensors': file not found") as first:
        check_files(params, tmp_path)
    lines = str(first.value).splitlines()  # every missing file at once, one line each
    assert [line.split(": ")[1].split(" = ")[0] for line in lines] == [
        "models.m1.checkpoint", "scoring.clip.weights", "scoring.aesthetic.weights", "scoring.style.vgg_weights"]
    (tmp_path / "m1.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="scoring.clip.weights"):
        check_files(params, tmp_path)


def test_demo_paths_hint_at_the_kit(tmp_path):
    params = parse_params({"models": {"m1": {"checkpoint": "demo/kit/models/a.safetensors"}}})
    with pytest.raises(ConfigError, match="ghostreview kit demo/kit"):
        check_files(params, tmp_path)


def test_yaml_syntax_error_names_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)


def test_roundtrip_of_shipped_example():
    data = yaml.safe_load((ROOT / "examples" / "params.full-v1.yaml").read_text())
    params = parse_params(data, "examples/params.full-v1.yaml")
    assert params.generation.width == 512 and params.benchmark.images_per_item.general == 32


def test_no_param_is_named_like_the_keys_dvc_leaves_out_of_its_run_cache():
    """DVC drops params named `size` or `nfiles` from its run-cache key (treeverse/dvc#10296): a change of such a
    param would be answered with the outputs of the old value. Walk every dataclass field of the params tree."""
    import dataclasses

    from ghostreview.config import Params

    def walk(cls, path):
        for f in dataclasses.fields(cls):
            yield f"{path}{f.name}"
            typ = f.type if isinstance(f.type, type) else None
            default = f.default if f.default is not dataclasses.MISSING else None
            sub = typ if typ is not None and dataclasses.is_dataclass(typ) else (
                type(default) if dataclasses.is_dataclass(default) else None)
            if sub is not None:
                yield from walk(sub, f"{path}{f.name}.")

    names = list(walk(Params, ""))
    assert "scoring.style.image_size" in names  # the walk reaches nested sections
    assert not [n for n in names if n.rsplit(".", 1)[-1] in ("size", "nfiles")]
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())

    def keys(d, path=""):
        for k, v in d.items():
            yield f"{path}{k}"
            if isinstance(v, dict):
                yield from keys(v, f"{path}{k}.")

    assert not [k for k in keys(shipped) if k.rsplit(".", 1)[-1] in ("size", "nfiles")]


def test_the_device_syntax_has_one_definition_and_a_marked_copy():
    """config (a leaf) checks device names when params are read; runtime.pick_device refuses other names too."""
    assert runtime.DEVICE.pattern == config.DEVICE.pattern and runtime.DEVICE.flags == config.DEVICE.flags


def test_each_dataclass_checks_its_own_values_when_built_directly():
    with pytest.raises(ConfigError, match=r"^width = 500 is not a positive multiple of 8"):
        config.GenerationParams(width=500)
    with pytest.raises(ConfigError, match=r"^steps = 0; it must be a positive integer when hires is enabled"):
        config.HiresParams(steps=0)
    assert config.HiresParams(enabled=False, steps=0).steps == 0


def test_every_problem_of_a_run_is_listed_at_once():
    """Wrong types, unknown and missing keys and out-of-range values anywhere in the tree: one error, a line each,
    in one run (not one problem per run)."""
    data = {"models": {"m1": {"checkpoint": 5, "clip_skip": 0}, "m2": {}},
            "generation": {"steps": "25", "cfg_scale": 99, "widht": 512, "hires": {"scale": "x"}},
            "scoring": {"batch_size": 0, "clip": {"arch": 3}}}
    with pytest.raises(ConfigError) as err:
        parse_params(data, "params.yaml")
    problems = err.value.problems
    assert str(err.value) == "\n".join(problems)
    assert all(p.startswith("params.yaml: ") for p in problems)
    keys = ["models.m1.checkpoint must be str", "models.m1.clip_skip = 0", "missing required key models.m2.checkpoint",
            "unknown key generation.widht", "generation.steps must be int", "generation.hires.scale must be float",
            "generation.cfg_scale = 99.0", "scoring.clip.arch must be str", "scoring.batch_size = 0"]
    assert len(problems) == len(keys)
    for key in keys:
        assert sum(key in p for p in problems) == 1, key


def test_a_dataclass_lists_all_its_fields_out_of_bounds():
    with pytest.raises(ConfigError) as err:
        parse_params(base(generation={"steps": 0, "cfg_scale": 0.5, "batch_size": 0}), "p.yaml")
    assert [p.split(";")[0] for p in err.value.problems] == [
        "p.yaml: generation.steps = 0", "p.yaml: generation.cfg_scale = 0.5", "p.yaml: generation.batch_size = 0"]
    # built directly, a dataclass names its keys relative to itself
    with pytest.raises(config.Invalid) as direct:
        config.GenerationParams(steps=0, width=4)
    assert [line.split(";")[0] for line in direct.value.problems] == ["steps = 0", "width = 4"]


def test_validate_cli_prints_each_problem_as_an_error_line(tmp_path):
    from typer.testing import CliRunner

    from ghostreview.cli import app

    path = tmp_path / "params.yaml"
    path.write_text("models:\n  m1:\n    checkpoint: 5\ngeneration:\n  steps: '25'\n  cfg_scale: 99\n")
    result = CliRunner().invoke(app, ["validate", "--params", str(path)])
    assert result.exit_code == 2
    errors = result.output.splitlines()
    assert len(errors) == 3 and all(line.startswith(f"error: {path}: ") for line in errors), result.output
