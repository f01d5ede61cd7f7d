"""AUTOMATIC1111 sampler names mapped to diffusers schedulers.

The mapping follows diffusers' own table of A1111/k-diffusion equivalents ("DPM++ 2M Karras" =
``DPMSolverMultistepScheduler(use_karras_sigmas=True)``, ...). On top of the class, each entry fixes the timestep
spacing A1111 uses, whatever the checkpoint's scheduler config says:

- k-diffusion samplers (Euler, Heun, DPM2, DPM++, LMS) and A1111's UniPC ("time_uniform") space the sampled
  timesteps evenly from 999 down to 0: ``timestep_spacing="linspace"``. (SDXL's shipped config says "leading".)
- DDIM and PLMS run A1111's CompVis samplers, whose "uniform" discretization is ``range(0, 1000, 1000 // steps) + 1``:
  ``timestep_spacing="leading", steps_offset=1``.
- LCM samples LCM's 50 original timesteps (:class:`A1111LCMScheduler`).

Names are A1111's combined ones (as A1111 wrote them before 1.9): a k-diffusion sampler plus its sigma schedule
("DPM++ 2M Karras", "DPM++ 3M SDE Exponential"); a plain name samples the model's own sigmas (A1111's "Uniform").
``SCHEDULE_FLAGS`` are the schedules diffusers computes as A1111 does (Karras: rho 7 between the model's smallest and
largest sigma; Exponential: log-linear between them; Beta: the Beta(0.6, 0.6) quantiles, A1111's default alpha and
beta), each offered for the samplers whose class takes its switch. A1111's time-step samplers (DDIM, PLMS, UniPC) have
no schedule.

Seeds: the SDE samplers' Brownian-tree noise ("DPM++ SDE") comes from one tree per image seeded with that image's
seed (:func:`make_scheduler`'s ``seeds``), as A1111 seeds it, so that an image never depends on its batch.

Known differences to A1111: k-diffusion interpolates log-sigma at fractional timesteps where diffusers interpolates
sigma; diffusers' multistep DPM-Solver and UniPC space "linspace" timesteps as ``linspace(0, 999, n + 1)`` without
its last point (4 steps: 999, 749, 500, 250) where k-diffusion samples 999, 666, 333, 0 (the Karras variants
match); A1111's multistep SDE samplers (DPM++ 2M SDE, DPM++ 3M SDE) draw Brownian-tree noise where diffusers draws
plain Gaussian noise from each image's generator; A1111 drops the next-to-last sigma for DPM2 and DPM2 a, which
these names do not (DPM++ 3M SDE does: :class:`DiscardNextToLastSigma`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler, EulerDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ghostreview.util.names import closest

K_DIFFUSION_SPACING = MappingProxyType({"timestep_spacing": "linspace"})
COMPVIS_SPACING = MappingProxyType({"timestep_spacing": "leading", "steps_offset": 1})
KARRAS = MappingProxyType({"use_karras_sigmas": True})
# A1111 schedule label -> the switch that makes a diffusers scheduler compute it; "Uniform" is the model's own sigmas.
SCHEDULE_FLAGS: Mapping[str, Mapping[str, object]] = MappingProxyType({
    "Uniform": MappingProxyType({}),
    "Karras": KARRAS,
    "Exponential": MappingProxyType({"use_exponential_sigmas": True}),
    "Beta": MappingProxyType({"use_beta_sigmas": True}),  # diffusers' alpha = beta = 0.6 are A1111's defaults
})
# A1111's UniPC defaults: variant "bh1", order 3, lower-order final steps. Its time grid ends at the smallest
# training sigma (t = 1/1000), not at zero: "sigma_min". (diffusers' bh1 also yields NaN when the last sigma is 0.)
UNIPC_A1111 = MappingProxyType(
    {"solver_type": "bh1", "solver_order": 3, "lower_order_final": True, "final_sigmas_type": "sigma_min"}
)
# Sigma-schedule switches a checkpoint's config may carry; reset unless the sampler name asks for one.
SIGMA_SCHEDULE_SWITCHES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas")


class DiscardNextToLastSigma(DPMSolverMultistepScheduler):
    """DPM-Solver++ on A1111's ``discard_next_to_last_sigma`` schedule (its DPM++ 3M SDE): the schedule of
    ``steps + 1`` sigmas without its next-to-last one (the smallest nonzero sigma), ``steps`` steps in all."""

    def set_timesteps(self, num_inference_steps: int = None, device: str | torch.device = None,  # type: ignore[assignment]
                      mu: float | None = None, timesteps: list[int] | None = None) -> None:
        if num_inference_steps is None or timesteps is not None:
            raise ValueError(f"{type(self).__name__} takes num_inference_steps only")
        super().set_timesteps(num_inference_steps + 1, device=device, mu=mu)
        # sigmas: one per timestep plus the final one; drop the last timestep's (the next-to-last sigma)
        self.sigmas = torch.cat([self.sigmas[:-2], self.sigmas[-1:]])
        self.timesteps = self.timesteps[:-1]
        self.num_inference_steps = len(self.timesteps)  # type: ignore[assignment]  # declared None until set


class A1111LCMScheduler(EulerDiscreteScheduler):
    """A1111's "LCM" sampler: k-diffusion's ``sample_lcm`` on A1111's LCM denoiser.

    The denoiser knows LCM's 50 original timesteps only (19, 39, ..., 999: every 20th of the 1000): their sigmas make
    the schedule (Uniform: timesteps evenly from 999 to 19, sigmas interpolated in log space between the 50; Karras,
    Exponential, Beta: between the smallest and largest of the 50), and the UNet sees each sigma's nearest original
    timestep. Each step takes the consistency-model output ``c_out * x0 + c_skip * x`` (sigma_data 0.5, the timestep
    scaled by 10) and, unless the next sigma is 0, adds fresh noise of that sigma from the image's generator.

    Not diffusers' ``LCMScheduler``, whose timesteps differ (4 steps: 999, 759, 499, 259) and which applies the
    boundary terms in the variance-preserving space.
    """

    ORIGINAL_STEPS = 50
    SIGMA_DATA = 0.5
    TIMESTEP_SCALING = 10.0

    def set_timesteps(self, num_inference_steps: int = None, device: str | torch.device = None,  # type: ignore[assignment]
                      timesteps: list[int] | None = None, sigmas: list[float] | None = None) -> None:
        if num_inference_steps is None or timesteps is not None or sigmas is not None:
            raise ValueError(f"{type(self).__name__} takes num_inference_steps only")
        n = num_inference_steps
        skip = self.config["num_train_timesteps"] // self.ORIGINAL_STEPS
        valid_t = np.arange(self.ORIGINAL_STEPS) * skip + (skip - 1)  # 19, 39, ..., 999
        acp = self.alphas_cumprod.numpy().astype(np.float64)[valid_t]
        log_valid = np.log(((1 - acp) / acp) ** 0.5)
        ends = torch.tensor([np.exp(log_valid[-1]), np.exp(log_valid[0])])  # [sigma_max, sigma_min]
        if self.config["use_karras_sigmas"]:
            schedule = np.asarray(self._convert_to_karras(in_sigmas=ends, num_inference_steps=n), dtype=np.float64)
        elif self.config["use_exponential_sigmas"]:
            schedule = np.asarray(self._convert_to_exponential(in_sigmas=ends, num_inference_steps=n), dtype=np.float64)
        elif self.config["use_beta_sigmas"]:
            schedule = np.asarray(self._convert_to_beta(in_sigmas=ends, num_inference_steps=n), dtype=np.float64)
        else:  # Uniform: the original timesteps 999 .. 19, as fractional indices into the 50
            index = (np.linspace(valid_t[-1], valid_t[0], n) - (skip - 1)) / skip
            low, high = np.floor(index).astype(int), np.ceil(index).astype(int)
            w = index - low
            schedule = np.exp((1 - w) * log_valid[low] + w * log_valid[high])
        nearest = np.abs(np.log(schedule)[:, None] - log_valid[None, :]).argmin(axis=1)
        self.num_inference_steps = n  # type: ignore[assignment]  # declared None until set
        self.timesteps = torch.from_numpy((nearest * skip + (skip - 1)).astype(np.float32)).to(device=device)
        self.sigmas = torch.from_numpy(np.append(schedule, 0.0).astype(np.float32))  # kept on the CPU, as Euler's
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | list[torch.Generator] | None = None,
             return_dict: bool = True) -> EulerDiscreteSchedulerOutput | tuple:
        """One LCM step (Euler's churn arguments are taken for its signature and unused: LCM has no churn)."""
        if self.step_index is None:
            self._init_step_index(timestep)
        i = int(self.step_index)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x = sample.to(torch.float32)
        eps = model_output.to(torch.float32)
        prediction = self.config["prediction_type"]
        if prediction == "epsilon":
            x0 = x - sigma * eps
        elif prediction == "v_prediction":
            x0 = eps * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
        else:
            raise ValueError(f"prediction_type {prediction!r} is not epsilon or v_prediction")
        scaled_t = float(self.timesteps[i]) * self.TIMESTEP_SCALING
        c_skip = self.SIGMA_DATA**2 / (scaled_t**2 + self.SIGMA_DATA**2)
        c_out = scaled_t / (scaled_t**2 + self.SIGMA_DATA**2) ** 0.5
        denoised = c_out * x0 + c_skip * x
        prev = denoised
        if sigma_next > 0:
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            prev = denoised + sigma_next * noise
        self._step_index = i + 1  # type: ignore[assignment]  # declared None until the first step
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return prev, denoised
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)


# Our scheduler classes, by the name a SamplerSpec gives; any other name is a diffusers class.
LOCAL_SCHEDULERS: Mapping[str, type[Any]] = MappingProxyType(
    {cls.__name__: cls for cls in (DiscardNextToLastSigma, A1111LCMScheduler)})
# Schedulers whose noise is a Brownian tree seeded per image (``noise_sampler_seed``: one seed per batch row).
BROWNIAN_SCHEDULERS = ("DPMSolverSDEScheduler",)


@dataclass(frozen=True)
class SamplerSpec:
    """A diffusers scheduler class name plus the config values that make it behave as the A1111 sampler."""

    scheduler: str
    flags: Mapping[str, object] = field(default_factory=dict)


def _spec(scheduler: str, *flag_sets: Mapping[str, object]) -> SamplerSpec:
    merged: dict[str, object] = {}
    for flags in flag_sets:
        merged.update(flags)
    return SamplerSpec(scheduler, MappingProxyType(merged))


def _scheduler_class(name: str) -> type[Any]:
    return LOCAL_SCHEDULERS.get(name) or getattr(diffusers, name)


def _with_schedules(name: str, scheduler: str, flags: Mapping[str, object],
                    schedules: Sequence[str]) -> dict[str, SamplerSpec]:
    """``name`` (Uniform) and ``name <schedule>`` for each of ``schedules`` the class takes the switch of."""
    accepted = set(inspect.signature(_scheduler_class(scheduler).__init__).parameters)
    out = {}
    for schedule in schedules:
        switches = SCHEDULE_FLAGS[schedule]
        if set(switches) <= accepted:
            out[name if schedule == "Uniform" else f"{name} {schedule}"] = _spec(scheduler, flags, switches)
    return out


def _build_registry() -> dict[str, SamplerSpec]:
    k = K_DIFFUSION_SPACING
    every = tuple(SCHEDULE_FLAGS)
    karras_only = ("Uniform", "Karras")  # DPM2, DPM2 a: no more schedules until they drop the next-to-last sigma
    dpmpp = {**k, "algorithm_type": "dpmsolver++", "solver_order": 2}
    sde = {**k, "algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    sde3 = {**k, "algorithm_type": "sde-dpmsolver++", "solver_order": 3}
    k_samplers: list[tuple[str, str, Mapping[str, object], Sequence[str]]] = [
        ("Euler", "EulerDiscreteScheduler", k, every),
        ("Euler a", "EulerAncestralDiscreteScheduler", k, every),  # the class takes no schedule: Uniform only
        ("Heun", "HeunDiscreteScheduler", k, every),
        ("DPM2", "KDPM2DiscreteScheduler", k, karras_only),
        ("DPM2 a", "KDPM2AncestralDiscreteScheduler", k, karras_only),
        ("DPM++ 2M", "DPMSolverMultistepScheduler", dpmpp, every),
        ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", sde, every),
        ("DPM++ 3M SDE", "DiscardNextToLastSigma", sde3, every),
        ("LMS", "LMSDiscreteScheduler", k, every),
    ]
    registry: dict[str, SamplerSpec] = {}
    for name, scheduler, flags, schedules in k_samplers:
        registry |= _with_schedules(name, scheduler, flags, schedules)
    registry |= {
        "UniPC": _spec("UniPCMultistepScheduler", k, UNIPC_A1111),
        "DDIM": _spec("DDIMScheduler", COMPVIS_SPACING),
        "PLMS": _spec("PNDMScheduler", COMPVIS_SPACING, {"skip_prk_steps": True}),
    }
    # diffusers' DPMSolverSDEScheduler draws its noise from torchsde's Brownian tree (torchsde: a dependency)
    registry |= _with_schedules("DPM++ SDE", "DPMSolverSDEScheduler", k, every)
    registry |= _with_schedules("LCM", "A1111LCMScheduler", k, every)
    return registry


SAMPLERS: dict[str, SamplerSpec] = _build_registry()
PREDICTION_TYPES = ("epsilon", "v_prediction")


# A1111 (``rescale_zero_terminal_snr_abar``, 1.8 "Noise schedule for sampling: Zero Terminal SNR", applied on its own
# for checkpoints with a ``ztsnr`` key since PR 16569) and ComfyUI (``rescale_zero_terminal_snr_sigmas``) end the
# rescaled schedule at this alphas_cumprod instead of 0 (a finite sigma_max of about 4519); diffusers' own
# ``rescale_betas_zero_snr`` ends at 2**-24 (sigma_max 4096) and is not used.
ZERO_SNR_TERMINAL_ALPHA_BAR = 4.8973451890853435e-08
ZERO_SNR_KEY = "rescale_betas_zero_snr"  # diffusers' scheduler-config switch: the marker a ztsnr pipeline carries


def zero_terminal_snr_betas(config: Mapping[str, object]) -> list[float]:
    """The betas of ``config``'s noise schedule (beta_start, beta_end, beta_schedule "scaled_linear" or "linear",
    num_train_timesteps) rescaled to zero terminal SNR (Lin et al. 2023, Algorithm 1) as A1111 and ComfyUI rescale
    them: sqrt(alphas_cumprod) shifted so its last value is 0 and scaled so its first is unchanged, the last
    alphas_cumprod then set to ``ZERO_SNR_TERMINAL_ALPHA_BAR``. Computed in float64; one beta per training step."""
    n = int(config.get("num_train_timesteps", 1000))  # type: ignore[call-overload]
    start, end = float(config["beta_start"]), float(config["beta_end"])  # type: ignore[arg-type]
    schedule = config.get("beta_schedule", "scaled_linear")
    if schedule == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    elif schedule == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    else:
        raise ValueError(f"zero terminal SNR needs a linear or scaled_linear beta schedule, got {schedule!r}")
    root = np.sqrt(np.cumprod(1.0 - betas))
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    alpha_bar = root**2
    alpha_bar[-1] = ZERO_SNR_TERMINAL_ALPHA_BAR
    return (1.0 - alpha_bar / np.concatenate([[1.0], alpha_bar[:-1]])).tolist()


def _zero_snr(config: dict[str, object], accepted: set[str]) -> None:
    """Make ``config`` (already filtered to the keys its class takes) draw on the zero-terminal-SNR schedule: the
    rescaled ``trained_betas``; a "leading" time-step grid (DDIM, PLMS), which would never sample the terminal step,
    becomes "trailing" (the paper's fix; the k-diffusion grid, "linspace", already starts at step 999 as A1111's)."""
    config["trained_betas"] = zero_terminal_snr_betas(config)
    if ZERO_SNR_KEY in accepted:
        config[ZERO_SNR_KEY] = False  # the betas above are the rescaled ones; diffusers must not rescale them again
    if config.get("timestep_spacing") == "leading":
        config.update(timestep_spacing="trailing", steps_offset=0)


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """``unknown <kind> 'name'; did you mean ...? Valid: ...`` (the suggestion only when one is close)."""
    close = closest(name, valid, cutoff=0.5)
    hint = f"; did you mean {close!r}?" if close is not None else ""
    return f"unknown {kind} {name!r}{hint} Valid: {', '.join(valid)}"


def make_scheduler(name: str, base_config: Mapping[str, object], prediction_type: str | None = None,
                   seeds: Sequence[int] | None = None) -> SchedulerMixin:
    """A fresh diffusers scheduler for the A1111 sampler ``name``.

    Args:
        name: an A1111 sampler name, a key of ``SAMPLERS`` (case-sensitive, e.g. "DPM++ 2M Karras").
        base_config: the checkpoint's scheduler config (``pipe.scheduler.config``): it supplies the noise schedule
            (beta_start, beta_end, beta_schedule, num_train_timesteps, prediction_type, ...). Keys the target class
            does not take are dropped; sigma-schedule switches (``use_karras_sigmas``, ...) are reset so that only
            the sampler name decides them.
        prediction_type: overrides the config's prediction type ("epsilon" or "v_prediction") when given.
            A ``base_config`` with ``rescale_betas_zero_snr`` true (a zero-terminal-SNR checkpoint's pipeline, see
            ``loading.open_pipeline``) gets A1111's zero-terminal-SNR schedule (:func:`zero_terminal_snr_betas`).
        seeds: the seed of each image of the batch the scheduler will draw, in batch order. A Brownian-tree sampler
            (``BROWNIAN_SCHEDULERS``) grows one tree per image from its seed, as A1111 does, so an image's noise
            never depends on its batch-mates; other samplers take their noise from the pipeline's generators and
            ignore them. Give them whenever the scheduler draws: without, diffusers seeds the trees from torch's
            global generator.

    Raises:
        ValueError: unknown sampler name (with the valid names and the closest one) or prediction type.
    """
    if name not in SAMPLERS:
        raise ValueError(unknown_name_message("sampler", name, list(SAMPLERS)))
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")
    spec = SAMPLERS[name]
    cls = _scheduler_class(spec.scheduler)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(base_config).items() if k in accepted}
    config.update({k: False for k in SIGMA_SCHEDULE_SWITCHES if k in accepted})
    config.update(spec.flags)
    if base_config.get(ZERO_SNR_KEY):
        _zero_snr(config, accepted)
    if prediction_type is not None:
        config["prediction_type"] = prediction_type
    if spec.scheduler in BROWNIAN_SCHEDULERS:
        config["noise_sampler_seed"] = None if seeds is None else [int(s) for s in seeds]
    return cls.from_config(config)


# Flow-matching models (Flux.1, generation/flux.py): the A1111/Forge sampler names that have a diffusers equivalent
# FluxPipeline can drive (it passes the dynamic-shift ``mu`` to ``set_timesteps``, which only FlowMatchEuler takes).
# Forge lists its k-diffusion samplers for Flux too and recommends Euler with the Simple schedule; ComfyUI's flux
# examples use euler/simple. Not here: "Euler a" (diffusers' flow Euler has no ancestral step matching ComfyUI's
# rectified-flow euler_ancestral), Heun (FlowMatchHeun's set_timesteps takes neither mu nor sigmas), the DPM++
# family (DPMSolverMultistep takes mu but not the custom sigmas FluxPipeline passes; checked on diffusers 0.42.1).
FLOW_SAMPLERS = {"Euler": "FlowMatchEulerDiscreteScheduler"}


def check_flow_sampler(name: str) -> None:
    """Raise ``ValueError`` (with the valid names) when ``name`` has no flow-matching sampler here."""
    if name not in FLOW_SAMPLERS:
        raise ValueError(unknown_name_message("sampler for Flux", name, list(FLOW_SAMPLERS)))
