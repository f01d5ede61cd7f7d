"""ghostreview add-model / remove-model on files: validation before writing, comments and order kept, sha256 against
hashlib, DVC's leftovers (outputs, .gitignore lines, dvc.lock entries) cleaned. The real `dvc` path is in
test_dvc_workflow.py."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from ghostreview import config, validate
from ghostreview.cli import app
from ghostreview.generation.loading import CheckpointError
from ghostreview.models_cli import ModelsError, add_model, remove_model, slug_from_filename

ROOT = Path(__file__).resolve().parents[1]
UNET = "model.diffusion_model.input_blocks.0.0.weight"
SD1_CLIP = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SDXL_KEYS = (SD1_CLIP.replace("cond_stage_model", "conditioner.embedders.0"),
             "conditioner.embedders.1.model.positional_embedding")


def write_tensors(path: Path, keys: dict[str, tuple[int, ...]], seed: int = 0) -> Path:
    """A safetensors file with these tensor names (only the header matters for validation)."""
    g = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.randn(shape, generator=g) for k, shape in keys.items()}, str(path))
    return path


def sd15(path: Path, seed: int = 0) -> Path:
    return write_tensors(path, {UNET: (8, 4, 3, 3), SD1_CLIP: (16, 8)}, seed)


@pytest.fixture
def project(tmp_path):
    """A copy of the repository's params.yaml (comments and all), its caches redirected into tmp_path."""
    text = (ROOT / "params.yaml").read_text()
    text = re.sub(r"(?m)^  cache: \S+", f"  cache: {tmp_path / 'cache'}", text)
    text = re.sub(r"(?m)^  image_store: \S+", f"  image_store: {tmp_path / 'store'}", text)
    (tmp_path / "params.yaml").write_text(text)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")  # remove-model deletes what its stages declare
    return tmp_path


def diff(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"]


@pytest.mark.parametrize("name, slug", [
    ("DreamShaper_8.safetensors", "dreamshaper_8"),
    ("models/juggernautXL_v9+RDPhoto2.safetensors", "juggernautxl_v9-rdphoto2"),
    ("Some Model (v1.5).safetensors", "some-model-v1-5"),
    ("-_anything_-v2.ckpt", "anything_-v2"),
])
def test_slug_from_filename(name, slug):
    assert slug_from_filename(name) == slug
    assert config.SLUG.match(slug)


def test_slug_needs_a_usable_character():
    with pytest.raises(ModelsError, match=r"pass --name"):
        slug_from_filename("+++.safetensors")


def test_add_model_appends_one_entry_keeps_the_rest_and_hashes_like_hashlib(project):
    ckpt = sd15(project / "models" / "My_Model.safetensors")
    before = (project / "params.yaml").read_text()
    added = add_model(project / "params.yaml", ckpt, clip_skip=2)
    after = (project / "params.yaml").read_text()

    assert diff(before, after) == ["+   my_model:", "+     checkpoint: models/My_Model.safetensors",
                                   "+     clip_skip: 2"]
    assert after.startswith(before)  # models is the last section: the new entry is appended, nothing else moves
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert (added.name, added.family, added.sha256, added.autov2) == ("my_model", "sd15", sha, sha[:10])
    params = validate.load(project / "params.yaml")
    assert list(params.models)[-1] == "my_model" and params.models["my_model"].clip_skip == 2
    cache = json.loads((project / "cache" / "sha256.json").read_text())  # the cache generate reads
    assert [e["sha256"] for e in cache["entries"].values()] == [sha]


def test_vae_title_and_a_checkpoint_outside_the_project(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    ckpt = write_tensors(elsewhere / "xl.safetensors",
                         {UNET: (8, 4, 3, 3), SDXL_KEYS[0]: (16, 8), SDXL_KEYS[1]: (77, 8)})
    vae = write_tensors(project / "vae" / "fix.safetensors", {"encoder.conv_in.weight": (4, 3, 3, 3)})
    added = add_model(project / "params.yaml", ckpt, name="xl-test", vae=vae, title="XL test")
    entry = yaml.safe_load((project / "params.yaml").read_text())["models"]["xl-test"]
    assert entry == {"checkpoint": ckpt.as_posix(), "vae": "vae/fix.safetensors", "title": "XL test"}
    assert added.family == "sdxl" and added.vae_sha256 == hashlib.sha256(vae.read_bytes()).hexdigest()


def test_pickle_checkpoint_only_with_allow_pickle(project):
    ckpt = project / "models" / "old.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {UNET: torch.zeros(8, 4, 3, 3), SD1_CLIP: torch.zeros(16, 8)}}, ckpt)
    with pytest.raises(CheckpointError, match=r"pickle checkpoint"):
        add_model(project / "params.yaml", ckpt)
    added = add_model(project / "params.yaml", ckpt, allow_pickle=True)
    entry = yaml.safe_load((project / "params.yaml").read_text())["models"]["old"]
    assert added.family == "sd15" and entry == {"checkpoint": "models/old.ckpt", "allow_pickle": True}

    vae = project / "models" / "vae.pt"  # a pickle VAE with a safetensors checkpoint needs the flag too
    torch.save({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, vae)
    ckpt = sd15(project / "models" / "new.safetensors")
    with pytest.raises(ModelsError, match=r"a pickle VAE \(.pt\) can run code"):
        add_model(project / "params.yaml", ckpt, vae=vae)
    add_model(project / "params.yaml", ckpt, vae=vae, allow_pickle=True)
    entry = yaml.safe_load((project / "params.yaml").read_text())["models"]["new"]
    assert entry == {"checkpoint": "models/new.safetensors", "vae": "models/vae.pt", "allow_pickle": True}


def test_first_model_into_an_empty_models_section(tmp_path):
    text = ("# settings\nmodels:                # add checkpoints with ghostreview add-model\n\n"
            "standardize:\n  seed: 0\n")
    (tmp_path / "params.yaml").write_text(text)
    add_model(tmp_path / "params.yaml", sd15(tmp_path / "a.safetensors"))
    after = (tmp_path / "params.yaml").read_text()
    assert "# add checkpoints with ghostreview add-model" in after and "# settings" in after
    assert validate.load(tmp_path / "params.yaml").models["a"].checkpoint == "a.safetensors"


REFUSALS = {
    "duplicate name": (dict(name="demo-sd15-a"), ModelsError, r"models.demo-sd15-a already exists"),
    "not a slug": (dict(name="My Model"), config.ConfigError, r"not a valid model name"),
    "clip skip 0": (dict(clip_skip=0), config.ConfigError, r"clip_skip = 0; A1111 numbering starts at 1"),
    "a LoRA": (dict(file="lora"), CheckpointError, r"looks like a LoRA"),
    "an SD2 checkpoint": (dict(file="sd2"), CheckpointError, r"an SD2\.x checkpoint.*reviews sd15 and sdxl"),
    "missing file": (dict(file="missing"), CheckpointError, r"no such file"),
    "a VAE that is not one": (dict(vae="lora"), ModelsError, r"lora.safetensors: not a VAE file.*leave --vae out"),
    # a full checkpoint as --vae: it has a VAE inside, but also a UNet and a text encoder
    "a checkpoint as the VAE": (dict(vae="full"), ModelsError,
                                r"full.safetensors: a full checkpoint \(UNet keys such as model\.diffusion_model\..*"
                                r"text encoder keys such as cond_stage_model\..*\), not a VAE\. Point --vae at the VAE "
                                r"file alone .*or leave --vae out"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_name_the_problem_and_leave_params_untouched(project, case):
    over, error, message = REFUSALS[case]
    files = {
        "ckpt": sd15(project / "models" / "ok.safetensors"),
        "lora": write_tensors(project / "lora.safetensors", {"lora_unet_down_blocks_0.lora_down.weight": (4, 8)}),
        "sd2": write_tensors(project / "sd2.safetensors",
                             {UNET: (8, 4, 3, 3), "cond_stage_model.model.positional_embedding": (77, 8)}),
        "missing": project / "nowhere.safetensors",
        "full": write_tensors(project / "full.safetensors", {UNET: (8, 4, 3, 3), SD1_CLIP: (16, 8),
                                                             "first_stage_model.encoder.conv_in.weight": (4, 3, 3, 3)}),
    }
    before = (project / "params.yaml").read_bytes()
    ckpt = files[over.pop("file", "ckpt")]
    if "vae" in over:
        over["vae"] = files[over["vae"]]
    with pytest.raises(error, match=message):
        add_model(project / "params.yaml", ckpt, **over)
    assert (project / "params.yaml").read_bytes() == before


LOCK = """schema: '2.0'
stages:
  generate@demo-sd15-a:
    cmd: python stages/generate.py --model demo-sd15-a --out data/images/demo-sd15-a
    outs:
    - path: data/images/demo-sd15-a
      hash: md5
      md5: 11111111111111111111111111111111.dir
  generate@demo-sd15-b:
    cmd: python stages/generate.py --model demo-sd15-b --out data/images/demo-sd15-b
    params:
      params.yaml:
        models.demo-sd15-b:
          checkpoint: demo/kit/models/tiny-sd15-b.safetensors
          clip_skip: 2
          config: demo/kit/configs/sd15
          title: Demo SD1.5 B (random weights)
    outs:
    - path: data/images/demo-sd15-b
      hash: md5
      md5: 22222222222222222222222222222222.dir
  score@demo-sd15-b:
    cmd: python stages/score.py --images data/images/demo-sd15-b --refstats data/refstats --out data/scores/demo-sd15-b
    outs:
    - path: data/scores/demo-sd15-b
      hash: md5
      md5: 44444444444444444444444444444444.dir
  standardize:
    cmd: python stages/standardize.py --images data/images --scores data/scores --out data/standardized
    outs:
    - path: data/standardized
      hash: md5
      md5: 55555555555555555555555555555555.dir
"""


def outputs_as_dvc_leaves_them(root: Path) -> None:
    """Stage outputs of two models plus the .gitignore lines DVC writes next to each output."""
    for model in ("demo-sd15-a", "demo-sd15-b"):
        (root / "data" / "images" / model).mkdir(parents=True)
        (root / "data" / "images" / model / "x.png").write_bytes(b"png")
        (root / "data" / "scores" / model).mkdir(parents=True)
        (root / "data" / "scores" / model / "aesthetic.csv").write_text("model\n")
    (root / "data" / "scores" / ".gitignore").write_text("/demo-sd15-a\n/demo-sd15-b\n")
    (root / "data" / "images" / ".gitignore").write_text("/demo-sd15-a\n/demo-sd15-b\n")
    (root / "dvc.lock").write_text(LOCK)


def test_remove_model_cleans_params_outputs_gitignore_and_lock(project):
    outputs_as_dvc_leaves_them(project)
    before = (project / "params.yaml").read_text()
    removed = remove_model(project / "params.yaml", "demo-sd15-b")

    assert removed.in_params and removed.lock_entries == ("generate@demo-sd15-b", "score@demo-sd15-b")
    assert set(removed.outputs) == {"data/images/demo-sd15-b", "data/scores/demo-sd15-b"}
    after = (project / "params.yaml").read_text()
    assert diff(before, after) == ["-   demo-sd15-b:", "-     checkpoint: demo/kit/models/tiny-sd15-b.safetensors",
                                   "-     config: demo/kit/configs/sd15", "-     clip_skip: 2",
                                   "-     title: Demo SD1.5 B (random weights)"]
    data = project / "data"
    assert not (data / "images" / "demo-sd15-b").exists() and (data / "images" / "demo-sd15-a" / "x.png").exists()
    assert not (data / "scores" / "demo-sd15-b").exists() and (data / "scores" / "demo-sd15-a").is_dir()
    assert (data / "images" / ".gitignore").read_text() == "/demo-sd15-a\n"
    assert (data / "scores" / ".gitignore").read_text() == "/demo-sd15-a\n"
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    expected = yaml.safe_load(LOCK)
    for stage in removed.lock_entries:
        del expected["stages"][stage]
    assert lock == expected

    known = "demo-sd15-a, demo-sdxl-a, demo-noobai-vpred-a, demo-noobai-vpred-b, demo-flux-dev-a, demo-flux-dev-b"
    with pytest.raises(ModelsError, match=rf"no model 'demo-sd15-b' under models \(known: {known}\)"):
        remove_model(project / "params.yaml", "demo-sd15-b")


def test_remove_model_cleans_leftovers_of_a_model_already_gone_from_params(project):
    outputs_as_dvc_leaves_them(project)
    text = (project / "params.yaml").read_text()
    config_text = text.replace("  demo-sd15-b:\n    checkpoint: demo/kit/models/tiny-sd15-b.safetensors\n"
                               "    config: demo/kit/configs/sd15\n    clip_skip: 2\n"
                               "    title: Demo SD1.5 B (random weights)\n", "")
    assert config_text != text
    (project / "params.yaml").write_text(config_text)
    removed = remove_model(project / "params.yaml", "demo-sd15-b")
    assert not removed.in_params and len(removed.lock_entries) == 2
    assert not (project / "data" / "images" / "demo-sd15-b").exists()
    assert (project / "params.yaml").read_text() == config_text


def test_remove_model_refuses_the_last_model_and_ignores_what_the_lock_says_its_outputs_are(project):
    outputs_as_dvc_leaves_them(project)
    for name in [m for m in yaml.safe_load((project / "params.yaml").read_text())["models"] if m != "demo-sd15-a"]:
        remove_model(project / "params.yaml", name)
    with pytest.raises(ModelsError, match=r"'demo-sd15-a' is the only model; add another first"):
        remove_model(project / "params.yaml", "demo-sd15-a")
    (project / "dvc.lock").write_text(LOCK.replace("data/images/demo-sd15-a\n      hash", "../outside\n      hash"))
    (project.parent / "outside").mkdir(exist_ok=True)
    add_model(project / "params.yaml", sd15(project / "second.safetensors"))
    removed = remove_model(project / "params.yaml", "demo-sd15-a")
    # what dvc.yaml declares (the lock did not even list the scores), not the lock's ../outside
    assert removed.outputs == ("data/images/demo-sd15-a", "data/scores/demo-sd15-a")
    assert (project.parent / "outside").is_dir() and not (project / "data" / "images" / "demo-sd15-a").exists()


def lock_claiming(name: str, paths: list[str], item: dict | None = None) -> str:
    """A dvc.lock whose ``generate@<name>`` entry claims these outputs (as a hostile or garbled lock could)."""
    entry = {"cmd": f"python stages/generate.py --model {name} --out data/images/{name}",
             "outs": [{"path": p, "hash": "md5", "md5": "0" * 32} for p in paths]}
    if item is not None:
        entry["params"] = {"params.yaml": {f"models.{name}": item}}
    return yaml.safe_dump({"schema": "2.0", "stages": {f"generate@{name}": entry}}, sort_keys=False)


def git_dir(root: Path) -> Path:
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root / ".git"


def test_remove_model_deletes_only_the_outputs_dvc_yaml_declares_for_its_stages(project):
    outputs_as_dvc_leaves_them(project)
    git = git_dir(project)
    (project / "dvc.lock").write_text(LOCK.replace(
        "    - path: data/images/demo-sd15-b\n",
        "    - path: .git\n      hash: md5\n      md5: 0\n    - path: params.yaml\n      hash: md5\n      md5: 0\n"
        "    - path: data/images/demo-sd15-a\n      hash: md5\n      md5: 0\n    - path: data/images/demo-sd15-b\n"))
    removed = remove_model(project / "params.yaml", "demo-sd15-b")
    assert set(removed.outputs) == {"data/images/demo-sd15-b", "data/scores/demo-sd15-b"}
    assert (git / "HEAD").is_file() and (project / "params.yaml").is_file()
    assert (project / "data" / "images" / "demo-sd15-a" / "x.png").is_file()


def test_a_lock_entry_alone_cannot_make_remove_model_delete_anything(project):
    """The issue's case: ``generate@victim`` in dvc.lock with ``outs: [.git]``, victim not in params."""
    git = git_dir(project)
    (project / "dvc.lock").write_text(lock_claiming("victim", [".git"]))
    before = (project / "dvc.lock").read_text()
    with pytest.raises(ModelsError, match=r"model 'victim'.*nothing was deleted"):
        remove_model(project / "params.yaml", "victim")
    assert (git / "HEAD").is_file() and (project / "dvc.lock").read_text() == before
    result = CliRunner().invoke(app, ["remove-model", "victim", "--params", str(project / "params.yaml")])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
    assert (git / "HEAD").is_file()


def test_leftovers_of_a_removed_model_are_resolved_through_dvc_yaml_not_taken_from_the_lock(project):
    git = git_dir(project)
    (project / "data" / "images" / "victim").mkdir(parents=True)
    (project / "data" / "images" / "victim" / "x.png").write_bytes(b"png")
    item = {"checkpoint": "demo/kit/models/tiny-sd15-a.safetensors"}
    (project / "dvc.lock").write_text(lock_claiming("victim", [".git", "data/images/victim"], item))
    removed = remove_model(project / "params.yaml", "victim")
    assert not removed.in_params and removed.lock_entries == ("generate@victim",)
    assert removed.outputs == ("data/images/victim",)
    assert (git / "HEAD").is_file() and not (project / "data" / "images" / "victim").exists()
    assert yaml.safe_load((project / "dvc.lock").read_text())["stages"] == {}


@pytest.mark.parametrize("name", ["../../.git", "victim\n", "Victim", ""])
def test_remove_model_refuses_a_name_that_is_no_slug(project, name):
    git_dir(project)
    (project / "dvc.lock").write_text(lock_claiming(name, [".git"]))
    with pytest.raises(ModelsError, match=r"not a model name"):
        remove_model(project / "params.yaml", name)
    assert (project / ".git" / "HEAD").is_file()


def test_a_checkpoint_already_present_is_named_in_a_warning(project):
    """The same file under another name (or a copy of it elsewhere) is added, with a warning naming the model it
    duplicates: two entries of one checkpoint are meant only to compare settings (clip skip, VAE)."""
    ckpt = sd15(project / "models" / "one.safetensors")
    other = sd15(project / "models" / "other.safetensors", seed=1)  # same size, other bytes: no warning
    assert add_model(project / "params.yaml", ckpt, name="first").same_file_as == ()
    assert add_model(project / "params.yaml", other, name="other").same_file_as == ()
    copy = project / "elsewhere" / "one-copy.safetensors"
    copy.parent.mkdir()
    shutil.copy(ckpt, copy)
    added = add_model(project / "params.yaml", copy, name="again", clip_skip=2)
    assert added.same_file_as == ("first",)
    assert "again" in validate.load(project / "params.yaml").models  # a warning, not a refusal

    result = CliRunner().invoke(app, ["add-model", str(ckpt), "--name", "third", "--params",
                                      str(project / "params.yaml")])
    assert result.exit_code == 0, result.output
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: {ckpt} is the same file as models.first's checkpoint (sha256 {sha}): both are reviewed, as two "
        f"models. If that was not meant, `ghostreview remove-model third`.",
        f"warning: {ckpt} is the same file as models.again's checkpoint (sha256 {sha}): both are reviewed, as two "
        f"models. If that was not meant, `ghostreview remove-model third`."]


def test_a_full_checkpoint_as_vae_is_refused_by_the_command_in_one_line(project):
    ckpt = sd15(project / "models" / "ok.safetensors")
    full = sd15(project / "models" / "full.safetensors", seed=3)
    before = (project / "params.yaml").read_bytes()
    result = CliRunner().invoke(app, ["add-model", str(ckpt), "--vae", str(full), "--params",
                                      str(project / "params.yaml")])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {full}: a full checkpoint (UNet keys such as model.diffusion_model.")
    assert len(result.output.strip().splitlines()) == 1 and "--vae" in result.output
    assert (project / "params.yaml").read_bytes() == before


def test_cli_commands(project):
    runner = CliRunner()
    ckpt = sd15(project / "models" / "cli.safetensors")
    params = str(project / "params.yaml")
    result = runner.invoke(app, ["add-model", str(ckpt), "--name", "cli-model", "--params", params])
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert result.exit_code == 0 and f"added models.cli-model to {params}: sd15" in result.output
    assert f"AutoV2 {sha[:10]}" in result.output
    result = runner.invoke(app, ["add-model", str(ckpt), "--name", "cli-model", "--params", params])
    assert result.exit_code == 2 and "already exists" in result.output
    result = runner.invoke(app, ["remove-model", "cli-model", "--params", params])
    assert result.exit_code == 0 and "removed models.cli-model" in result.output
    assert "cli-model" not in yaml.safe_load((project / "params.yaml").read_text())["models"]
