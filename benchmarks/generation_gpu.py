"""Generation throughput: the plain diffusers call at batch 1 against this project's generate path, on a GPU.

Models: full-size SD1.5 and SDXL-base architectures built from the shipped configs
(``ghostreview/generation/configs/sd15``, ``sdxl``) with diffusers/transformers ``from_config`` and seeded random
weights (a forward pass costs the same as with real weights). Weights are re-initialised at unit activation scale (the
rule of ``ghostreview.kit.sd.random_tensor``: N(0, 1/fan_in) matrices, 1 + N(0, 0.1) gains, N(0, 0.1) biases) so half
precision neither overflows nor underflows more than a real checkpoint would.

- naive: ``pipe(prompt, negative_prompt, ...)`` once per image (batch 1), float32 as loaded, DPM++ 2M Karras,
  25 steps, CFG 7 (diffusers' default attention processor, which already uses SDPA).
- project: ``ghostreview.generation.draw.draw`` (A1111 encoding, one CPU generator per image) in batches of 4 on a copy
  of the pipeline passed through :func:`optimize_pipeline` (float16, explicit SDPA, channels_last, fused QKV, optionally
  torch.compile). Images are compared with the naive ones (same prompts and seeds): the options must keep the
  mean absolute pixel difference within ``TOLERANCE_MEAN_ABS``.
- MFU: FLOPs of one UNet call at the CFG batch (2 per image) and of one VAE decode, counted with
  ``torch.utils.flop_counter.FlopCounterMode``; achieved FLOP/s = FLOPs per image x images/s, MFU = that / the
  H100's peak dense BF16/FP16 tensor rate (``H100_PEAK_FLOPS``). Text encoders and the scheduler are not counted
  (they are in the time), so the MFU is slightly understated.
- v1 protocol: SD1.5 with the hires fix of ``examples/params.full-v1.yaml`` (512 px, 25 steps, x2 to 1024 px,
  10 hires steps, denoising 0.5, Latent upscaler), project path, seconds per image x 1,568 images per checkpoint.
  LoRA loading between LoRA items is not included.

On a CPU (no GPU here), or with ``--quick``, the same code runs on the tiny kit models (``ghostreview.kit.sd.
tiny_pipeline``) at 64 px, float32, 1 thread: it exercises the path, its figures say nothing about a GPU; it also
prints the full-size models' FLOPs per image counted on the meta device (:func:`full_size_flops`). The GPU command:
``python -m benchmarks.generation_gpu --device cuda`` (add ``--compile`` for torch.compile, ``--family sd15`` to
run one family).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.common import header, interleaved, row, timed

NAME = "generation_gpu"
ROOT = Path(__file__).resolve().parents[1]
# NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16/FP16 tensor core 1,979 TFLOPS *with sparsity*; dense is half,
# 989.4 TFLOP/s (the H100 PCIe card: 756 TFLOP/s dense). This machine's H100 is assumed to be the SXM part.
H100_PEAK_FLOPS = 989e12
V1_PARAMS = ROOT / "examples" / "params.full-v1.yaml"
V1_IMAGES_PER_CHECKPOINT = 1568
SAMPLER = "DPM++ 2M Karras"
STEPS, CFG, BATCH = 25, 7.0, 4
TOLERANCE_MEAN_ABS = 0.02  # mean |pixel difference| on [0, 1] allowed between the optimized and the plain path
PROMPTS = ("a lighthouse on a cliff at dusk, dramatic clouds, oil painting",
           "portrait of an old fisherman, detailed wrinkles, soft window light",
           "a bowl of ramen on a wooden table, steam, shallow depth of field",
           "isometric fantasy castle on a floating island, vivid colors")
NEGATIVE = "lowres, blurry, watermark"


@dataclass(frozen=True)
class Case:
    """One timed comparison: a family at a size, ``n`` images per path per repeat."""

    family: str
    size: int
    n: int
    repeats: int


# ---------------------------------------------------------------------------------------------------- models
def reinit_(module: torch.nn.Module, seed: int) -> None:
    """Seeded unit-scale random weights, in place, on the module's device (kit.sd.random_tensor's rule)."""
    device = next(module.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32)
            if p.ndim >= 2:
                value = noise / math.sqrt(math.prod(p.shape[1:]))
            elif name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            else:
                value = 0.1 * noise
            p.copy_(value)


def full_pipeline(family: str, device: str, seed: int = 0):
    """Full-size ``family`` pipeline from the shipped configs, random weights, float32 on ``device``."""
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from ghostreview.kit.sd import TEXT_ENCODERS, real_configs, write_config_dir

    configs = real_configs(family)
    parts = {}
    with torch.device(device):
        parts["unet"] = UNet2DConditionModel.from_config(configs["unet"])
        parts["vae"] = AutoencoderKL.from_config(configs["vae"])
        for name in TEXT_ENCODERS[family]:
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            parts[name] = cls(CLIPTextConfig(**configs[name]))
    for i, name in enumerate(sorted(parts)):
        reinit_(parts[name], seed * 100 + i)
        parts[name].eval()
    with tempfile.TemporaryDirectory(prefix="gr-bench-cfg-") as tmp:
        write_config_dir(Path(tmp), configs, family)  # tokenizers from open_clip's shipped BPE, no hub
        for name in ("tokenizer", "tokenizer_2")[: len(TEXT_ENCODERS[family])]:
            parts[name] = CLIPTokenizer.from_pretrained(Path(tmp) / name)
    sched = configs["scheduler"]
    parts["scheduler"] = getattr(diffusers, sched["_class_name"]).from_config(sched)
    if family == "sdxl":
        return StableDiffusionXLPipeline(**parts, force_zeros_for_empty_prompt=True, add_watermarker=False)
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_pipeline(family: str, device: str, tiny: bool, seed: int = 0):
    """The plain pipeline: float32, DPM++ 2M Karras, no progress bar."""
    from ghostreview.generation.samplers import make_scheduler
    from ghostreview.kit.sd import tiny_pipeline

    pipe = tiny_pipeline(family, seed).to(device) if tiny else full_pipeline(family, device, seed)
    pipe.scheduler = make_scheduler(SAMPLER, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def optimize_pipeline(pipe, *, dtype: torch.dtype = torch.float16, sdpa: bool = True, channels_last: bool = True,
                      fuse_qkv: bool = True, compile: bool = False):
    """Speed options for inference, applied in place; returns ``pipe``.

    dtype: weights' dtype (float16 on GPUs; an SDXL VAE with ``force_upcast`` still decodes in float32).
    sdpa: torch's scaled_dot_product_attention processor (diffusers' default with torch 2; set explicitly).
    channels_last: NHWC memory format for the UNet and VAE convolutions (faster cuDNN kernels).
    fuse_qkv: one projection for q, k, v (self-attention) and k, v (cross-attention); diffusers' fused processor.
    compile: ``torch.compile`` the UNet (first calls compile: warm up before timing).
    None of these changes the maths: images stay within rounding of the float32 pipeline (checked by the benchmark).
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    if pipe.unet.dtype != dtype:
        pipe.to(dtype=dtype)
    if sdpa:
        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.vae.set_attn_processor(AttnProcessor2_0())
    if fuse_qkv:
        pipe.fuse_qkv_projections()
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        pipe.unet = torch.compile(pipe.unet, fullgraph=True)
    return pipe


# ---------------------------------------------------------------------------------------------------- paths
def prompts_seeds(n: int) -> tuple[list[str], list[int]]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(n)], [1000000 + i for i in range(n)]


def naive_images(pipe, n: int, size: int) -> list[np.ndarray]:
    """One plain pipeline call per image; float [H, W, 3] in [0, 1]."""
    prompts, seeds = prompts_seeds(n)
    out = []
    for prompt, seed in zip(prompts, seeds):
        img = pipe(prompt=prompt, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG,
                   width=size, height=size, generator=torch.Generator("cpu").manual_seed(seed),
                   output_type="np").images[0]
        out.append(np.asarray(img, dtype=np.float32))
    return out


def project_images(pipe, family: str, n: int, size: int, hires=None) -> list[np.ndarray]:
    """``ghostreview.generation.draw.draw_arrays`` in batches of ``BATCH``; float [H, W, 3] in [0, 1]."""
    from ghostreview.generation.draw import DrawRequest, draw_arrays

    prompts, seeds = prompts_seeds(n)
    reqs = [DrawRequest(prompt=p, negative_prompt=NEGATIVE, seed=s, steps=STEPS, cfg_scale=CFG, width=size,
                        height=size, sampler=SAMPLER, hires=hires) for p, s in zip(prompts, seeds)]
    out = []
    for start in range(0, n, BATCH):
        out += [img for img, _ in draw_arrays(pipe, family, reqs[start:start + BATCH])]
    return out


# ---------------------------------------------------------------------------------------------------- FLOPs
def _count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _classic_attention(module):
    """Context: explicit-matmul attention while counting off the GPU (the CPU SDPA kernels have no flop formula)."""
    import contextlib

    from diffusers.models.attention_processor import AttnProcessor

    @contextlib.contextmanager
    def swap():
        saved = module.attn_processors
        if next(module.parameters()).device.type != "cuda":
            module.set_attn_processor(AttnProcessor())
        try:
            yield
        finally:
            module.set_attn_processor(saved)

    return swap()


def unet_flops(pipe, family: str, size: int, batch: int = 2) -> int:
    """FLOPs of one UNet call on a CFG batch (2 rows per image) at ``size`` px (plain, unfused pipeline)."""
    unet = pipe.unet
    dev, dt = unet.device, unet.dtype
    f = pipe.vae_scale_factor
    x = torch.randn(batch, unet.config.in_channels, size // f, size // f, device=dev, dtype=dt)
    t = torch.full((batch,), 500, device=dev)
    enc = torch.randn(batch, 77, unet.config.cross_attention_dim, device=dev, dtype=dt)
    extra = {}
    if family == "sdxl":
        pooled = pipe.text_encoder_2.config.projection_dim
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, device=dev, dtype=dt),
                                      "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch,
                                                               device=dev, dtype=dt)}
    with _classic_attention(unet):
        return _count(lambda: unet(x, t, encoder_hidden_states=enc, **extra))


def vae_decode_flops(pipe, size: int) -> int:
    vae = pipe.vae
    f = pipe.vae_scale_factor
    z = torch.randn(1, vae.config.latent_channels, size // f, size // f, device=vae.device, dtype=vae.dtype)
    with _classic_attention(vae):
        return _count(lambda: vae.decode(z))


def full_size_flops(family: str, size: int, hires_size: int | None = None, hires_steps: int = 0) -> int:
    """Model FLOPs per image of the full-size ``family`` (UNet x steps on the CFG batch + one VAE decode), counted
    on the meta device: shapes only, no weights, no memory, seconds on a CPU. With ``hires_size``, the hires pass's
    ``hires_steps`` UNet calls at that size are added and the decode happens at that size."""
    from types import SimpleNamespace

    from ghostreview.kit.sd import meta_models, real_configs

    m = meta_models(family, real_configs(family))
    parts = SimpleNamespace(unet=m["unet"], vae=m["vae"], text_encoder_2=m.get("text_encoder_2"),
                            vae_scale_factor=2 ** (len(m["vae"].config.block_out_channels) - 1))
    flops = STEPS * unet_flops(parts, family, size)
    if hires_size:
        flops += hires_steps * unet_flops(parts, family, hires_size)
    return flops + vae_decode_flops(parts, hires_size or size)


# ---------------------------------------------------------------------------------------------------- runs
def _sync(device: str):
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def compare(case: Case, device: str, tiny: bool, compile: bool) -> dict:
    """Naive vs project path for one family and size: images/s, ratio, image differences, MFU."""
    plain = build_pipeline(case.family, device, tiny)
    fast = build_pipeline(case.family, device, tiny)  # same seed: same weights
    gpu = device.startswith("cuda")
    optimize_pipeline(fast, dtype=torch.float16 if gpu else torch.float32, compile=compile)
    flops = STEPS * unet_flops(plain, case.family, case.size) + vae_decode_flops(plain, case.size)
    project_images(fast, case.family, min(BATCH, case.n), case.size)  # warm-up (and compilation)
    naive_images(plain, 1, case.size)
    t = interleaved({"naive": lambda: naive_images(plain, case.n, case.size),
                     "project": lambda: project_images(fast, case.family, case.n, case.size)},
                    repeats=case.repeats, warmup=0, sync=_sync(device))
    diffs = [np.abs(a - b) for a, b in zip(t.results["naive"], t.results["project"])]
    out = {"family": case.family, "size": case.size, "images": case.n,
           "naive_images_per_s": case.n / t.median("naive"), "project_images_per_s": case.n / t.median("project"),
           "ratio": t.ratio("naive", "project"), "flops_per_image": flops,
           "mean_abs_diff": float(np.mean([d.mean() for d in diffs])),
           "max_abs_diff": float(max(d.max() for d in diffs))}
    out["project_tflops"] = flops * out["project_images_per_s"] / 1e12
    out["naive_tflops"] = flops * out["naive_images_per_s"] / 1e12
    label = f"{case.family} {case.size}px"
    row(f"{label}: naive images/s (median s, min..max)",
        f"{out['naive_images_per_s']:.3f} ({t.median('naive'):.2f}, {t.spread('naive')})")
    row(f"{label}: project images/s (median s, min..max)",
        f"{out['project_images_per_s']:.3f} ({t.median('project'):.2f}, {t.spread('project')})")
    row(f"{label}: throughput ratio project/naive", f"{out['ratio']:.2f}x")
    row(f"{label}: |pixel diff| mean / max (tolerance {TOLERANCE_MEAN_ABS})",
        f"{out['mean_abs_diff']:.2e} / {out['max_abs_diff']:.2e} "
        f"{'OK' if out['mean_abs_diff'] <= TOLERANCE_MEAN_ABS else 'OUT OF TOLERANCE'}")
    row(f"{label}: model FLOPs per image (UNet x {STEPS} + VAE decode)", f"{flops / 1e9:.4g} GFLOP")
    if gpu:
        row(f"{label}: MFU project / naive (vs {H100_PEAK_FLOPS / 1e12:.0f} TFLOP/s)",
            f"{out['project_tflops'] * 1e12 / H100_PEAK_FLOPS:.1%} / "
            f"{out['naive_tflops'] * 1e12 / H100_PEAK_FLOPS:.1%}")
    else:
        row(f"{label}: achieved GFLOP/s project / naive (no MFU off GPU)",
            f"{out['project_tflops'] * 1e3:.3g} / {out['naive_tflops'] * 1e3:.3g}")
    return out


def v1_hires(tiny: bool) -> tuple[int, object]:
    """Base size and ``Hires`` of examples/params.full-v1.yaml (tiny: 64 px base, same hires settings)."""
    from ghostreview.generation.draw import Hires

    gen = yaml.safe_load(V1_PARAMS.read_text())["generation"]
    h = gen["hires"]
    if (gen["steps"], gen["sampler"], float(gen["cfg_scale"])) != (STEPS, SAMPLER, CFG) or not h["enabled"]:
        raise ValueError(f"{V1_PARAMS}: generation settings changed; update {__name__}'s STEPS/SAMPLER/CFG")
    return (64 if tiny else gen["width"]), Hires(float(h["scale"]), h["steps"], float(h["denoising_strength"]),
                                                 h["upscaler"])


def protocol_time(device: str, tiny: bool, compile: bool, n: int) -> dict:
    """SD1.5 v1 protocol (hires fix), project path: seconds per image, MFU, and the extrapolated 1,568-image time."""
    from ghostreview.generation.draw import hires_size

    size, hires = v1_hires(tiny)
    pipe = build_pipeline("sd15", device, tiny)
    big, _ = hires_size(size, size, hires.scale)
    # FLOPs on the plain pipeline, before fusing: base steps at the base size, hires steps (A1111 runs exactly
    # ``hires.steps``, or the base steps when 0) at the hires size, one VAE decode at the hires size.
    flops = (STEPS * unet_flops(pipe, "sd15", size) + (hires.steps or STEPS) * unet_flops(pipe, "sd15", big)
             + vae_decode_flops(pipe, big))
    gpu = device.startswith("cuda")
    optimize_pipeline(pipe, dtype=torch.float16 if gpu else torch.float32, compile=compile)
    project_images(pipe, "sd15", min(BATCH, n), size, hires)  # warm-up
    seconds, _ = timed(lambda: project_images(pipe, "sd15", n, size, hires), _sync(device))
    per_image = seconds / n
    out = {"base_size": size, "hires": str(hires), "images": n, "seconds_per_image": per_image,
           "flops_per_image": flops, "v1_checkpoint_hours": per_image * V1_IMAGES_PER_CHECKPOINT / 3600}
    row(f"v1 protocol sd15 {size}px + {hires}", f"{per_image:.3f} s/image over {n} images")
    row("v1 protocol model FLOPs per image", f"{flops / 1e9:.4g} GFLOP")
    if gpu:
        row(f"v1 protocol MFU (vs {H100_PEAK_FLOPS / 1e12:.0f} TFLOP/s)", f"{flops / per_image / H100_PEAK_FLOPS:.1%}")
    row(f"extrapolated {V1_IMAGES_PER_CHECKPOINT} images per SD1.5 checkpoint",
        f"{per_image * V1_IMAGES_PER_CHECKPOINT / 60:.1f} min")
    return out


def run(quick: bool = False, device: str = "cpu", families: tuple[str, ...] = ("sd15", "sdxl"),
        compile: bool = False) -> dict:
    tiny = quick or not device.startswith("cuda")
    header(f"{NAME}: plain diffusers batch 1 vs ghostreview.generation.draw + optimize_pipeline")
    if tiny:
        row("models", "TINY kit models (ghostreview.kit.sd.tiny_pipeline), 64 px, float32: code path only, "
                      "not GPU figures")
        cases = [Case(f, 64, 4, 3) for f in families]
    else:
        row("models", "full-size SD1.5 / SDXL from ghostreview/generation/configs, random weights")
        cases = [c for c in (Case("sd15", 512, 8, 3), Case("sdxl", 1024, 4, 3)) if c.family in families]
    row("settings", f"{SAMPLER}, {STEPS} steps, CFG {CFG}, project batch {BATCH}, device {device}, compile {compile}")
    threads = torch.get_num_threads()
    if tiny and not device.startswith("cuda"):
        # Tiny models are thousands of small ops: with 2 OpenMP threads on a shared 2-core machine every op waits
        # for a descheduled thread (one run took 370 s for 4 images of 64 px). One thread keeps it seconds.
        torch.set_num_threads(1)
        row("threads", "torch.set_num_threads(1) for the tiny CPU run")
    out = {"tiny": tiny, "device": device}
    try:
        for case in cases:
            out[f"{case.family}_{case.size}"] = compare(case, device, tiny, compile)
        if "sd15" in families:
            out["v1_protocol"] = protocol_time(device, tiny, compile, n=4 if tiny else 8)
    finally:
        torch.set_num_threads(threads)
    if tiny:
        out["full_size_flops"] = report_full_size_flops(families)
    return out


def report_full_size_flops(families: tuple[str, ...]) -> dict:
    """Counted FLOPs per image of the full-size models (meta device), printed for GPU planning."""
    size, hires = v1_hires(tiny=False)
    from ghostreview.generation.draw import hires_size

    big, _ = hires_size(size, size, hires.scale)
    cases = {"sd15_512": ("sd15", 512, None, 0), "sdxl_1024": ("sdxl", 1024, None, 0),
             "sd15_v1_hires": ("sd15", size, big, hires.steps or STEPS)}
    out = {}
    for key, (family, s, h, hs) in cases.items():
        if family in families:
            out[key] = full_size_flops(family, s, h, hs)
            row(f"full-size {key}: FLOPs per image (meta-device count)", f"{out[key] / 1e12:.2f} TFLOP")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.generation_gpu", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny models at 64 px even on a GPU")
    p.add_argument("--family", action="append", choices=("sd15", "sdxl"), help="only this family (repeatable)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet in the project path")
    args = p.parse_args(argv)
    run(args.quick, args.device, tuple(args.family or ("sd15", "sdxl")), args.compile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
