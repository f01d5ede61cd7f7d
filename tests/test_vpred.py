"""v-prediction SDXL (NoobAI-XL V-Pred): the zero-terminal-SNR schedule as A1111 computes it, and the tiny v-pred
stand-in drawn both ways, our path picking the right one from the file's ``v_pred`` / ``ztsnr`` markers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ghostreview.config import parse_params
from ghostreview.generation import loading
from ghostreview.generation.bases import resolve_base
from ghostreview.generation.draw import DrawRequest, draw_arrays
from ghostreview.generation.infotext import parse_infotext
from ghostreview.generation.plan import ImageJob, ModelIdentity, infotext_for, job_fields
from ghostreview.generation.samplers import ZERO_SNR_TERMINAL_ALPHA_BAR, make_scheduler
from ghostreview.generation.worker import PipelineSpec, load_spec_pipeline
from ghostreview.kit.sd import write_tiny_checkpoint
from ghostreview.kit.vpred import write_tiny_vpred_checkpoint

SDXL_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "timestep_spacing": "leading", "steps_offset": 1}
ZSNR = {**SDXL_SCHEDULER, "rescale_betas_zero_snr": True}


def comfy_zero_snr_alphas_cumprod() -> np.ndarray:
    """An independent reference: ComfyUI's rescale_zero_terminal_snr_sigmas, on sigmas, in float64."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    sigmas = np.sqrt((1 - np.cumprod(1 - betas)) / np.cumprod(1 - betas))
    root = np.sqrt(1 / (sigmas**2 + 1))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    alphas = root**2
    alphas[-1] = 4.8973451890853435e-08
    return alphas


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M Karras", "DDIM", "UniPC", "DPM++ SDE"])
def test_zero_snr_schedule_is_a1111s(sampler):
    s = make_scheduler(sampler, ZSNR, seeds=[0])
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), comfy_zero_snr_alphas_cumprod(), rtol=2e-5)
    assert float(s.alphas_cumprod[-1]) == pytest.approx(ZERO_SNR_TERMINAL_ALPHA_BAR, rel=1e-5)
    plain = make_scheduler(sampler, SDXL_SCHEDULER, seeds=[0])
    assert float(plain.alphas_cumprod[-1]) == pytest.approx(0.00466, rel=1e-2)  # SDXL's own, untouched


def test_zero_snr_starts_at_the_terminal_step():
    euler = make_scheduler("Euler", ZSNR)
    euler.set_timesteps(10)
    assert float(euler.timesteps[0]) == 999 and float(euler.sigmas[0]) == pytest.approx(4518.76, rel=1e-4)
    ddim = make_scheduler("DDIM", ZSNR)  # "leading" would start at 901 and never see the zero-SNR step
    ddim.set_timesteps(10)
    assert int(ddim.timesteps[0]) == 999
    plain = make_scheduler("DDIM", SDXL_SCHEDULER)
    plain.set_timesteps(10)
    assert int(plain.timesteps[0]) == 901


@pytest.fixture(scope="module")
def vpred(tmp_path_factory):
    root = tmp_path_factory.mktemp("vpred")
    path = write_tiny_vpred_checkpoint(root / "tiny-vpred.safetensors", seed=11)
    return root, loading.inspect_checkpoint(path)


REQUEST = DrawRequest(prompt="a red fox in the snow", negative_prompt="lowres", seed=7, steps=4, cfg_scale=4.5,
                      width=64, height=64, sampler="Euler")


def test_vpred_stand_in_is_drawn_as_its_file_says(vpred):
    root, ckpt = vpred
    resolved = resolve_base(ckpt)  # the model entry names neither base nor prediction
    assert (resolved.prediction, resolved.ztsnr, resolved.family) == ("v_prediction", True, "sdxl")
    ours = load_spec_pipeline(PipelineSpec(ckpt, None, None, False, resolved.prediction, "cpu", "float32", 0,
                                           root / "cache", 1))
    config_dir = loading.checkpoint_config_dir(ckpt, "sdxl", root / "cache" / "configs")
    plain = loading.load_pipeline(ckpt.path, "sdxl", config_dir)  # no prediction override: the config's epsilon
    assert plain.scheduler.config.prediction_type == "epsilon" and plain.scheduler.config.rescale_betas_zero_snr
    base = {**plain.scheduler.config, "rescale_betas_zero_snr": False}  # each schedule below named explicitly

    def drawn(pipe, config=None) -> np.ndarray:
        return draw_arrays(pipe, "sdxl", [REQUEST], config)[0][0]

    mine = drawn(ours)
    v_ztsnr = drawn(plain, {**base, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True})
    epsilon = drawn(plain, {**base, "prediction_type": "epsilon"})
    v_only = drawn(plain, {**base, "prediction_type": "v_prediction"})
    np.testing.assert_array_equal(mine, v_ztsnr)
    assert np.abs(mine - epsilon).max() > 0.01  # drawn as epsilon, the same file gives another image
    assert np.abs(mine - v_only).max() > 0.01  # and the ztsnr marker changes the schedule


def test_marker_free_sdxl_keeps_epsilon(tmp_path):
    ckpt = loading.inspect_checkpoint(write_tiny_checkpoint(tmp_path / "tiny-sdxl.safetensors", "sdxl", 3))
    resolved = resolve_base(ckpt)
    assert (resolved.base, resolved.prediction, resolved.ztsnr) == ("sdxl", "epsilon", False)
    assert not ckpt.ztsnr


def test_ztsnr_in_key_and_infotext_parses_back():
    request = DrawRequest(prompt="p", negative_prompt="n", seed=3, steps=28, cfg_scale=4.5, width=1024, height=1024,
                          sampler="Euler", clip_skip=2)
    job = ImageJob("general", "p1", 3, "p", "n", (), (), "", request)
    model = ModelIdentity("m", "sdxl", "tiny-vpred", "0" * 64, prediction="v_prediction", base="noobai", ztsnr=True)
    plain = ModelIdentity("m", "sdxl", "tiny-vpred", "0" * 64, prediction="v_prediction", base="noobai")
    prompt, negative, fields = parse_infotext(infotext_for(job, model, "ghostreview-test", lambda p: ""))
    assert (prompt, negative) == ("p", "n")
    assert fields["Noise Schedule"] == "Zero Terminal SNR"
    assert (fields["Steps"], fields["Sampler"], fields["CFG scale"], fields["Size"], fields["Clip skip"]) == (
        "28", "Euler", "4.5", "1024x1024", "2")
    assert "Noise Schedule" not in parse_infotext(infotext_for(job, plain, "ghostreview-test", lambda p: ""))[2]
    runtime = {"torch": torch.__version__}
    assert job_fields(job, model, runtime)["ztsnr"] is True and "ztsnr" not in job_fields(job, plain, runtime)


def test_vpred_stand_in_is_byte_identical(tmp_path):
    a = write_tiny_vpred_checkpoint(tmp_path / "a.safetensors", seed=5)
    b = write_tiny_vpred_checkpoint(tmp_path / "b.safetensors", seed=5)
    assert Path(a).read_bytes() == Path(b).read_bytes()
    header = loading.read_safetensors_header(a)
    assert header["v_pred"]["shape"] == [0] and header["ztsnr"]["shape"] == [0]


def test_noobai_vpred_review_records_base_settings_and_prompts(tmp_path):
    """The generate stage's settings (base read from the file, bases.yaml's v-pred settings, the entry's size and
    steps) reach the draw, every PNG's infotext and manifest row (parsed back) and model.json."""
    import json

    from conftest import small_benchmark, stage_script

    from ghostreview.generation.generate import run_generate
    from ghostreview.generation.infotext import read_png_infotext
    from ghostreview.generation.manifest import read_manifest
    from ghostreview.protocol import load_benchmark

    bench = load_benchmark(small_benchmark(tmp_path / "bench", general=2, styles=1, loras=1))
    path = write_tiny_vpred_checkpoint(tmp_path / "tiny-vpred.safetensors", seed=11)
    params = parse_params({
        "models": {"v": {"checkpoint": str(path), "base": "noobai", "width": 64, "height": 64, "steps": 2}},
        "benchmark": {"images_per_item": {"general": 1, "style": 1, "lora": 1}, "tasks": ["general", "style"]},
        "paths": {"image_store": "store", "cache": "cache"},
        "generation": {"batch_size": 1, "cpu_threads": 1},
    })
    stage = stage_script("generate")
    torch.set_flush_denormal(False)
    settings = stage.settings_for(params, "v", loading.inspect_checkpoint(path), tmp_path, bench)
    run_generate(bench, settings, tmp_path / "out", progress=False)
    rows = read_manifest(tmp_path / "out")
    conv = bench.bases["noobai"]
    assert [r["task"] for r in rows] == ["general", "general", "style"]
    for row in rows:
        prompt, negative, fields = parse_infotext(read_png_infotext(tmp_path / "out" / row["image"]))
        assert prompt == row["prompt"] and prompt.startswith(conv.prompt_prefix + ", ")
        assert negative == row["negative_prompt"] and negative.endswith(conv.negative_prompt)
        assert (fields["Sampler"], fields["Schedule type"], fields["CFG scale"], fields["Steps"]) == (
            "Euler", "Uniform", "4.5", "2")  # Automatic, for Euler, written out
        assert (fields["Size"], fields["Clip skip"], fields["Noise Schedule"]) == ("64x64", "2", "Zero Terminal SNR")
        assert "Hires upscale" not in fields and (row["width"], row["height"]) == ("64", "64")
    model = json.loads((tmp_path / "out" / "model.json").read_text())
    assert (model["base"], model["prediction"], model["ztsnr"]) == ("noobai", "v_prediction", True)
