"""`ghostreview validate`: every file the review reads is checked without loading a model, and every problem is
listed at once, each naming the file, the key and the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import small_benchmark
from typer.testing import CliRunner

from ghostreview.cli import app
from ghostreview.kit.demo import build_demo_kit
from ghostreview.protocol import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The shipped demo params over a demo kit of a cut benchmark (1 prompt, 1 style, 1 LoRA per family)."""
    root = tmp_path_factory.mktemp("validate")
    bench_dir = small_benchmark(root / "bench", general=1, styles=1, loras=1)
    build_demo_kit(root / "demo" / "kit", load_benchmark(bench_dir), seed=0)
    text = (ROOT / "params.yaml").read_text()
    text = re.sub(r"(?m)^  dir: \S+", f"  dir: {bench_dir}", text)
    (root / "params.yaml").write_text(text)
    return root


def validate(params: Path):
    return CliRunner().invoke(app, ["validate", "--params", str(params)])


def test_the_demo_params_validate(project):
    result = validate(project / "params.yaml")
    assert result.exit_code == 0, result.output
    assert ("OK (7 models: demo-sd15-a (sd15), demo-sd15-b (sd15), demo-sdxl-a (sdxl), demo-noobai-vpred-a (sdxl: "
            "noobai, v-prediction), demo-noobai-vpred-b (sdxl: noobai, v-prediction), demo-flux-dev-a (flux: "
            "flux1-dev), demo-flux-dev-b (flux: flux1-dev))") in result.output


def test_every_problem_is_listed_with_its_key_and_fix(project, tmp_path):
    params = project / "params.yaml"
    broken = tmp_path / "params.yaml"
    text = params.read_text().replace("sampler: DPM++ 2M Karras", "sampler: DPM++ 2M Karass")
    text = text.replace("demo/kit/", f"{project}/demo/kit/")
    # a checkpoint that is not a safetensors file at all, and a style without reference images
    (tmp_path / "login.safetensors").write_text("<html>please log in</html>")
    text = text.replace(f"{project}/demo/kit/models/tiny-sd15-b.safetensors", str(tmp_path / "login.safetensors"))
    refs = tmp_path / "style_refs"
    refs.mkdir()
    text = text.replace(f"style_refs: {project}/demo/kit/style_refs", f"style_refs: {refs}")
    broken.write_text(text)

    result = validate(broken)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, result.output
    sampler, checkpoint, style = errors
    assert "generation.sampler" in sampler and "DPM++ 2M Karras" in sampler  # did you mean
    assert "models.demo-sd15-b.checkpoint" in checkpoint and "login.safetensors" in checkpoint
    assert str(refs) in style and "paths.style_refs" in style


def test_a_missing_lora_file_is_named(project, tmp_path):
    text = (project / "params.yaml").read_text().replace("demo/kit/", f"{project}/demo/kit/")
    (tmp_path / "no-loras").mkdir()  # the directory is there, the table's file is not
    text = text.replace(f"sd15: {project}/demo/kit/loras/sd15", f"sd15: {tmp_path / 'no-loras'}")
    (tmp_path / "params.yaml").write_text(text)
    result = validate(tmp_path / "params.yaml")
    assert result.exit_code == 2
    assert "LoRA file(s) of the benchmark are missing" in result.output and "no-loras" in result.output


def test_bad_images_weights_devices_and_paths_are_listed_without_a_traceback(project, tmp_path, monkeypatch):
    """Issue 12, items 6-8 through the command: a decompression bomb among the reference images, a pickle payload as
    the aesthetic head, a directory as a model's VAE and a CUDA device on a machine without one: all four listed at
    once, each with its key, and nothing escapes as a traceback."""
    import torch
    from test_hardening_values import Payload, png_of_zeros

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    text = (project / "params.yaml").read_text().replace("demo/kit/", f"{project}/demo/kit/")
    refs = tmp_path / "style_refs"
    for style in (project / "demo" / "kit" / "style_refs").iterdir():
        (refs / style.name).mkdir(parents=True)
        png_of_zeros(refs / style.name / "bomb.png", 20000, 20000)
    text = text.replace(f"style_refs: {project}/demo/kit/style_refs", f"style_refs: {refs}")
    torch.save({"layers.0.weight": torch.zeros(1), "x": Payload(tmp_path / "ran")}, tmp_path / "head.pth")
    text = text.replace(f"weights: {project}/demo/kit/scorers/laion_head.pth", f"weights: {tmp_path / 'head.pth'}")
    (tmp_path / "vae").mkdir()
    text = text.replace("    title: Demo SD1.5 A", f"    vae: {tmp_path / 'vae'}\n    title: Demo SD1.5 A", 1)
    text = text.replace("  device: auto                    # auto, cpu",
                        "  device: cuda                    # auto, cpu")
    (tmp_path / "params.yaml").write_text(text)

    result = validate(tmp_path / "params.yaml")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    errors = "\n".join(line for line in result.output.splitlines() if line.startswith("error: "))
    assert "models.demo-sd15-a.vae" in errors and "is a directory, not a file" in errors
    assert "scoring.aesthetic.weights" in errors and "head.pth" in errors and ".safetensors" in errors
    assert "generation.device = 'cuda'" in errors and "no CUDA GPU" in errors
    assert "bomb.png: 400,000,000 pixels" in errors and "paths.style_refs" in errors
    assert not (tmp_path / "ran").exists()


def test_a_missing_lora_directory_is_named_by_its_key(project, tmp_path):
    text = (project / "params.yaml").read_text().replace("demo/kit/", f"{project}/demo/kit/")
    text = text.replace(f"sd15: {project}/demo/kit/loras/sd15", f"sd15: {tmp_path / 'no-loras'}")
    (tmp_path / "blocker").write_text("a file where the SDXL LoRA directory should be")
    text = text.replace(f"sdxl: {project}/demo/kit/loras/sdxl", f"sdxl: {tmp_path / 'blocker'}")
    (tmp_path / "params.yaml").write_text(text)
    result = validate(tmp_path / "params.yaml")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {tmp_path / 'params.yaml'}: paths.loras.sd15 = '{tmp_path / 'no-loras'}': the LoRA directory "
        f"{tmp_path / 'no-loras'} is missing. Create it and put the 1 LoRA file(s) of the sd15 table there (see "
        f"docs/benchmark.md), fix paths.loras.sd15, or leave the LoRA task out with benchmark.tasks.",
        f"error: {tmp_path / 'params.yaml'}: paths.loras.sdxl = '{tmp_path / 'blocker'}': the LoRA directory "
        f"{tmp_path / 'blocker'} is a file, not a directory. Create it and put the 2 LoRA file(s) of the sdxl and "
        f"illustrious tables there (see docs/benchmark.md), fix paths.loras.sdxl, or leave the LoRA task out with "
        f"benchmark.tasks."]  # the NoobAI models draw Illustrious' table, whose files are SDXL LoRAs


def test_a_full_checkpoint_as_a_model_s_vae_is_refused(project, tmp_path):
    text = (project / "params.yaml").read_text().replace("demo/kit/", f"{project}/demo/kit/")
    other = f"{project}/demo/kit/models/tiny-sd15-b.safetensors"
    text = text.replace("    title: Demo SD1.5 A", f"    vae: {other}\n    title: Demo SD1.5 A", 1)
    (tmp_path / "params.yaml").write_text(text)
    result = validate(tmp_path / "params.yaml")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert errors[0].startswith(f"error: {tmp_path / 'params.yaml'}: models.demo-sd15-a.vae = '{other}': {other}: a "
                                f"full checkpoint (UNet keys such as model.diffusion_model.")
    assert "Point models.demo-sd15-a.vae at the VAE file alone" in errors[0]
    # the kit's standalone VAE passes
    vae = tmp_path / "vae.safetensors"
    from ghostreview.kit.sd import write_tiny_vae

    write_tiny_vae(vae, "sd15", seed=5)
    (tmp_path / "params.yaml").write_text(text.replace(f"vae: {other}", f"vae: {vae}"))
    assert validate(tmp_path / "params.yaml").exit_code == 0


def test_a_base_or_prediction_the_file_contradicts_is_named_before_any_drawing(project, tmp_path):
    text = (project / "params.yaml").read_text().replace("demo/kit/", f"{project}/demo/kit/")
    text = text.replace("    title: Demo SDXL A (random weights)", "    title: Demo SDXL A (random weights)\n"
                        "    base: sd15")  # an SD1.5 base on an SDXL file (its tensor keys)
    text = text.replace("    title: Demo SD1.5 A (random weights)", "    title: Demo SD1.5 A (random weights)\n"
                        "    base: pony")  # an SDXL base on an SD1.5 file
    (tmp_path / "params.yaml").write_text(text)
    result = validate(tmp_path / "params.yaml")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, result.output
    sd15_a, sdxl_a = sorted(errors, key=lambda e: "demo-sdxl-a" in e)
    assert "models.demo-sd15-a.base" in sd15_a and "'pony'" in sd15_a and "tiny-sd15-a.safetensors" in sd15_a
    assert "models.demo-sdxl-a.base" in sdxl_a and "sd15" in sdxl_a and "sdxl" in sdxl_a
    assert "set base to one of" in sdxl_a  # the fix
