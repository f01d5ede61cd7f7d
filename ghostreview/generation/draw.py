"""The drawing loop: A1111-style txt2img (+ hires fix) on an already-loaded diffusers SD1.5 / SDXL pipeline.

Reproducibility rules:
- One CPU ``torch.Generator`` per image, seeded with the request's seed. The initial latents are drawn from it on
  the CPU in float32, image by image, so an image's noise never depends on its batch-mates, the batch size or the
  device. The samplers' later noise continues from the same generators; the Brownian-tree samplers (DPM++ SDE) grow
  one tree per image from its seed, as A1111 does.
  (A1111 gives image k of a batch seed+k: that is the caller's job.)
- Text is encoded per request (``generation.encode``) and requests are run in sub-batches of equal conditioning
  length, so a long prompt in a batch never pads its neighbours' embeddings.
- Every forward runs at one fixed batch shape (``batch_size`` images, short sub-batches padded with copies that are
  dropped): on the CPU, oneDNN picks kernels by shape, and the same (prompt, seed) drawn in a batch of 1 and of 4
  differed by 1/255 in a few pixels. At a fixed shape the pixels do not depend on the batch-mates.

Hires fix, as A1111 does it:
1. txt2img at the base size, kept as latents;
2. upscale: "Latent" = bilinear interpolation of the latents (A1111's default; the other "Latent (...)" modes are
   in ``LATENT_UPSCALERS``), or "Lanczos" = decode, Lanczos-resize the 8-bit image, let img2img encode it again;
3. img2img at ``denoising_strength`` with a fresh generator per image seeded with the same seed (A1111 re-seeds its
   noise for the second pass). A1111 runs exactly ``Hires steps`` sampling steps (or the base steps when 0) on a
   schedule stretched to ``int(hires_steps / min(strength, 0.999))`` steps (``setup_img2img_steps`` with explicit
   steps); ``hires_schedule`` picks diffusers' ``num_inference_steps`` and ``strength`` to get that schedule.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ghostreview.generation.encode import Conditioning, encode_prompts
from ghostreview.generation.samplers import make_scheduler

# "black": brightest pixel below 2% of full scale (<= 5/255 in 8 bits). Safety-checker and fp16-overflow
# failures give exact zeros; a real dark scene still has highlights well above 2%.
BLACK_MAX = 0.02
# A1111 latent upscaler names -> torch interpolation mode and antialias flag.
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
IMAGE_UPSCALERS = {"Lanczos": Image.Resampling.LANCZOS}
SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class Hires:
    """A1111 hires fix: ``scale`` x the base size, ``steps`` second-pass steps (0 = the base steps)."""

    scale: float
    steps: int
    denoising_strength: float
    upscaler: str = "Latent"


@dataclass(frozen=True)
class DrawRequest:
    """One image to draw. Requests drawn together must share sampler, steps, cfg_scale, size and hires."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    cfg_scale: float
    width: int
    height: int
    sampler: str
    clip_skip: int = 1
    hires: Hires | None = None


def _pipeline_classes(family: str):
    from diffusers import (
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    classes = {"sd15": (StableDiffusionPipeline, StableDiffusionImg2ImgPipeline),
               "sdxl": (StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline)}
    if family not in classes:
        raise ValueError(f"family {family!r} is not one of {tuple(classes)}")
    return classes[family]


# ---------------------------------------------------------------------------------------------------- validation
SHARED_FIELDS = ("sampler", "steps", "cfg_scale", "width", "height", "hires")


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """A1111's hires target size ``(int(width * scale), int(height * scale))``."""
    return int(width * scale), int(height * scale)


def check_requests(requests: Sequence[DrawRequest]) -> DrawRequest:
    """Validate a batch before any model work; returns the first request (it holds the shared settings).

    Raises:
        ValueError: empty batch, differing shared fields (named), sizes not multiples of 8, bad steps/hires values.
    """
    if not requests:
        raise ValueError("draw needs at least one request")
    first = requests[0]
    for i, req in enumerate(requests[1:], start=1):
        diff = [f for f in SHARED_FIELDS if getattr(req, f) != getattr(first, f)]
        if diff:
            raise ValueError(f"request {i} differs from request 0 in {diff}; draw one batch per "
                             "sampler/steps/cfg/size/hires")
    if first.steps < 1:
        raise ValueError(f"steps must be >= 1, got {first.steps}")
    _check_size(first.width, first.height, "size")
    if first.hires is not None:
        _check_hires(first, first.hires)
    return first


def _check_size(width: int, height: int, what: str) -> None:
    if width <= 0 or height <= 0 or width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise ValueError(f"{what} {width}x{height} must be positive multiples of {SIZE_MULTIPLE}")


def _check_hires(req: DrawRequest, hires: Hires) -> None:
    if not 0 < hires.denoising_strength <= 1:
        raise ValueError(f"hires denoising_strength must be in (0, 1], got {hires.denoising_strength}")
    if hires.steps < 0:
        raise ValueError(f"hires steps must be >= 0 (0 = same as base steps), got {hires.steps}")
    if hires.upscaler not in LATENT_UPSCALERS and hires.upscaler not in IMAGE_UPSCALERS:
        raise ValueError(f"hires upscaler {hires.upscaler!r} is not one of {[*LATENT_UPSCALERS, *IMAGE_UPSCALERS]}")
    w, h = hires_size(req.width, req.height, hires.scale)
    _check_size(w, h, f"hires size ({req.width}x{req.height} x {hires.scale})")


def hires_schedule(hires_steps: int, strength: float) -> tuple[int, float]:
    """diffusers img2img ``(num_inference_steps, strength)`` that run A1111's hires pass.

    A1111 samples ``hires_steps`` steps from a schedule of ``total = int(hires_steps / min(strength, 0.999))`` steps,
    starting at index ``total - hires_steps``. diffusers runs ``int(num_inference_steps * strength)`` steps from the
    end of a ``num_inference_steps`` schedule, so ``num_inference_steps = total`` and the strength is nudged to
    ``(hires_steps + 0.5) / total`` (capped at 1) so that the floor lands exactly on ``hires_steps``.
    """
    total = int(hires_steps / min(strength, 0.999))
    return total, min(1.0, (hires_steps + 0.5) / total)


# ---------------------------------------------------------------------------------------------------- pieces
def initial_latents(seeds: Sequence[int], shape: tuple[int, int, int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """[B, C, h, w] float32 CPU noise, image k drawn from its own generator seeded with ``seeds[k]``; returns the
    generators too (the sampler's ancestral noise continues from them)."""
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    latents = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators])
    return latents, generators


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], upscaler: str) -> torch.Tensor:
    """Resize [B, C, h, w] latents to ``size`` = (h2, w2) with the A1111 latent upscaler's interpolation."""
    mode, antialias = LATENT_UPSCALERS[upscaler]
    kwargs = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(latents, size=size, mode=mode, **kwargs)


def to_pil(image: np.ndarray) -> Image.Image:
    """[H, W, 3] float in [0, 1] -> 8-bit RGB (round to nearest, like diffusers' ``numpy_to_pil``)."""
    return Image.fromarray((np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8))


def image_flags(image: np.ndarray) -> list[str]:
    """``["nan"]`` for non-finite pixels, ``["black"]`` when the brightest pixel is below ``BLACK_MAX``, else []."""
    if not np.isfinite(image).all():
        return ["nan"]
    return ["black"] if float(image.max()) < BLACK_MAX else []


def _finite_rows(x: torch.Tensor | np.ndarray) -> list[bool]:
    flat = torch.as_tensor(x).reshape(len(x), -1)
    return torch.isfinite(flat).all(dim=1).tolist()


def _sub_conditioning(conds: Sequence[Conditioning]) -> Conditioning:
    """Stack single-prompt conditionings (all of one sequence length) into a batch."""
    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(c, name) for c in conds])

    def cat_pooled(name: str) -> torch.Tensor | None:  # SDXL only
        return None if getattr(conds[0], name) is None else cat(name)

    return Conditioning(cat("prompt_embeds"), cat("negative_prompt_embeds"), cat_pooled("pooled_prompt_embeds"),
                        cat_pooled("negative_pooled_prompt_embeds"))


def _pipe_like(cls, pipe, sampler: str, scheduler_config: dict, seeds: Sequence[int]):
    """A ``cls`` pipeline sharing ``pipe``'s modules, with a fresh scheduler for ``sampler`` that draws the images of
    ``seeds`` (one per batch row: a Brownian-tree sampler grows each row's noise from its seed).

    Built directly rather than with ``from_pipe``, which casts the shared modules to float32 in place
    (``new_pipeline.to(dtype=...)`` with a float32 default) and would silently change an fp16 caller's pipeline.
    No safety checker and no watermark, as in A1111; the progress-bar setting is carried over.
    """
    params = inspect.signature(cls.__init__).parameters
    parts = {**pipe.components, "scheduler": make_scheduler(sampler, scheduler_config, seeds=seeds),
             "safety_checker": None, "requires_safety_checker": False, "add_watermarker": False}
    new = cls(**{k: v for k, v in parts.items() if k in params})
    new.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return new


# ---------------------------------------------------------------------------------------------------- drawing
def _run_group(pipe, family: str, reqs: Sequence[DrawRequest], cond: Conditioning,
               scheduler_config: dict) -> list[tuple[np.ndarray, list[str]]]:
    """Draw requests whose conditionings share one length; returns (float [H, W, 3] image, flags) per request."""
    first = reqs[0]
    txt2img_cls, img2img_cls = _pipeline_classes(family)
    unet = pipe.unet
    f = pipe.vae_scale_factor
    shape = (unet.config.in_channels, first.height // f, first.width // f)
    latents, generators = initial_latents([r.seed for r in reqs], shape)
    common = dict(guidance_scale=first.cfg_scale, **cond.pipeline_kwargs())
    hires = first.hires
    txt2img = _pipe_like(txt2img_cls, pipe, first.sampler, scheduler_config, [r.seed for r in reqs])
    base_out = "np" if hires is None or hires.upscaler in IMAGE_UPSCALERS else "latent"
    base = txt2img(num_inference_steps=first.steps, width=first.width, height=first.height, generator=generators,
                   latents=latents.to(unet.dtype), output_type=base_out, **common).images
    base_ok = _finite_rows(base)
    if hires is None:
        images = np.asarray(base, dtype=np.float32)
    else:
        images = _hires_pass(pipe, img2img_cls, reqs, hires, base, common, scheduler_config)
    return [(np.zeros_like(img), ["nan"]) if not ok else _flagged(img) for img, ok in zip(images, base_ok, strict=True)]


def _flagged(image: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The image and its flags; a non-finite image is replaced by black (and flagged "nan", never silently)."""
    flags = image_flags(image)
    return (np.zeros_like(image) if "nan" in flags else image), flags


def _hires_pass(pipe, img2img_cls, reqs: Sequence[DrawRequest], hires: Hires, base, common: dict,
                scheduler_config: dict) -> np.ndarray:
    """Upscale the base pass (latents, or [B, H, W, 3] images for image-space upscalers) and run img2img."""
    first = reqs[0]
    w2, h2 = hires_size(first.width, first.height, hires.scale)
    if hires.upscaler in LATENT_UPSCALERS:
        f = pipe.vae_scale_factor
        init: torch.Tensor | list = upscale_latents(base, (h2 // f, w2 // f), hires.upscaler)
    else:
        init = [to_pil(np.nan_to_num(img)).resize((w2, h2), IMAGE_UPSCALERS[hires.upscaler]) for img in base]
    total, strength = hires_schedule(hires.steps or first.steps, hires.denoising_strength)
    img2img = _pipe_like(img2img_cls, pipe, first.sampler, scheduler_config, [r.seed for r in reqs])
    generators = [torch.Generator("cpu").manual_seed(int(r.seed)) for r in reqs]
    out = img2img(image=init, strength=strength, num_inference_steps=total, generator=generators,
                  output_type="np", **common).images
    return np.asarray(out, dtype=np.float32)


def draw_arrays(pipe, family: str, requests: Sequence[DrawRequest], base_scheduler_config: dict | None = None,
                batch_size: int | None = None) -> list[tuple[np.ndarray, list[str]]]:
    """Like ``draw`` but returns float32 [H, W, 3] arrays in [0, 1] (before 8-bit rounding)."""
    first = check_requests(requests)
    _pipeline_classes(family)  # unknown family -> ValueError before any model work
    batch_size = batch_size or len(requests)
    scheduler_config = dict(base_scheduler_config if base_scheduler_config is not None else pipe.scheduler.config)
    make_scheduler(first.sampler, scheduler_config)  # unknown sampler -> ValueError before any model work
    conds = [encode_prompts(pipe, family, [r.prompt], [r.negative_prompt], r.clip_skip) for r in requests]
    groups: dict[int, list[int]] = {}
    for i, cond in enumerate(conds):
        groups.setdefault(cond.prompt_embeds.shape[1], []).append(i)
    results: list[tuple[np.ndarray, list[str]] | None] = [None] * len(requests)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            full = chunk + [chunk[0]] * (batch_size - len(chunk))  # padding rows: drawn, then dropped
            drawn = _run_group(pipe, family, [requests[i] for i in full], _sub_conditioning([conds[i] for i in full]),
                               scheduler_config)
            for i, res in zip(chunk, drawn):
                results[i] = res
    return results  # type: ignore[return-value]


def draw(pipe, family: str, requests: Sequence[DrawRequest], base_scheduler_config: dict | None = None,
         batch_size: int | None = None) -> list[tuple[Image.Image, list[str]]]:
    """Draw one batch of requests on a loaded pipeline; returns (8-bit RGB image, flags) per request, in order.

    Args:
        pipe: a diffusers ``StableDiffusionPipeline`` ("sd15") or ``StableDiffusionXLPipeline`` ("sdxl") with its
            LoRAs already applied; it is not modified (samplers run on new pipeline objects sharing its modules).
        family: "sd15" or "sdxl".
        requests: images sharing sampler, steps, cfg_scale, width, height and hires (prompts, seeds and clip skip
            may differ).
        base_scheduler_config: the noise-schedule config samplers are built from; default ``pipe.scheduler.config``.
        batch_size: images per forward (default: ``len(requests)``). Every forward holds exactly this many images,
            padded with copies that are drawn and dropped, so an image's pixels depend on ``batch_size`` (part of
            its store key) but never on its batch-mates or on how many requests share the call.

    Flags per image: "nan" (non-finite latents or pixels; the image is replaced by black), "black" (see
    ``BLACK_MAX``).

    Raises:
        ValueError: inconsistent or invalid requests, unknown sampler, before any model work.
    """
    drawn = draw_arrays(pipe, family, requests, base_scheduler_config, batch_size)
    return [(to_pil(img), flags) for img, flags in drawn]
