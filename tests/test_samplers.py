"""A1111 sampler names -> diffusers schedulers, checked against schedules computed here from their definitions."""

import importlib.util
import inspect
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from ghostreview.generation.samplers import SAMPLERS, make_scheduler

# SD1.5's shipped scheduler config (PNDM), the base every sampler is built from.
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}

EXPECTED_CLASS = {
    "Euler": "EulerDiscreteScheduler",
    "Euler a": "EulerAncestralDiscreteScheduler",
    "Heun": "HeunDiscreteScheduler",
    "DPM2": "KDPM2DiscreteScheduler",
    "DPM2 a": "KDPM2AncestralDiscreteScheduler",
    "DPM++ 2M": "DPMSolverMultistepScheduler",
    "DPM++ 2M SDE": "DPMSolverMultistepScheduler",
    "LMS": "LMSDiscreteScheduler",
    "UniPC": "UniPCMultistepScheduler",
    "DDIM": "DDIMScheduler",
    "PLMS": "PNDMScheduler",
    "DPM++ SDE": "DPMSolverSDEScheduler",
}


def train_sigmas() -> np.ndarray:
    """SD's 1000 training sigmas from the scaled-linear beta schedule (LDM definition)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5, plus the final zero (k-diffusion's get_sigmas_karras)."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return np.append((hi + ramp * (lo - hi)) ** rho, 0.0)


def test_registry_has_the_a1111_names():
    required = {"Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE",
                "DPM++ 2M SDE Karras", "DDIM", "PLMS", "UniPC", "LMS", "LMS Karras", "DPM2 Karras", "DPM2 a Karras",
                "Euler Karras"}
    assert required <= set(SAMPLERS)
    assert ("DPM++ SDE" in SAMPLERS) == (importlib.util.find_spec("torchsde") is not None)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_builds_with_its_flags_and_samples(name):
    sched = make_scheduler(name, SD15_SCHEDULER)
    base_name = name.removesuffix(" Karras")
    assert type(sched).__name__ == EXPECTED_CLASS[base_name]
    config = sched.config
    assert config.beta_schedule == "scaled_linear" and config.beta_end == 0.012
    if "use_karras_sigmas" in config:
        assert config.use_karras_sigmas == name.endswith("Karras")
    else:
        assert not name.endswith("Karras")
    expected_spacing = "leading" if name in ("DDIM", "PLMS") else "linspace"
    assert config.timestep_spacing == expected_spacing
    if name.startswith("DPM++ 2M"):
        assert config.algorithm_type == ("sde-dpmsolver++" if "SDE" in name else "dpmsolver++")
        assert config.solver_order == 2
    if name == "PLMS":
        assert config.skip_prk_steps is True
    if name == "UniPC":
        assert (config.solver_type, config.solver_order, config.final_sigmas_type) == ("bh1", 3, "sigma_min")
    # a short denoising loop with a stand-in model runs and stays finite
    sched.set_timesteps(3)
    gen = torch.Generator().manual_seed(0)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    x = torch.randn(1, 4, 4, 4, generator=gen) * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = 0.5 * sched.scale_model_input(x, t)
        x = sched.step(eps, t, x, **({"generator": gen} if takes_generator else {})).prev_sample
    assert torch.isfinite(x).all()


def test_euler_follows_k_diffusion_discrete_schedule():
    n = 4
    sched = make_scheduler("Euler", SD15_SCHEDULER)
    sched.set_timesteps(n)
    t = np.linspace(999, 0, n)  # k-diffusion: t = linspace(t_max, 0, n); here all integers
    np.testing.assert_allclose(sched.timesteps.numpy(), t)
    np.testing.assert_allclose(sched.sigmas.numpy(), np.append(train_sigmas()[t.astype(int)], 0.0), rtol=1e-4)


@pytest.mark.parametrize("name", ["DPM++ 2M Karras", "Euler Karras", "LMS Karras"])
def test_karras_sigmas_match_the_formula(name):
    n = 6
    sched = make_scheduler(name, SD15_SCHEDULER)
    sched.set_timesteps(n)
    s = train_sigmas()
    np.testing.assert_allclose(sched.sigmas.numpy(), karras_sigmas(n, s[0], s[-1]), rtol=1e-4)


@pytest.mark.parametrize("n", [4, 20, 25])  # divisors of 1000 (otherwise CompVis runs one step more than asked)
def test_ddim_uses_a1111_uniform_discretization(n):
    sched = make_scheduler("DDIM", SD15_SCHEDULER)
    sched.set_timesteps(n)
    expected = [t + 1 for t in range(0, 1000, 1000 // n)][::-1]  # CompVis "uniform": range(0, 1000, c) + 1
    assert sched.timesteps.tolist() == expected


def test_checkpoint_config_cannot_switch_sampler_flags():
    cfg = {**SD15_SCHEDULER, "use_karras_sigmas": True, "timestep_spacing": "trailing", "algorithm_type": "dpmsolver"}
    assert make_scheduler("Euler", cfg).config.use_karras_sigmas is False
    assert make_scheduler("Euler", cfg).config.timestep_spacing == "linspace"
    assert make_scheduler("DPM++ 2M", cfg).config.algorithm_type == "dpmsolver++"


def test_prediction_type():
    assert make_scheduler("Euler", SD15_SCHEDULER).config.prediction_type == "epsilon"
    v = make_scheduler("DPM++ 2M Karras", SD15_SCHEDULER, prediction_type="v_prediction")
    assert v.config.prediction_type == "v_prediction"
    vcfg = {**SD15_SCHEDULER, "prediction_type": "v_prediction"}
    assert make_scheduler("DDIM", vcfg).config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type"):
        make_scheduler("Euler", SD15_SCHEDULER, prediction_type="v")


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(ValueError) as err:
        make_scheduler("DPM++ 2M karas", SD15_SCHEDULER)
    msg = str(err.value)
    assert "did you mean 'DPM++ 2M Karras'" in msg
    assert "Euler a" in msg and "PLMS" in msg
    with pytest.raises(ValueError, match="Valid: "):
        make_scheduler("zzz", SD15_SCHEDULER)


def test_schedulers_are_fresh_objects():
    a, b = make_scheduler("DPM++ 2M", SD15_SCHEDULER), make_scheduler("DPM++ 2M", SD15_SCHEDULER)
    assert a is not b
