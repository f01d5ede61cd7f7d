"""Generation throughput on a GPU: what this project's generate path adds over plain diffusers, at equal batch size
and dtype, with batching and half precision reported on their own.

Models: full-size SD1.5 and SDXL-base architectures built from the shipped configs
(``ghostreview/generation/configs/sd15``, ``sdxl``) with diffusers/transformers ``from_config`` and seeded random
weights (a forward pass costs the same as with real weights). Weights are re-initialised at unit activation scale (the
rule of ``ghostreview.kit.sd.random_tensor``: N(0, 1/fan_in) matrices, 1 + N(0, 0.1) gains, N(0, 0.1) biases) so half
precision neither overflows nor underflows more than a real checkpoint would.

Paths, each at a batch size and a dtype (DPM++ 2M Karras, 25 steps, CFG 7):

- plain: ``pipe(prompt=[...], negative_prompt=[...], generator=[one per image], ...)``, diffusers' own encoding and
  default attention processor (SDPA with torch 2), weights cast to the dtype.
- project: the generate stage's path: ``ghostreview.generation.draw.draw_arrays`` (A1111 encoding, one CPU generator
  per image) on a pipeline passed through ``ghostreview.generation.loading.optimize_pipeline(pipe, device)``, the
  function the stage's ``load_spec_pipeline`` calls (on a GPU: explicit SDPA and channels_last; on the CPU nothing).
  ``--fuse-qkv`` and ``--compile`` add options the stage does not use (fused QKV cannot coexist with LoRA adapters;
  compile recompiles when adapters change): printed as a separate path, never as the stage's.

Ratios: ``project / plain`` at the same batch and dtype is what this project's code adds; ``plain batch B / plain
batch 1`` is batching; ``plain float16 / plain float32`` (batch 1) is half precision; the product of all against the
plain float32 batch-1 call is printed last, labelled as such. Images of each path are compared with the plain float32
batch-1 images (same prompts and seeds): mean |pixel difference| within ``TOLERANCE_MEAN_ABS``.

Also: a batch-size sweep of the project path (images/s, peak memory), bfloat16 next to float16, LoRA items (each
batch activates another LoRA, as a review's LoRA task does; ``generation.lora.LoraAdapters`` loads each file once),
peak GPU memory per path (``torch.cuda.max_memory_allocated``), and the v1 protocol (SD1.5 512 px + hires x2 to
1024 px, seconds per image x 1,568 images per checkpoint).

MFU: FLOPs of one UNet call at the CFG batch (2 per image) and of one VAE decode, counted with
``torch.utils.flop_counter.FlopCounterMode``; achieved FLOP/s = FLOPs per image x images/s, MFU = that / the dense
BF16/FP16 tensor peak of the device, read from its name (:data:`PEAK_FLOPS`: H100 SXM/PCIe/NVL, H200, A100); an
unknown device gets no MFU. Text encoders and the scheduler are not counted (they are in the time), so the MFU is
slightly understated.

On a CPU (no GPU here), or with ``--quick``, the same code runs on the tiny kit models (``ghostreview.kit.sd.
tiny_pipeline``) at 64 px, float32, 1 thread: it exercises the paths and gives the equal-batch CPU ratios, its figures
say nothing about a GPU; it also prints the full-size models' FLOPs per image counted on the meta device
(:func:`full_size_flops`). The GPU command: ``python -m benchmarks.generation_gpu --device cuda`` (add ``--compile``
/ ``--fuse-qkv`` for the options beyond the stage, ``--family sd15`` to run one family).
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
# Dense BF16/FP16 tensor-core peaks (NVIDIA datasheets list them *with sparsity*, twice these), matched in order
# against torch.cuda.get_device_name(): H200 (SXM) and H100 SXM5 ("H100 80GB HBM3") 989.4 TFLOP/s, H100 NVL 835,
# H100 PCIe 756, A100 (SXM4 and PCIe) 312. Another device gets no MFU.
PEAK_FLOPS = (("H200", 989.4e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989.4e12),
              ("A100", 312e12))
V1_PARAMS = ROOT / "examples" / "params.full-v1.yaml"
V1_IMAGES_PER_CHECKPOINT = 1568
SAMPLER = "DPM++ 2M Karras"
STEPS, CFG, BATCH = 25, 7.0, 4
SWEEP = (1, 2, 4, 8)  # project-path batch sizes on a GPU (tiny CPU run: 1, 2, 4)
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


def peak_flops(device_name: str) -> float | None:
    """The dense BF16/FP16 tensor peak of a device from its name (:data:`PEAK_FLOPS`), None when unknown."""
    return next((peak for key, peak in PEAK_FLOPS if key.lower() in device_name.lower()), None)


def project_pipeline(family: str, device: str, tiny: bool, dtype: torch.dtype, extra: tuple[str, ...] = ()):
    """The generate stage's pipeline: the plain one cast to ``dtype``, then ``loading.optimize_pipeline``."""
    from ghostreview.generation.loading import optimize_pipeline

    pipe = build_pipeline(family, device, tiny)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    return optimize_pipeline(pipe, device, extra)


def plain_pipeline(family: str, device: str, tiny: bool, dtype: torch.dtype):
    pipe = build_pipeline(family, device, tiny)
    return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe


# ---------------------------------------------------------------------------------------------------- paths
def prompts_seeds(n: int) -> tuple[list[str], list[int]]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(n)], [1000000 + i for i in range(n)]


def plain_images(pipe, n: int, size: int, batch: int = 1) -> list[np.ndarray]:
    """Plain diffusers calls of ``batch`` images (one generator each); float [H, W, 3] in [0, 1]."""
    prompts, seeds = prompts_seeds(n)
    out = []
    for start in range(0, n, batch):
        p, sd = prompts[start:start + batch], seeds[start:start + batch]
        images = pipe(prompt=p, negative_prompt=[NEGATIVE] * len(p), num_inference_steps=STEPS, guidance_scale=CFG,
                      width=size, height=size, generator=[torch.Generator("cpu").manual_seed(x) for x in sd],
                      output_type="np").images
        out += [np.asarray(img, dtype=np.float32) for img in images]
    return out


def project_images(pipe, family: str, n: int, size: int, hires=None, batch: int = BATCH,
                   loras: list | None = None) -> list[np.ndarray]:
    """``ghostreview.generation.draw.draw_arrays`` in batches of ``batch``; float [H, W, 3] in [0, 1]. ``loras``: a
    ``LoraAdapters`` and the LoRA sets to cycle through, one per batch (each batch switches)."""
    from ghostreview.generation.draw import DrawRequest, draw_arrays

    prompts, seeds = prompts_seeds(n)
    reqs = [DrawRequest(prompt=p, negative_prompt=NEGATIVE, seed=s, steps=STEPS, cfg_scale=CFG, width=size,
                        height=size, sampler=SAMPLER, hires=hires) for p, s in zip(prompts, seeds)]
    out = []
    for k, start in enumerate(range(0, n, batch)):
        if loras:
            adapters, sets = loras
            adapters.activate(sets[k % len(sets)])
        out += [img for img, _ in draw_arrays(pipe, family, reqs[start:start + batch], batch_size=batch)]
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


class Memory:
    """Peak GPU memory per path: reset before each call, read after (nothing off a GPU)."""

    def __init__(self, device: str) -> None:
        self.gpu = device.startswith("cuda")
        self.peak: dict[str, int] = {}

    def wrap(self, name: str, fn):
        def run():
            if self.gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            out = fn()
            if self.gpu:
                torch.cuda.synchronize()
                self.peak[name] = max(self.peak.get(name, 0), torch.cuda.max_memory_allocated())
            return out
        return run

    def text(self, name: str) -> str:
        return f", peak {self.peak[name] / 2**30:.2f} GiB" if name in self.peak else ""


def mfu_text(flops_per_s: float, device: str) -> str:
    if not device.startswith("cuda"):
        return f"{flops_per_s / 1e9:.3g} GFLOP/s (no MFU off a GPU)"
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name)
    if peak is None:
        return f"{flops_per_s / 1e12:.1f} TFLOP/s (no MFU: {name!r} is not in PEAK_FLOPS)"
    return f"{flops_per_s / 1e12:.1f} TFLOP/s, MFU {flops_per_s / peak:.1%} of {peak / 1e12:.0f} ({name})"


def path_label(kind: str, dtype: torch.dtype, batch: int) -> str:
    return f"{kind} {str(dtype).removeprefix('torch.')} b{batch}"


def compare(case: Case, device: str, tiny: bool, extra: tuple[str, ...]) -> dict:
    """Plain vs project at equal batch and dtype, batching and half precision on their own, for one family and size."""
    gpu = device.startswith("cuda")
    half = torch.float16 if gpu else torch.float32  # the stage's dtype: generation.dtype auto
    b = min(BATCH, case.n)
    plains = {dt: plain_pipeline(case.family, device, tiny, dt) for dt in dict.fromkeys((torch.float32, half))}
    projects = {half: project_pipeline(case.family, device, tiny, half)}
    if gpu:
        plains[torch.bfloat16] = plain_pipeline(case.family, device, tiny, torch.bfloat16)
        projects[torch.bfloat16] = project_pipeline(case.family, device, tiny, torch.bfloat16)
    if extra:
        projects["extra"] = project_pipeline(case.family, device, tiny, half, extra)  # type: ignore[index]
    flops = STEPS * unet_flops(plains[torch.float32], case.family, case.size) + vae_decode_flops(
        plains[torch.float32], case.size)
    paths = {path_label("plain", torch.float32, 1): lambda: plain_images(plains[torch.float32], case.n, case.size)}
    for dt, pipe in plains.items():
        for batch in dict.fromkeys((1, b)):
            paths[path_label("plain", dt, batch)] = (lambda p=pipe, bb=batch: plain_images(p, case.n, case.size, bb))
    for dt, pipe in projects.items():
        label = (f"project+{'+'.join(extra)} {str(half).removeprefix('torch.')} b{b}" if dt == "extra"
                 else path_label("project", dt, b))
        paths[label] = (lambda p=pipe: project_images(p, case.family, case.n, case.size, batch=b))
        if dt == half:
            paths[path_label("project", dt, 1)] = (lambda p=pipe: project_images(p, case.family, case.n, case.size,
                                                                                   batch=1))
    mem = Memory(device)
    timed_paths = {name: mem.wrap(name, fn) for name, fn in paths.items()}
    for fn in timed_paths.values():  # warm-up (and compilation), untimed
        fn()
    t = interleaved(timed_paths, repeats=case.repeats, warmup=0, sync=_sync(device))
    label = f"{case.family} {case.size}px"
    base_name = path_label("plain", torch.float32, 1)
    base = t.results[base_name]
    out: dict = {"family": case.family, "size": case.size, "images": case.n, "flops_per_image": flops, "paths": {}}
    for name in paths:
        ips = case.n / t.median(name)
        diff = [np.abs(x - y) for x, y in zip(base, t.results[name])]
        mean_diff = float(np.mean([d.mean() for d in diff]))
        out["paths"][name] = {"images_per_s": ips, "median_s": t.median(name), "mean_abs_diff": mean_diff,
                              "max_abs_diff": float(max(d.max() for d in diff)), "peak_bytes": mem.peak.get(name)}
        row(f"{label}: {name}: images/s (median s, min..max)",
            f"{ips:.3f} ({t.median(name):.2f}, {t.spread(name)}){mem.text(name)}")
        verdict = "OK" if mean_diff <= TOLERANCE_MEAN_ABS else "OUT OF TOLERANCE"
        row(f"{label}: {name}: |diff| vs {base_name} mean / max",
            f"{mean_diff:.2e} / {out['paths'][name]['max_abs_diff']:.2e} {verdict}")
        row(f"{label}: {name}: model FLOP/s", mfu_text(flops * ips, device))
    hname = str(half).removeprefix("torch.")
    ratios = {f"our code at equal batch and dtype ({hname} b{b}: project/plain)":
              t.ratio(path_label("plain", half, b), path_label("project", half, b)),
              f"our code at equal batch and dtype ({hname} b1: project/plain)":
              t.ratio(path_label("plain", half, 1), path_label("project", half, 1)),
              f"batching alone (plain {hname}: b{b}/b1)": t.ratio(path_label("plain", half, 1),
                                                                  path_label("plain", half, b))}
    if gpu:
        ratios["half precision alone (plain b1: float16/float32)"] = t.ratio(base_name, path_label("plain", half, 1))
        ratios[f"bfloat16 vs float16 (project b{b})"] = t.ratio(path_label("project", half, b),
                                                               path_label("project", torch.bfloat16, b))
    ratios[f"all together, NOT what our code adds (project {hname} b{b} / plain float32 b1)"] = t.ratio(
        base_name, path_label("project", half, b))
    for what, value in ratios.items():
        row(f"{label}: {what}", f"{value:.2f}x")
    out["ratios"] = ratios
    row(f"{label}: model FLOPs per image (UNet x {STEPS} + VAE decode)", f"{flops / 1e9:.4g} GFLOP")
    return out


def batch_sweep(case: Case, device: str, tiny: bool) -> dict:
    """The project path (the stage's dtype) at each batch size: images/s and peak memory."""
    gpu = device.startswith("cuda")
    pipe = project_pipeline(case.family, device, tiny, torch.float16 if gpu else torch.float32)
    sizes = SWEEP if gpu else SWEEP[:3]
    n = max(sizes)
    mem = Memory(device)
    paths = {f"b{bs}": mem.wrap(f"b{bs}", lambda bs=bs: project_images(pipe, case.family, n, case.size, batch=bs))
             for bs in sizes}
    for fn in paths.values():
        fn()
    t = interleaved(paths, repeats=max(1, case.repeats - 1), warmup=0, sync=_sync(device))
    out = {}
    for name in paths:
        out[name] = {"images_per_s": n / t.median(name), "peak_bytes": mem.peak.get(name)}
        row(f"{case.family} {case.size}px project batch sweep {name}: images/s (s per {n}: min..max)",
            f"{n / t.median(name):.3f} ({t.spread(name)}){mem.text(name)}")
    return out


def lora_items(case: Case, device: str, tiny: bool) -> dict:
    """The project path with each batch activating another LoRA (two files alternating) against no LoRA: seconds
    per image, and the first activation (which loads the files) on its own."""
    from ghostreview.generation.loading import family_config_dir
    from ghostreview.generation.lora import LoraAdapters, LoraSpec
    from ghostreview.kit import fullsize, sd
    from ghostreview.kit import lora as kit_lora

    gpu = device.startswith("cuda")
    pipe = project_pipeline(case.family, device, tiny, torch.float16 if gpu else torch.float32)
    b = min(BATCH, case.n)
    n = 2 * b
    with tempfile.TemporaryDirectory(prefix="gr-bench-lora-") as tmp:
        root = Path(tmp)
        if tiny:
            config = sd.write_tiny_config_dir(root / "config", case.family)
            files = [kit_lora.write_tiny_lora(root / f"{k}.safetensors", case.family, config, seed=k) for k in (1, 2)]
        else:
            config = family_config_dir(case.family, root / "configs")
            files = [fullsize.write_lora(root / f"{k}.safetensors", case.family, config, seed=k) for k in (1, 2)]
        adapters = LoraAdapters(pipe, case.family)
        sets = [[LoraSpec("a", files[0], 0.8)], [LoraSpec("b", files[1], 0.8)]]
        first, _ = timed(lambda: (adapters.activate(sets[0]), adapters.activate(sets[1])), _sync(device))
        paths = {"no LoRA": lambda: project_images(pipe, case.family, n, case.size, batch=b,
                                                   loras=(adapters, [[]])),
                 "LoRA per batch": lambda: project_images(pipe, case.family, n, case.size, batch=b,
                                                          loras=(adapters, sets))}
        for fn in paths.values():
            fn()
        t = interleaved(paths, repeats=max(1, case.repeats - 1), warmup=0, sync=_sync(device))
    out = {"first_load_two_files_s": first, **{k: t.median(k) / n for k in paths}}
    label = f"{case.family} {case.size}px LoRA items"
    row(f"{label}: loading two LoRA files (first activation)", f"{first:.2f} s")
    for k in paths:
        row(f"{label}: {k}, s/image (batch {b}, median)", f"{t.median(k) / n:.3f} ({t.spread(k)} per {n})")
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


def protocol_time(device: str, tiny: bool, extra: tuple[str, ...], n: int) -> dict:
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
    del pipe
    pipe = project_pipeline("sd15", device, tiny, torch.float16 if gpu else torch.float32)  # the stage's path
    project_images(pipe, "sd15", min(BATCH, n), size, hires)  # warm-up
    seconds, _ = timed(lambda: project_images(pipe, "sd15", n, size, hires), _sync(device))
    per_image = seconds / n
    out = {"base_size": size, "hires": str(hires), "images": n, "seconds_per_image": per_image,
           "flops_per_image": flops, "v1_checkpoint_hours": per_image * V1_IMAGES_PER_CHECKPOINT / 3600}
    row(f"v1 protocol sd15 {size}px + {hires}", f"{per_image:.3f} s/image over {n} images")
    row("v1 protocol model FLOPs per image", f"{flops / 1e9:.4g} GFLOP")
    row("v1 protocol model FLOP/s", mfu_text(flops / per_image, device))
    row(f"extrapolated {V1_IMAGES_PER_CHECKPOINT} images per SD1.5 checkpoint",
        f"{per_image * V1_IMAGES_PER_CHECKPOINT / 60:.1f} min")
    return out


def run(quick: bool = False, device: str = "cpu", families: tuple[str, ...] = ("sd15", "sdxl"),
        compile: bool = False, fuse_qkv: bool = False) -> dict:
    tiny = quick or not device.startswith("cuda")
    extra = tuple(name for name, on in (("fuse_qkv", fuse_qkv), ("compile", compile)) if on)
    header(f"{NAME}: plain diffusers vs the generate stage's path, at equal batch size and dtype")
    if tiny:
        row("models", "TINY kit models (ghostreview.kit.sd.tiny_pipeline), 64 px, float32: code path only, "
                      "not GPU figures")
        cases = [Case(f, 64, 4, 3) for f in families]
    else:
        row("models", "full-size SD1.5 / SDXL from ghostreview/generation/configs, random weights")
        cases = [c for c in (Case("sd15", 512, 8, 3), Case("sdxl", 1024, 4, 3)) if c.family in families]
    row("settings", f"{SAMPLER}, {STEPS} steps, CFG {CFG}, batch {BATCH}, device {device}, "
                    f"beyond the stage: {', '.join(extra) or 'none'}")
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        peak = peak_flops(name)
        row("device", f"{name}: dense FP16/BF16 peak "
                      f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (no MFU)'}")
    threads = torch.get_num_threads()
    if tiny and not device.startswith("cuda"):
        # Tiny models are thousands of small ops: with 2 OpenMP threads on a shared 2-core machine every op waits
        # for a descheduled thread (one run took 370 s for 4 images of 64 px). One thread keeps it seconds.
        torch.set_num_threads(1)
        row("threads", "torch.set_num_threads(1) for the tiny CPU run")
    out: dict = {"tiny": tiny, "device": device}
    try:
        for case in cases:
            key = f"{case.family}_{case.size}"
            out[key] = compare(case, device, tiny, extra)
            out[key]["batch_sweep"] = batch_sweep(case, device, tiny)
            out[key]["lora_items"] = lora_items(case, device, tiny)
        if "sd15" in families:
            out["v1_protocol"] = protocol_time(device, tiny, extra, n=4 if tiny else 8)
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
    p.add_argument("--compile", action="store_true", help="also time the project path with torch.compile (not the "
                                                           "stage's path)")
    p.add_argument("--fuse-qkv", action="store_true", help="also time it with fused QKV (not the stage's path)")
    args = p.parse_args(argv)
    run(args.quick, args.device, tuple(args.family or ("sd15", "sdxl")), args.compile, args.fuse_qkv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
