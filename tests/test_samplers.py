"""A1111 sampler names -> diffusers schedulers, checked against schedules computed here from their definitions."""

import importlib.util
import inspect
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from ghostreview.generation.infotext import split_schedule
from ghostreview.generation.plan import SCHEDULE_TYPES, SamplerChoiceError, sampler_name
from ghostreview.generation.samplers import SAMPLERS, SCHEDULE_FLAGS, make_scheduler

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
    "DPM++ 3M SDE": "DiscardNextToLastSigma",  # DPMSolverMultistepScheduler without the next-to-last sigma
    "LCM": "A1111LCMScheduler",  # k-diffusion's sample_lcm on Euler's sigmas
}
SCHEDULE_SWITCH = {"Karras": "use_karras_sigmas", "Exponential": "use_exponential_sigmas", "Beta": "use_beta_sigmas"}
# The samplers registered before schedule types, with their exact flags: their images are in users' stores, so the
# classes and flags that draw them must not change (tests/test_dvc_deps.py pins the code; this pins the table).
BEFORE = {
    "Euler": ("EulerDiscreteScheduler", {}), "Euler Karras": ("EulerDiscreteScheduler", "K"),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}), "Heun": ("HeunDiscreteScheduler", {}),
    "Heun Karras": ("HeunDiscreteScheduler", "K"), "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", "K"), "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", "K"),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                        "use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                                            "use_karras_sigmas": True}),
    "LMS": ("LMSDiscreteScheduler", {}), "LMS Karras": ("LMSDiscreteScheduler", "K"),
    "UniPC": ("UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3, "lower_order_final": True,
                                          "final_sigmas_type": "sigma_min"}),
    "DDIM": ("DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 1}),
    "PLMS": ("PNDMScheduler", {"timestep_spacing": "leading", "steps_offset": 1, "skip_prk_steps": True}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}), "DPM++ SDE Karras": ("DPMSolverSDEScheduler", "K"),
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
                "Euler Karras", "DPM++ SDE", "DPM++ SDE Karras", "DPM++ 3M SDE", "DPM++ 3M SDE Karras",
                "DPM++ 3M SDE Exponential", "DPM++ 2M SDE Exponential", "LCM"}
    assert required <= set(SAMPLERS)
    assert importlib.util.find_spec("torchsde") is not None  # a dependency: the DPM++ SDE samplers need it


def test_the_samplers_registered_before_schedule_types_keep_their_class_and_flags():
    linspace = {"timestep_spacing": "linspace"}  # every k-diffusion sampler's and UniPC's
    for name, (cls, flags) in BEFORE.items():
        if flags == "K":
            flags = {"use_karras_sigmas": True}
        expected = flags if "timestep_spacing" in flags else {**linspace, **flags}
        assert (SAMPLERS[name].scheduler, dict(SAMPLERS[name].flags)) == (cls, expected), name


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_builds_with_its_flags_and_samples(name):
    sched = make_scheduler(name, SD15_SCHEDULER, seeds=[0])
    base_name, schedule = split_schedule(name)
    assert type(sched).__name__ == EXPECTED_CLASS[base_name]
    config = sched.config
    assert config.beta_schedule == "scaled_linear" and config.beta_end == 0.012
    for label, switch in SCHEDULE_SWITCH.items():
        assert config.get(switch, False) == (schedule == label), (name, switch)
    expected_spacing = "leading" if name in ("DDIM", "PLMS") else "linspace"
    assert config.timestep_spacing == expected_spacing
    if name.startswith(("DPM++ 2M", "DPM++ 3M")):
        assert config.algorithm_type == ("sde-dpmsolver++" if "SDE" in name else "dpmsolver++")
        assert config.solver_order == (3 if "3M" in name else 2)
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


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """k-diffusion's get_sigmas_exponential: log-linear from sigma_max to sigma_min, plus the final zero."""
    return np.append(np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), n)), 0.0)


def beta_sigmas(n: int, sigma_min: float, sigma_max: float, a: float = 0.6, b: float = 0.6) -> np.ndarray:
    """A1111's Beta schedule (sd_schedulers.beta_scheduler with its default alpha = beta = 0.6)."""
    from scipy import stats

    return np.append(sigma_min + stats.beta.ppf(1 - np.linspace(0, 1, n), a, b) * (sigma_max - sigma_min), 0.0)


@pytest.mark.parametrize("name", ["Euler Exponential", "DPM++ 2M Exponential", "DPM++ 2M SDE Exponential",
                                  "DPM++ SDE Exponential", "Heun Exponential", "LMS Exponential"])
def test_exponential_sigmas_match_k_diffusion(name):
    n = 6
    sched = make_scheduler(name, SD15_SCHEDULER, seeds=[0])
    sched.set_timesteps(n)
    s = train_sigmas()
    sigmas = sched.sigmas.numpy()
    if "Heun" in name or "DPM++ SDE" in name:  # second-order classes list each inner sigma twice
        sigmas = np.append(sigmas[:1], sigmas[1::2])
    np.testing.assert_allclose(sigmas, exponential_sigmas(n, s[0], s[-1]), rtol=1e-4)


@pytest.mark.parametrize("name", ["Euler Beta", "DPM++ 2M Beta"])
def test_beta_sigmas_match_a1111(name):
    n = 7
    sched = make_scheduler(name, SD15_SCHEDULER)
    sched.set_timesteps(n)
    s = train_sigmas()
    np.testing.assert_allclose(sched.sigmas.numpy(), beta_sigmas(n, s[0], s[-1]), rtol=1e-4)


@pytest.mark.parametrize("schedule", ["Karras", "Exponential"])
@pytest.mark.parametrize("n", [3, 8])
def test_dpmpp_3m_sde_drops_the_next_to_last_sigma_as_a1111_does(schedule, n):
    """A1111's DPM++ 3M SDE (discard_next_to_last_sigma): the schedule of n + 1 sigmas without its smallest nonzero
    one, so n steps end with a jump from the (n)th sigma to zero."""
    sched = make_scheduler(f"DPM++ 3M SDE {schedule}", SD15_SCHEDULER)
    sched.set_timesteps(n)
    s = train_sigmas()
    full = (karras_sigmas if schedule == "Karras" else exponential_sigmas)(n + 1, s[0], s[-1])
    np.testing.assert_allclose(sched.sigmas.numpy(), np.append(full[:-2], 0.0), rtol=1e-4)
    assert len(sched.timesteps) == n == sched.num_inference_steps
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    gens = [torch.Generator().manual_seed(i) for i in (1, 2)]
    for t in sched.timesteps:
        x = sched.step(0.5 * sched.scale_model_input(x, t), t, x, generator=gens).prev_sample
    assert torch.isfinite(x).all()


def lcm_sigmas() -> np.ndarray:
    """The sigmas of LCM's 50 original timesteps 19, 39, ..., 999 (A1111's LCM denoiser), smallest first."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    acp = np.cumprod(1.0 - betas)[19::20]
    return np.sqrt((1 - acp) / acp)


@pytest.mark.parametrize("schedule", ["Uniform", "Karras"])
def test_lcm_samples_lcms_original_timesteps_as_a1111(schedule):
    n = 4
    sched = make_scheduler("LCM" if schedule == "Uniform" else "LCM Karras", SD15_SCHEDULER)
    sched.set_timesteps(n)
    valid = lcm_sigmas()
    if schedule == "Uniform":  # timesteps evenly from 999 to 19, log-sigma interpolated between the 50
        expected = np.append(np.exp(np.interp(np.linspace(49, 0, n), np.arange(50), np.log(valid))), 0.0)
    else:
        expected = karras_sigmas(n, valid[0], valid[-1])
    np.testing.assert_allclose(sched.sigmas.numpy(), expected, rtol=1e-4)
    nearest = np.abs(np.log(expected[:-1])[:, None] - np.log(valid)[None, :]).argmin(axis=1)
    assert sched.timesteps.tolist() == (nearest * 20 + 19).tolist()  # the UNet sees the nearest original timestep
    assert sched.timesteps[0] == 999 and sched.timesteps[-1] == 19
    if schedule == "Uniform":
        assert sched.timesteps.tolist() != [999, 759, 499, 259]  # diffusers' LCMScheduler grid for 4 steps


def test_lcm_steps_to_the_consistency_output_and_adds_the_next_sigmas_noise():
    """k-diffusion's sample_lcm on A1111's LCM denoiser: x <- c_out * x0 + c_skip * x (sigma_data 0.5, timestep x 10),
    then + sigma_{i+1} * noise from the image's generator unless sigma_{i+1} is 0."""
    n = 4
    sched = make_scheduler("LCM", SD15_SCHEDULER)
    sched.set_timesteps(n)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    assert float(sched.init_noise_sigma) == pytest.approx(lcm_sigmas()[-1], rel=1e-5)
    gen, mirror = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for i, step in enumerate(sched.timesteps):
        eps = 0.3 * sched.scale_model_input(x, step) + 0.1
        sigma, sigma_next, ts = float(sched.sigmas[i]), float(sched.sigmas[i + 1]), float(step) * 10
        c_skip, c_out = 0.25 / (ts**2 + 0.25), ts / (ts**2 + 0.25) ** 0.5
        denoised = c_out * (x - sigma * eps) + c_skip * x
        expected = denoised + sigma_next * torch.randn(x.shape, generator=mirror) if sigma_next > 0 else denoised
        x = sched.step(eps, step, x, generator=gen).prev_sample
        torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-6)


def test_brownian_samplers_take_one_seed_per_image_and_others_ignore_them():
    assert make_scheduler("DPM++ SDE Karras", SD15_SCHEDULER, seeds=[7, 8]).config.noise_sampler_seed == [7, 8]
    assert "noise_sampler_seed" not in make_scheduler("DPM++ 2M SDE", SD15_SCHEDULER, seeds=[7, 8]).config


@pytest.mark.parametrize("sampler,schedule,drawn", [
    ("DPM++ 2M", "Karras", "DPM++ 2M Karras"),  # A1111 1.9's split form: the same name, so the same image keys
    ("DPM++ 2M Karras", None, "DPM++ 2M Karras"),  # the combined form, as before schedule types
    ("DPM++ 2M Karras", "Karras", "DPM++ 2M Karras"),
    ("DPM++ 2M Karras", "Automatic", "DPM++ 2M Karras"),  # a schedule in the name wins over Automatic (A1111)
    ("DPM++ 2M", None, "DPM++ 2M"),  # a plain name without a schedule type: Uniform, as before
    ("DPM++ 2M", "Uniform", "DPM++ 2M"),
    ("DPM++ 2M", "Automatic", "DPM++ 2M Karras"),  # A1111 1.9's defaults
    ("DPM++ 2M SDE", "Automatic", "DPM++ 2M SDE Exponential"),
    ("DPM++ 3M SDE", "Automatic", "DPM++ 3M SDE Exponential"),
    ("DPM++ SDE", "Automatic", "DPM++ SDE Karras"),
    ("DPM2 a", "Automatic", "DPM2 a Karras"),
    ("Euler a", "Automatic", "Euler a"),
    ("LCM", "Automatic", "LCM"),
    ("DDIM", "Automatic", "DDIM"),
    ("Euler", "Beta", "Euler Beta"),
])
def test_a_schedule_type_folds_into_the_sampler_name(sampler, schedule, drawn):
    assert sampler_name(sampler, schedule) == drawn


@pytest.mark.parametrize("sampler,schedule,key,words", [
    ("DPM++ 2M", "Karas", "schedule_type", ["did you mean 'Karras'?", "Valid: Automatic, Uniform, Karras"]),
    ("DPM++ 2M", "SGM Uniform", "schedule_type", ["not drawn here", "Valid: Automatic"]),
    ("DPM++ 2M Karras", "Exponential", "schedule_type", ["contradicts", "write sampler 'DPM++ 2M' with schedule "
                                                         "type 'Exponential'"]),
    ("DDIM", "Karras", "schedule_type", ["time-step samplers", "'Automatic'"]),
    ("Euler a", "Karras", "schedule_type", ["not available for 'Euler a'", "valid for it: Automatic, Uniform"]),
    ("DPM++ 2M Karas", "Karras", "sampler", ["did you mean 'DPM++ 2M Karras'?", "Valid: Euler"]),
])
def test_a_bad_schedule_type_names_the_setting_and_lists_the_valid_ones(sampler, schedule, key, words):
    with pytest.raises(SamplerChoiceError) as err:
        sampler_name(sampler, schedule)
    assert err.value.key == key
    for word in words:
        assert word in str(err.value)


def test_every_schedule_type_is_offered_for_some_sampler_and_every_sampler_is_reachable():
    reached = {sampler_name(split_schedule(name)[0], schedule) for name in SAMPLERS for schedule in SCHEDULE_TYPES
               if _folds(split_schedule(name)[0], schedule)}
    assert reached == set(SAMPLERS)
    assert set(SCHEDULE_TYPES) == {"Automatic", *SCHEDULE_FLAGS}


def _folds(sampler: str, schedule: str) -> bool:
    try:
        sampler_name(sampler, schedule)
    except SamplerChoiceError:
        return False
    return True
