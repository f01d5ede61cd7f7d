"""scoring.judges in params: names checked against the registry, each judge's files checked only when it is listed,
the judges' params turned into HpsSpec / PickSpec, and the demo's (commented) judge entries naming the kit's files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ghostreview import validate
from ghostreview.config import JUDGES, ConfigError, parse_params
from ghostreview.kit.demo import build_demo_kit
from ghostreview.kit.judges import write_tiny_judges
from ghostreview.protocol import load_benchmark
from ghostreview.scoring import hpsv21, pickscore
from ghostreview.scoring.registry import REGISTRY
from ghostreview.scoring.weights import sha256_file

ROOT = Path(__file__).resolve().parents[1]


def params_with(judges=None, **scoring):
    data = {"models": {"m": {"checkpoint": "m.safetensors"}}, "scoring": dict(scoring)}
    if judges is not None:
        data["scoring"]["judges"] = judges
    return validate.parse(data)


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def problem_keys(exc: pytest.ExceptionInfo) -> list[str]:
    """The params key each line of a ParamsError names (``params.yaml: <key> = ...``)."""
    return [line.split(": ", 1)[1].split(" = ")[0] for line in str(exc.value).splitlines()]


# ------------------------------------------------------------------------------------------------------------ names


def test_the_default_judges_are_the_article_metrics_and_all_registered():
    assert params_with().scoring.judges == JUDGES == ("aesthetic", "clipscore", "styleloss", "loraloss")
    assert set(JUDGES) <= set(REGISTRY)
    assert params_with(["pickscore", "aesthetic"]).scoring.judges == ("pickscore", "aesthetic")  # order kept


def test_an_unknown_judge_is_refused_with_a_close_name_and_the_valid_ones(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("models:\n  m:\n    checkpoint: x\nscoring:\n  judges: [aesthetic, hpsv2, pick_score, zzz]\n")
    with pytest.raises(validate.ParamsError) as err:
        validate.load(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{path}: scoring.judges has ") for line in lines)
    assert "'hpsv2', which is no judge. Did you mean 'hpsv21'?" in lines[0]
    assert "Did you mean 'pickscore'?" in lines[1] and "Did you mean" not in lines[2]
    assert f"Valid: {', '.join(REGISTRY)}. Fix scoring.judges in {path}." in lines[2]
    assert "styleloss, loraloss" in lines[2]  # the StyleLoss metrics are judges too


@pytest.mark.parametrize(("judges", "message"), [
    (["clipscore", "hpsv21", "clipscore", "hpsv21"], "scoring.judges lists 'clipscore', 'hpsv21' more than once"),
    ([], "scoring.judges is empty"),
    ("aesthetic", "scoring.judges must be a list, got str"),
])
def test_repeated_empty_or_scalar_judges_are_refused(judges, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_params({"models": {"m": {"checkpoint": "x"}}, "scoring": {"judges": judges}})


def test_every_registered_metric_says_which_files_it_reads():
    assert list(validate.JUDGE_FILES) == list(REGISTRY)


# ------------------------------------------------------------------------------------------------------------ files


def test_files_of_judges_not_listed_are_not_needed(tmp_path):
    """The default review needs neither HPSv2.1's file nor PickScore's folders (absent at their default paths)."""
    params = params_with()
    s = params.scoring
    touch(tmp_path, "m.safetensors", s.clip.weights, s.aesthetic.weights, s.style.vgg_weights)
    validate.check_files(params, tmp_path)
    assert not (tmp_path / s.hpsv21.weights).exists() and not (tmp_path / s.pickscore.model_dir).exists()


def test_the_scorers_files_are_checked_with_their_judges(tmp_path):
    touch(tmp_path, "m.safetensors")
    with pytest.raises(validate.ParamsError) as err:
        validate.check_files(params_with(["styleloss"]), tmp_path)
    assert problem_keys(err) == ["scoring.style.vgg_weights"]
    with pytest.raises(validate.ParamsError) as err:
        validate.check_files(params_with(["clipscore", "aesthetic"], clip={"model_config": "c.json"}), tmp_path)
    assert problem_keys(err) == ["scoring.clip.weights", "scoring.clip.model_config", "scoring.aesthetic.weights"]
    assert "see README, 'Scorer weights'" in str(err.value)


def test_a_listed_judges_missing_files_are_named_with_the_docs(tmp_path):
    touch(tmp_path, "m.safetensors", "PickScore_v1")  # a file where the model folder belongs
    params = params_with(["hpsv21", "pickscore"], pickscore={"model_dir": "PickScore_v1"})
    with pytest.raises(validate.ParamsError) as err:
        validate.check_files(params, tmp_path)
    assert problem_keys(err) == ["scoring.hpsv21.weights", "scoring.pickscore.model_dir",
                                 "scoring.pickscore.processor_dir"]
    lines = str(err.value).splitlines()
    assert "'weights/HPS_v2.1_compressed.pt': file not found" in lines[0] and "see docs/judges.md" in lines[0]
    assert "is a file, not a directory" in lines[1]


@pytest.fixture(scope="module")
def judge_files(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("judges")
    touch(root, "m.safetensors")
    return root, write_tiny_judges(root / "kit", seed=0)


def judges_params(root: Path, files: dict, **over) -> validate.Params:
    rel = {k: str(Path(v).relative_to(root)) for k, v in files.items() if k != "hps_arch"}
    hps = {"arch": files["hps_arch"], "weights": rel["hps_weights"], "model_config": rel["hps_config"],
           "sha256": None, **over.get("hpsv21", {})}
    pick = {"model_dir": rel["pick_model"], "processor_dir": rel["pick_processor"], "sha256": None,
            **over.get("pickscore", {})}
    return params_with(["hpsv21", "pickscore"], hpsv21=hps, pickscore=pick, device="cpu")


def test_the_stand_ins_pass_the_checks_and_load_from_their_specs(judge_files):
    root, files = judge_files
    params = judges_params(root, files)
    validate.check_files(params, root)
    validate.check_weights(params, root)
    hps_spec, pick_spec = validate.hps_spec(params, root), validate.pick_spec(params, root)
    assert hps_spec == hpsv21.HpsSpec(files["hps_weights"], files["hps_arch"], files["hps_config"], None, "cpu")
    assert pick_spec == pickscore.PickSpec(files["pick_model"], files["pick_processor"], None, "cpu")
    assert hps_spec.load().weights_sha256 == sha256_file(files["hps_weights"])


def test_the_specs_carry_the_pinned_hash_and_the_device(judge_files):
    root, files = judge_files
    params = judges_params(root, files, hpsv21={"sha256": "a" * 64}, pickscore={"sha256": "b" * 64})
    assert validate.hps_spec(params, root).sha256 == "a" * 64
    assert validate.pick_spec(params, root).sha256 == "b" * 64
    assert validate.hps_spec(params, root).device == validate.pick_spec(params, root).device == "cpu"


def test_a_pickled_judge_file_is_named_by_its_key_only_when_listed(judge_files, tmp_path):
    """A whole-model pickle as HPSv2.1's file and a PickScore folder without weights: refused by check_weights with
    the key; the same files under a review that does not list those judges are not looked at."""
    root, files = judge_files
    whole = root / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole)
    empty = root / "empty_model"
    empty.mkdir(exist_ok=True)
    (empty / "config.json").write_text((Path(files["pick_model"]) / "config.json").read_text())
    no_tokenizer = root / "no_tokenizer"
    no_tokenizer.mkdir(exist_ok=True)
    (no_tokenizer / "preprocessor_config.json").write_text("{}")
    (no_tokenizer / "vocab.json").write_text("{}")  # without merges.txt (or tokenizer.json): no tokenizer
    params = judges_params(root, files, hpsv21={"weights": "whole.pt"},
                           pickscore={"model_dir": "empty_model", "processor_dir": "no_tokenizer"})
    validate.check_files(params, root)
    with pytest.raises(validate.ParamsError) as err:
        validate.check_weights(params, root)
    assert problem_keys(err) == ["scoring.hpsv21.weights", "scoring.pickscore.model_dir",
                                 "scoring.pickscore.processor_dir"]
    hps_line, model_line, processor_line = str(err.value).splitlines()
    assert "refused by torch.load(weights_only=True)" in hps_line
    assert "none of ['model.safetensors', 'pytorch_model.bin'] found" in model_line
    assert "no tokenizer (tokenizer.json, or vocab.json with merges.txt; have ['vocab.json'])" in processor_line
    (no_tokenizer / "preprocessor_config.json").unlink()
    with pytest.raises(validate.ParamsError, match="no_tokenizer: no preprocessor_config.json"):
        validate.check_weights(judges_params(root, files, pickscore={"processor_dir": "no_tokenizer"}), root)
    unlisted = validate.parse({"models": {"m": {"checkpoint": "m.safetensors"}},
                               "scoring": {"judges": ["clipscore"], "clip": {"weights": str(files["hps_config"])},
                                           "hpsv21": {"weights": "whole.pt"}, "pickscore": {"model_dir": "empty"}}})
    with pytest.raises(validate.ParamsError) as err:  # the clip "weights" (a JSON file) is checked, nothing else
        validate.check_weights(unlisted, root)
    assert problem_keys(err) == ["scoring.clip.weights"]


# ------------------------------------------------------------------------------------------------------------- demo


def test_the_demo_runs_every_registered_judge_on_the_kits_stand_ins():
    params = validate.load(ROOT / "params.yaml")
    assert params.scoring.judges == tuple(REGISTRY)
    assert params.scoring.hpsv21.weights.startswith("demo/kit/scorers/hpsv21/")
    assert params.scoring.pickscore.model_dir == "demo/kit/scorers/pickscore/model"


def test_the_demo_kit_holds_the_judges_its_params_name(tmp_path):
    """Built by the kit command's function, the kit has the stand-ins at the paths of the demo params, and they pass
    validation and score an image."""
    root = tmp_path
    build_demo_kit(root / "demo" / "kit", load_benchmark(ROOT / "data" / "benchmark" / "v1"))
    params = validate.load(ROOT / "params.yaml")
    validate.check_files(params, root)
    validate.check_weights(params, root)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8))
    hps = validate.hps_spec(params, root).load()
    pick = validate.pick_spec(params, root).load()
    (h,), _ = hpsv21.hpsv21_scores(hps, [image], ["a lighthouse"], batch_size=2)
    (p,), _ = pickscore.pickscore_scores(pick, [image], ["a lighthouse"], batch_size=2)
    assert -1 <= h <= 1 and np.isfinite(p) and p != 0
    assert hps.arch == "ghostreview-tiny-ViT-H-14"
