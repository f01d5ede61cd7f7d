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
