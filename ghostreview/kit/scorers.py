"""Tiny, deterministic stand-ins for the scorers' weights (tests and the offline demo; no real weights exist here).

Each writer keeps the real file format and key layout and shrinks only what the consumer does not depend on:
- CLIP: an open_clip config with embed_dim 768 (the aesthetic head's input), QuickGELU, the real 49,408-token
  vocabulary and 77-token context, but 2-layer width-64 towers on 64x64 images.
- LAION head: the real 768-1024-128-64-16-1 shapes and keys, torch.save'd like the original .pth.
- VGG19: torchvision's ``features`` keys and layer sequence with every width divided by ``width_divisor``.
All random values come from a seeded generator; the global RNG is left untouched.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from open_clip.model import CLIP
from safetensors.torch import save_file

from ghostreview.scoring.aesthetic import LAYERS as HEAD_LAYERS
from ghostreview.scoring.styleloss import VGG19_CFG, conv_indices
from ghostreview.scoring.weights import write_state_dict

TINY_CLIP_ARCH = "ghostreview-tiny-ViT-quickgelu"


def tiny_clip_config() -> dict:
    """open_clip model config of the tiny CLIP."""
    return {
        "embed_dim": 768,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


def write_tiny_clip(dir: Path, seed: int) -> tuple[str, Path, Path]:
    """Write ``<arch>.json`` (open_clip config) and ``<arch>.safetensors`` (state dict) into ``dir``.

    Returns (arch, weights path, config path), ready for ``load_clip(arch, weights, model_config=config)``.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    config = tiny_clip_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**config)  # open_clip's own init, seeded
    config_path = dir / f"{TINY_CLIP_ARCH}.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    weights = dir / f"{TINY_CLIP_ARCH}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return TINY_CLIP_ARCH, weights, config_path


def _uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def write_tiny_laion_head(path: Path, seed: int) -> Path:
    """Write a random head with the real LAION v2 keys and shapes (nn.Linear's default init scale), torch.save'd."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, (out_f, in_f) in HEAD_LAYERS:
        bound = 1 / math.sqrt(in_f)
        state[f"{name}.weight"] = _uniform((out_f, in_f), bound, gen)
        state[f"{name}.bias"] = _uniform((out_f,), bound, gen)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def write_tiny_vgg19(path: Path, seed: int, width_divisor: int = 8) -> Path:
    """Write VGG19 ``features`` weights (keys "0.weight", "0.bias", "2.weight", ...) with widths / width_divisor.

    Kaiming-normal convs (fan_out, like torchvision's VGG init) keep activations in range through 16 layers;
    small random biases make a key mix-up visible. ``.safetensors`` suffix -> safetensors, else torch.save.
    """
    gen = torch.Generator().manual_seed(seed)
    widths = [max(1, v // width_divisor) for v in VGG19_CFG if isinstance(v, int)]  # "M": a pool
    state, in_ch = {}, 3
    for idx, out_ch in zip(conv_indices(), widths, strict=True):
        std = math.sqrt(2.0 / (out_ch * 9))
        state[f"{idx}.weight"] = torch.randn((out_ch, in_ch, 3, 3), generator=gen) * std
        state[f"{idx}.bias"] = torch.randn((out_ch,), generator=gen) * 0.01
        in_ch = out_ch
    return write_state_dict(state, path)


def write_tiny_scorers(dir: Path, seed: int) -> dict[str, Path | str]:
    """All three stand-ins in ``dir``: keys clip_arch, clip_weights, clip_config, aesthetic_head, vgg19."""
    dir = Path(dir)
    arch, weights, config = write_tiny_clip(dir / "clip", seed)
    return {
        "clip_arch": arch,
        "clip_weights": weights,
        "clip_config": config,
        "aesthetic_head": write_tiny_laion_head(dir / "aesthetic" / "tiny-laion-head.pth", seed + 1),
        "vgg19": write_tiny_vgg19(dir / "vgg19" / "tiny-vgg19-features.pth", seed + 2),
    }
