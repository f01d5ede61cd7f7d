"""Tiny LoRA files in the kohya / A1111 format Civitai distributes, for tests.

Naming (kohya sd-scripts): ``lora_unet_<module path with . -> _>`` where the module path is the diffusers UNet's for
SD1 and the original SGM UNet's for SDXL (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``); text
encoders are ``lora_te_text_model_…`` (SDXL: ``lora_te1_…``, ``lora_te2_…``). Each module has
``.lora_down.weight`` [r, in] (convs: [r, in, kh, kw]), ``.lora_up.weight`` [out, r] (convs: [out, r, 1, 1]) and
a scalar ``.alpha``; the applied delta is ``weight * alpha / r * up @ down``.

``variant`` writes LyCORIS files instead, which diffusers cannot load, for the unsupported-path tests:
``loha`` (``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``), ``lokr`` (``lokr_w1``, ``lokr_w2``) and
``lora_mid`` (plain LoRA plus Tucker ``lora_mid.weight`` on 3x3 resnet convolutions).
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import torch

from ghostreview.generation import ldm_keys
from ghostreview.kit import sd

VARIANTS = ("lora", "loha", "lokr", "lora_mid")
Tensors = dict[str, torch.Tensor]
BASE_MODEL_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
_UNET_TARGET = re.compile(
    r".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)"
    r"|ff\.net\.(0\.proj|2)))"
)
_TE_TARGET = re.compile(r"(text_model\.)?encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])")
_RESNET_CONV = re.compile(r"(down|up)_blocks\.\d+\.resnets\.\d+\.conv1")


def _configs_from_dir(config_dir: Path, family: str) -> dict[str, dict]:
    """The unet and text-encoder configs of a diffusers config dir."""
    names = ["unet", *sd.TEXT_ENCODERS[family]]
    return {n: json.loads((Path(config_dir) / n / "config.json").read_text()) for n in names}


def _unet_targets(family: str, unet) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{kohya name: (kind, weight shape)} of the UNet modules a kohya LoRA/LoCon trains ("conv3": 3x3 resnet conv)."""
    out = {}
    for name, module in unet.named_modules():
        if not (_UNET_TARGET.fullmatch(name) or _RESNET_CONV.fullmatch(name)):
            continue
        # kohya trains SD1 on the diffusers UNet but SDXL on the SGM UNet, so SDXL names use SGM paths.
        if family == "sdxl":
            name = ldm_keys.unet_key_to_ldm(name + ".weight", unet.config).removesuffix(".weight")
        kind = "conv3" if module.weight.ndim == 4 and module.weight.shape[-1] == 3 else "linear"
        out["lora_unet_" + name.replace(".", "_")] = (kind, tuple(module.weight.shape))
    return out


def _te_targets(prefix: str, text_encoder) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{kohya name: ("linear", weight shape)} of a CLIP text encoder's attention and MLP projections.

    kohya names keep the ``text_model_`` level that transformers >= 5.6 dropped from ``CLIPTextModel``.
    """
    out = {}
    for name, module in text_encoder.named_modules():
        if _TE_TARGET.fullmatch(name):
            path = "text_model." + name.removeprefix("text_model.")
            out[prefix + path.replace(".", "_")] = ("linear", tuple(module.weight.shape))
    return out


def _target_shapes(family: str, config_dir: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{kohya module name: (kind, weight shape)} for every LoRA-targeted module of the model in ``config_dir``."""
    configs = _configs_from_dir(config_dir, family)
    return dict(_target_shapes_cached(family, json.dumps(configs, sort_keys=True)))


@functools.lru_cache(maxsize=8)
def _target_shapes_cached(family: str, configs_json: str) -> tuple:
    """Building the meta models costs ~0.7 s; the demo kit writes 32 LoRAs against two configs."""
    models = sd.meta_models(family, json.loads(configs_json))
    prefixes = {"text_encoder": "lora_te_"}
    if family == "sdxl":
        prefixes = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    out = _unet_targets(family, models["unet"])
    for te, prefix in prefixes.items():
        out.update(_te_targets(prefix, models[te]))
    return tuple(out.items())


def _randn(shape: tuple[int, ...], generator: torch.Generator, std: float) -> torch.Tensor:
    return (torch.randn(shape, generator=generator) * std).half()


def _lora_tensors(name: str, shape: tuple[int, ...], rank: int, alpha: float, g: torch.Generator) -> Tensors:
    """Plain LoRA down/up/alpha for one module with weight ``shape`` ([out, in] or [out, in, kh, kw])."""
    out_dim, fan_in = shape[0], math.prod(shape[1:])
    down_shape = (rank, *shape[1:])
    up_shape = (out_dim, rank, 1, 1) if len(shape) == 4 else (out_dim, rank)
    return {
        f"{name}.lora_down.weight": _randn(down_shape, g, 1 / math.sqrt(fan_in)),
        f"{name}.lora_up.weight": _randn(up_shape, g, 1 / math.sqrt(rank)),
        f"{name}.alpha": torch.tensor(alpha, dtype=torch.float16),
    }


def _loha_tensors(name: str, shape: tuple[int, ...], rank: int, alpha: float, g: torch.Generator) -> Tensors:
    """LyCORIS LoHa: delta = (w1_a @ w1_b) * (w2_a @ w2_b), with factors [out, r] and [r, in*kh*kw]."""
    out_dim, fan_in = shape[0], math.prod(shape[1:])
    return {
        f"{name}.hada_w1_a": _randn((out_dim, rank), g, 0.5),
        f"{name}.hada_w1_b": _randn((rank, fan_in), g, 0.5),
        f"{name}.hada_w2_a": _randn((out_dim, rank), g, 0.5),
        f"{name}.hada_w2_b": _randn((rank, fan_in), g, 0.5),
        f"{name}.alpha": torch.tensor(alpha, dtype=torch.float16),
    }


def _lokr_tensors(name: str, shape: tuple[int, ...], rank: int, alpha: float, g: torch.Generator) -> Tensors:
    """LyCORIS LoKr: delta = kron(w1 [a, c], w2 [out/a, in/c]) (a, c = 2 when the dimension is even)."""
    out_dim, fan_in = shape[0], math.prod(shape[1:])
    a, c = (2 if out_dim % 2 == 0 else 1), (2 if fan_in % 2 == 0 else 1)
    return {
        f"{name}.lokr_w1": _randn((a, c), g, 0.5),
        f"{name}.lokr_w2": _randn((out_dim // a, fan_in // c), g, 0.1),
        f"{name}.alpha": torch.tensor(alpha, dtype=torch.float16),
    }


def _mid_tensors(name: str, shape: tuple[int, ...], rank: int, alpha: float, g: torch.Generator) -> Tensors:
    """LoCon with Tucker decomposition: down [r, in, 1, 1], mid [r, r, kh, kw], up [out, r, 1, 1]."""
    out_dim, in_dim = shape[0], shape[1]
    return {
        f"{name}.lora_down.weight": _randn((rank, in_dim, 1, 1), g, 1 / math.sqrt(in_dim)),
        f"{name}.lora_mid.weight": _randn((rank, rank, *shape[2:]), g, 1 / math.sqrt(rank * math.prod(shape[2:]))),
        f"{name}.lora_up.weight": _randn((out_dim, rank, 1, 1), g, 1 / math.sqrt(rank)),
        f"{name}.alpha": torch.tensor(alpha, dtype=torch.float16),
    }


def lora_metadata(family: str, seed: int, rank: int, alpha: float, variant: str) -> dict[str, str]:
    """kohya-style ``ss_*`` training metadata plus the tiny-kit markers."""
    module = "networks.lora" if variant == "lora" else "lycoris.kohya"
    meta = {
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_network_module": module,
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_output_name": f"tiny-{family}-{variant}-{seed}",
        **sd.kit_metadata(family, seed),
    }
    if variant != "lora":
        meta["ss_network_args"] = json.dumps({"algo": {"loha": "loha", "lokr": "lokr", "lora_mid": "locon"}[variant]})
    return meta


def write_tiny_lora(path: Path, family: str, config_dir: Path, seed: int, rank: int = 4, alpha: float = 2.0,
                    variant: str = "lora", keep: str | None = None) -> Path:
    """Write a random kohya-format LoRA (or LyCORIS ``variant``) for the model described by ``config_dir``.

    Targets every attention projection, feed-forward and proj_in/proj_out of the UNet's transformer blocks, the
    3x3 ``conv1`` of down/up resnets (as kohya LoCon does), and q/k/v/out/fc1/fc2 of every text-encoder layer.
    Up weights are non-zero random (N(0, 1/r)), so with weight 1 the LoRA changes outputs by about as much as
    the base weights. ``keep``, a regular expression, writes only the modules whose kohya name it matches
    (``re.search``), for files that target a part of the model (as some trainers write them). The same arguments
    always give a byte-identical file. Returns ``path``.
    """
    sd.check_family(family)
    if variant not in VARIANTS:
        raise ValueError(f"unknown LoRA variant {variant!r}; valid: {', '.join(VARIANTS)}")
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, (kind, shape) in sorted(_target_shapes(family, config_dir).items()):
        if keep is not None and not re.search(keep, name):
            continue
        if variant == "lora_mid" and kind == "conv3":
            tensors.update(_mid_tensors(name, shape, rank, alpha, g))
        elif variant in ("lora", "lora_mid"):
            tensors.update(_lora_tensors(name, shape, rank, alpha, g))
        elif kind != "conv3":
            make = _loha_tensors if variant == "loha" else _lokr_tensors
            tensors.update(make(name, shape, rank, alpha, g))
    return sd.save_safetensors_atomic(tensors, path, lora_metadata(family, seed, rank, alpha, variant))
