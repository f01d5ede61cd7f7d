"""Tiny Flux.1 stand-ins in the formats people share, deterministic (the same variant and seed give identical bytes).

The topology (real depths, narrow widths) and the tiny T5 tokenizer are owned by ``generation.flux``, which must
recognise and load them; this module writes the random weights in the real layouts:

* an all-in-one file as ComfyUI / Forge save it (``model.diffusion_model.*`` in BFL names,
  ``text_encoders.clip_l.transformer.text_model.*``, ``text_encoders.t5xxl.transformer.*``, ``vae.*``);
* a transformer-only file in BFL names (as ``flux1-dev.safetensors``), with separate ``clip_l.safetensors``
  (``text_model.*``), ``t5xxl.safetensors`` (``shared.weight``, ``encoder.*``) and ``ae.safetensors`` (LDM VAE
  names without prefix), optionally stored as fp8 (float8_e4m3fn, as Civitai's "fp8" files);
* a diffusers-named transformer file.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import torch

from ghostreview.generation import flux, flux_keys, ldm_keys
from ghostreview.generation.topology import KIT_METADATA_KEY, KIT_METADATA_VALUE
from ghostreview.kit.sd import random_tensor, save_safetensors_atomic

COMPONENTS = ("text_encoder", "text_encoder_2", "transformer", "vae")


def tiny_configs(variant: str) -> dict[str, dict]:
    """The tiny topology of ``variant`` (``generation.flux.tiny_configs`` with the tiny T5 vocabulary)."""
    return flux.tiny_configs(variant, len(flux.tiny_t5_vocab()))


def _meta_models(configs: Mapping[str, dict]) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        return {"text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
                "text_encoder_2": T5EncoderModel(T5Config(**configs["text_encoder_2"])),
                "transformer": FluxTransformer2DModel.from_config(configs["transformer"]),
                "vae": AutoencoderKL.from_config(configs["vae"])}


@functools.lru_cache(maxsize=2)  # the kit writes one model in two layouts; callers never modify the tensors
def tiny_state_dicts(variant: str, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Deterministic diffusers/transformers-named weights {component: state_dict} of the tiny ``variant``.

    One generator seeded with ``seed`` fills the components in sorted order, each in sorted key order; T5's
    ``encoder.embed_tokens.weight`` is ``shared.weight`` (tied, as in T5). Buffers (CLIP's position_ids) are left out.
    """
    models = _meta_models(tiny_configs(variant))
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for component in COMPONENTS:
        params = dict(models[component].named_parameters(remove_duplicate=False))
        shapes = {k: tuple(v.shape) for k, v in params.items() if k != "encoder.embed_tokens.weight"}
        out[component] = {k: random_tensor(k, shapes[k], generator) for k in sorted(shapes)}
    t5 = out["text_encoder_2"]
    t5["encoder.embed_tokens.weight"] = t5["shared.weight"]
    return out


def kit_metadata(variant: str, seed: int) -> dict[str, str]:
    return {KIT_METADATA_KEY: KIT_METADATA_VALUE, "ghostreview.family": f"flux:{variant}",
            "ghostreview.seed": str(seed)}


def _half(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) for k, v in tensors.items()}


def _clip_file(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """CLIP-L tensors as HF wrote them before transformers 5 (``text_model.`` names) under ``prefix``."""
    return {f"{prefix}text_model.{k}": v for k, v in state.items()}


def _t5_file(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """T5 tensors without the tied copy (safetensors refuses shared storage; real t5xxl files carry shared.weight)."""
    return {prefix + k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}


def write_all_in_one(path: Path, variant: str, seed: int) -> Path:
    """An all-in-one Flux file as ComfyUI / Forge save it (float16)."""
    sd, configs = tiny_state_dicts(variant, seed), tiny_configs(variant)
    tensors = {flux_keys.TRANSFORMER_PREFIX + k: v for k, v in flux_keys.diffusers_to_bfl(sd["transformer"]).items()}
    tensors.update(_clip_file(sd["text_encoder"], flux_keys.CLIP_PREFIX))
    tensors.update(_t5_file(sd["text_encoder_2"], flux_keys.T5_PREFIX))
    tensors.update(ldm_keys.vae_to_ldm(sd["vae"], configs["vae"], prefix=flux_keys.VAE_PREFIX))
    return save_safetensors_atomic(_half(tensors), Path(path), kit_metadata(variant, seed))


def write_transformer_only(dest: Path, variant: str, seed: int, *, fp8: bool = False,
                           layout: str = "bfl") -> dict[str, Path]:
    """A transformer-only checkpoint (``layout`` "bfl" or "diffusers") and its separate CLIP-L, T5 and VAE files
    under ``dest``; ``fp8`` stores the transformer as float8_e4m3fn. Returns {"checkpoint", "clip_l", "t5xxl",
    "vae"} -> path."""
    sd, configs = tiny_state_dicts(variant, seed), tiny_configs(variant)
    dest = Path(dest)
    transformer = flux_keys.diffusers_to_bfl(sd["transformer"]) if layout == "bfl" else sd["transformer"]
    name = f"flux-{variant}-{layout}{'-fp8' if fp8 else ''}.safetensors"
    meta = kit_metadata(variant, seed)
    files = {
        "checkpoint": (dest / name, _half(transformer, torch.float8_e4m3fn if fp8 else torch.float16)),
        "clip_l": (dest / "clip_l.safetensors", _half(_clip_file(sd["text_encoder"], ""))),
        "t5xxl": (dest / "t5xxl.safetensors", _half(_t5_file(sd["text_encoder_2"], ""))),
        "vae": (dest / "ae.safetensors", _half(ldm_keys.vae_to_ldm(sd["vae"], configs["vae"], prefix=""))),
    }
    return {k: save_safetensors_atomic(tensors, path, meta) for k, (path, tensors) in files.items()}


# The modules the kit's LoRAs touch: the fused attention inputs and the output projections of every block, as
# kohya's Flux LoRAs train them (plus the single blocks' fused linear1).
LORA_DOUBLE = ("img_attn.qkv", "img_attn.proj", "txt_attn.qkv")
LORA_SINGLE = ("linear1", "linear2")


def _lora_tensors(variant: str, seed: int, rank: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{BFL module: (down [r, in], up [out, r])} with random values (float16-representable)."""
    config = tiny_configs(variant)["transformer"]
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    mlp = int(hidden * 4.0)
    sizes = {"img_attn.qkv": (hidden, 3 * hidden), "txt_attn.qkv": (hidden, 3 * hidden),  # (in, out)
             "img_attn.proj": (hidden, hidden), "linear1": (hidden, 3 * hidden + mlp),
             "linear2": (hidden + mlp, hidden)}
    modules = [f"double_blocks.{i}.{m}" for i in range(config["num_layers"]) for m in LORA_DOUBLE]
    modules += [f"single_blocks.{i}.{m}" for i in range(config["num_single_layers"]) for m in LORA_SINGLE]
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for module in modules:
        n_in, n_out = sizes[module.split(".", 2)[2]]
        out[module] = (random_tensor("down", (rank, n_in), generator), random_tensor("up", (n_out, rank), generator))
    return out


def write_kohya_lora(path: Path, variant: str, seed: int, rank: int = 4, alpha: float = 2.0) -> Path:
    """A Flux LoRA in kohya's format (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``, ``.alpha``)."""
    tensors = {}
    for module, (down, up) in _lora_tensors(variant, seed, rank).items():
        name = "lora_unet_" + module.replace(".", "_")
        tensors.update({f"{name}.lora_down.weight": down.half(), f"{name}.lora_up.weight": up.half(),
                        f"{name}.alpha": torch.tensor(alpha, dtype=torch.float16)})
    return save_safetensors_atomic(tensors, Path(path), {"ss_network_module": "networks.lora_flux",
                                                         **kit_metadata(variant, seed)})


def write_diffusers_lora(path: Path, variant: str, seed: int, rank: int = 4, alpha: float = 2.0) -> Path:
    """The deltas of ``write_kohya_lora`` (same seed, rank, alpha) in ai-toolkit's / diffusers' format
    (``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``; fused modules split, lora_A repeated; alpha / rank
    folded into lora_A, as that format has no alpha): both files change the model by the same amount."""
    config = tiny_configs(variant)["transformer"]
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    table = flux_keys.module_table(config["num_layers"], config["num_single_layers"])
    tensors = {}
    for module, (down, up) in _lora_tensors(variant, seed, rank).items():
        targets = table[module]
        parts = up.split(flux_keys.split_sizes(len(targets), up.shape[0], hidden)) if len(targets) > 1 else (up,)
        for target, part in zip(targets, parts, strict=True):
            tensors[f"transformer.{target}.lora_A.weight"] = (down * (alpha / rank)).half()
            tensors[f"transformer.{target}.lora_B.weight"] = part.contiguous().half()
    return save_safetensors_atomic(tensors, Path(path), kit_metadata(variant, seed))
