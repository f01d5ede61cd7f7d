"""AUTOMATIC1111 sampler names mapped to diffusers schedulers.

The mapping follows diffusers' own table of A1111/k-diffusion equivalents ("DPM++ 2M Karras" =
``DPMSolverMultistepScheduler(use_karras_sigmas=True)``, ...). On top of the class, each entry fixes the timestep
spacing A1111 uses, whatever the checkpoint's scheduler config says:

- k-diffusion samplers (Euler, Heun, DPM2, DPM++, LMS) and A1111's UniPC ("time_uniform") space the sampled
  timesteps evenly from 999 down to 0: ``timestep_spacing="linspace"``. (SDXL's shipped config says "leading".)
- DDIM and PLMS run A1111's CompVis samplers, whose "uniform" discretization is ``range(0, 1000, 1000 // steps) + 1``:
  ``timestep_spacing="leading", steps_offset=1``.
Karras variants ignore the spacing: their sigmas come from the model's sigma range.

Known differences to A1111: k-diffusion interpolates log-sigma at fractional timesteps where diffusers interpolates
sigma; diffusers' multistep DPM-Solver and UniPC space "linspace" timesteps as ``linspace(0, 999, n + 1)`` without
its last point (4 steps: 999, 749, 500, 250) where k-diffusion samples 999, 666, 333, 0 (the Karras variants
match); A1111's SDE samplers draw Brownian-tree noise where diffusers draws plain Gaussian noise.
"DPM++ SDE" needs ``torchsde`` and is only registered when it is installed.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ghostreview.util.names import closest

K_DIFFUSION_SPACING = MappingProxyType({"timestep_spacing": "linspace"})
COMPVIS_SPACING = MappingProxyType({"timestep_spacing": "leading", "steps_offset": 1})
KARRAS = MappingProxyType({"use_karras_sigmas": True})
# A1111's UniPC defaults: variant "bh1", order 3, lower-order final steps. Its time grid ends at the smallest
# training sigma (t = 1/1000), not at zero: "sigma_min". (diffusers' bh1 also yields NaN when the last sigma is 0.)
UNIPC_A1111 = MappingProxyType(
    {"solver_type": "bh1", "solver_order": 3, "lower_order_final": True, "final_sigmas_type": "sigma_min"}
)
# Sigma-schedule switches a checkpoint's config may carry; reset unless the sampler name asks for one.
SIGMA_SCHEDULE_SWITCHES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas")


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


def _build_registry(has_torchsde: bool) -> dict[str, SamplerSpec]:
    k = K_DIFFUSION_SPACING
    dpmpp = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    sde = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    registry = {
        "Euler": _spec("EulerDiscreteScheduler", k),
        "Euler Karras": _spec("EulerDiscreteScheduler", k, KARRAS),
        "Euler a": _spec("EulerAncestralDiscreteScheduler", k),
        "Heun": _spec("HeunDiscreteScheduler", k),
        "Heun Karras": _spec("HeunDiscreteScheduler", k, KARRAS),
        "DPM2": _spec("KDPM2DiscreteScheduler", k),
        "DPM2 Karras": _spec("KDPM2DiscreteScheduler", k, KARRAS),
        "DPM2 a": _spec("KDPM2AncestralDiscreteScheduler", k),
        "DPM2 a Karras": _spec("KDPM2AncestralDiscreteScheduler", k, KARRAS),
        "DPM++ 2M": _spec("DPMSolverMultistepScheduler", k, dpmpp),
        "DPM++ 2M Karras": _spec("DPMSolverMultistepScheduler", k, dpmpp, KARRAS),
        "DPM++ 2M SDE": _spec("DPMSolverMultistepScheduler", k, sde),
        "DPM++ 2M SDE Karras": _spec("DPMSolverMultistepScheduler", k, sde, KARRAS),
        "LMS": _spec("LMSDiscreteScheduler", k),
        "LMS Karras": _spec("LMSDiscreteScheduler", k, KARRAS),
        "UniPC": _spec("UniPCMultistepScheduler", k, UNIPC_A1111),
        "DDIM": _spec("DDIMScheduler", COMPVIS_SPACING),
        "PLMS": _spec("PNDMScheduler", COMPVIS_SPACING, {"skip_prk_steps": True}),
    }
    if has_torchsde:  # diffusers' DPMSolverSDEScheduler draws its noise from torchsde's Brownian tree
        registry["DPM++ SDE"] = _spec("DPMSolverSDEScheduler", k)
        registry["DPM++ SDE Karras"] = _spec("DPMSolverSDEScheduler", k, KARRAS)
    return registry


SAMPLERS: dict[str, SamplerSpec] = _build_registry(importlib.util.find_spec("torchsde") is not None)
PREDICTION_TYPES = ("epsilon", "v_prediction")


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """``unknown <kind> 'name'; did you mean ...? Valid: ...`` (the suggestion only when one is close)."""
    close = closest(name, valid, cutoff=0.5)
    hint = f"; did you mean {close!r}?" if close is not None else ""
    return f"unknown {kind} {name!r}{hint} Valid: {', '.join(valid)}"


def make_scheduler(name: str, base_config: Mapping[str, object], prediction_type: str | None = None) -> SchedulerMixin:
    """A fresh diffusers scheduler for the A1111 sampler ``name``.

    Args:
        name: an A1111 sampler name, a key of ``SAMPLERS`` (case-sensitive, e.g. "DPM++ 2M Karras").
        base_config: the checkpoint's scheduler config (``pipe.scheduler.config``): it supplies the noise schedule
            (beta_start, beta_end, beta_schedule, num_train_timesteps, prediction_type, ...). Keys the target class
            does not take are dropped; sigma-schedule switches (``use_karras_sigmas``, ...) are reset so that only
            the sampler name decides them.
        prediction_type: overrides the config's prediction type ("epsilon" or "v_prediction") when given.

    Raises:
        ValueError: unknown sampler name (with the valid names and the closest one) or prediction type.
    """
    if name not in SAMPLERS:
        raise ValueError(unknown_name_message("sampler", name, list(SAMPLERS)))
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")
    spec = SAMPLERS[name]
    cls = getattr(diffusers, spec.scheduler)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(base_config).items() if k in accepted}
    config.update({k: False for k in SIGMA_SCHEDULE_SWITCHES if k in accepted})
    config.update(spec.flags)
    if prediction_type is not None:
        config["prediction_type"] = prediction_type
    return cls.from_config(config)
