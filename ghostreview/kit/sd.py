"""Tiny Stable Diffusion models with the real topology, for tests and CI (no real weights exist here).

The topology (the real SD1.5 / SDXL-base configs with only widths shrunk) is owned by
``ghostreview.generation.topology``, since the loader must recognise it; this module writes the weights. Its
random weights are written in the *original* single-file layout Civitai distributes, so the production loading
path (``from_single_file(..., config=<tiny config dir>)``) is exercised exactly as with a real checkpoint.

Weights are stored as float16 (as "pruned fp16" Civitai files are) and generated as float16-representable
float32 values, so loading a tiny file back as float32 reproduces ``tiny_state_dicts`` exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch

from ghostreview.generation import ldm_keys
from ghostreview.generation.families import FAMILIES, TEXT_ENCODERS, check_family  # noqa: F401 (kit's callers use them)
from ghostreview.generation.tokenizer import TOKENIZER_PADS, build_vocab, open_clip_bpe_path, read_merges
from ghostreview.generation.topology import (  # noqa: F401 (re-exported: the kit's writers and tests use them)
    KIT_METADATA_KEY,
    KIT_METADATA_VALUE,
    TINY_OVERRIDES,
    build_component,
    real_configs,
    tiny_configs,
    write_config_dir,
    write_tiny_config_dir,
)
from ghostreview.util.atomic import save_atomic, write_bytes_atomic


def meta_models(family: str, configs: Mapping[str, dict]) -> dict[str, torch.nn.Module]:
    """Weight-bearing components named in ``configs`` (unet, vae, text encoders), built on the meta device.

    Meta tensors carry shapes only: no memory and no init cost, so this works for real-size configs too.
    """
    names = [n for n in ("unet", "vae", *TEXT_ENCODERS[family]) if n in configs]
    with torch.device("meta"):
        return {name: build_component(name, configs[name]) for name in names}


def random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A float16-representable float32 tensor for parameter ``name``.

    Matrices and kernels: N(0, 1/fan_in) (fan_in = prod(shape[1:])), so activations keep unit scale through many
    layers; 1-D ``weight`` (norm gains): 1 + N(0, 0.1); biases and other vectors: N(0, 0.1). Every tensor is
    random (no ones/zeros), so a weight that a loader silently leaves at its default is caught by a round trip.
    """
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if len(shape) >= 2:
        value = noise / math.sqrt(math.prod(shape[1:]))
    elif name.endswith("weight"):
        value = 1.0 + 0.1 * noise
    else:
        value = 0.1 * noise
    return value.half().float()


def tiny_state_dicts(family: str, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Deterministic diffusers-layout weights {component: state_dict} of the tiny ``family`` model.

    One ``torch.Generator`` seeded with ``seed`` fills the components in sorted name order (text_encoder[_2],
    unet, vae), each parameter in sorted key order, so the result depends only on (family, seed, topology).
    """
    models = meta_models(family, tiny_configs(family))
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for component in sorted(models):
        shapes = {k: tuple(v.shape) for k, v in models[component].state_dict().items()}
        out[component] = {k: random_tensor(k, shapes[k], generator) for k in sorted(shapes)}
    return out


def to_ldm_checkpoint(family: str, state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
                      configs: Mapping[str, dict]) -> dict[str, torch.Tensor]:
    """Diffusers component state dicts -> one original-layout (LDM for SD1, SGM for SDXL) checkpoint dict."""
    ckpt = ldm_keys.unet_to_ldm(state_dicts["unet"], configs["unet"])
    ckpt.update(ldm_keys.vae_to_ldm(state_dicts["vae"], configs["vae"]))
    if family == "sd15":
        te_prefix = "cond_stage_model.transformer.text_model."
    else:
        te_prefix = "conditioner.embedders.0.transformer.text_model."
        ckpt.update(ldm_keys.open_clip_to_ldm(state_dicts["text_encoder_2"], "conditioner.embedders.1.model."))
    ckpt.update(ldm_keys.clip_to_ldm(state_dicts["text_encoder"], te_prefix))
    # Real SD1/SDXL checkpoints carry the CLIP position_ids buffer; keep it so header-based code sees real keys.
    ckpt[te_prefix + "embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return ckpt


def kit_metadata(family: str, seed: int) -> dict[str, str]:
    """safetensors ``__metadata__`` that marks a file as tiny-kit output."""
    return {KIT_METADATA_KEY: KIT_METADATA_VALUE, "ghostreview.family": family, "ghostreview.seed": str(seed)}


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """Serialize to safetensors bytes with a deterministic header.

    ``safetensors`` keeps ``__metadata__`` in a hash map whose order changes from process to process; the header is
    re-written here with the metadata sorted (tensor offsets are relative to the data section, so only the
    header changes). The header is space-padded to a multiple of 8 bytes, as the format recommends.
    """
    from safetensors.torch import save

    raw = save({k: v.contiguous() for k, v in tensors.items()})
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    text = json.dumps({"__metadata__": dict(sorted(metadata.items())), **header}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n :]


def save_safetensors_atomic(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> Path:
    """Write ``safetensors_bytes`` atomically (readers never see half a file)."""
    return write_bytes_atomic(Path(path), safetensors_bytes(tensors, metadata))


def write_tiny_checkpoint(path: Path, family: str, seed: int) -> Path:
    """Write a tiny ``family`` checkpoint with random weights from ``seed`` in the original single-file layout.

    SD1: ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``.
    SDXL: the same UNet/VAE prefixes, ``conditioner.embedders.0.transformer.text_model.*`` (CLIP-L layout) and
    ``conditioner.embedders.1.model.*`` (OpenCLIP layout: fused ``in_proj``, ``text_projection``,
    ``positional_embedding``). Tensors are float16 (position_ids int64); metadata ``kit_metadata(family, seed)``.
    The same (family, seed) always gives a byte-identical file. Returns ``path``.
    """
    return save_safetensors_atomic(_tiny_ldm_checkpoint(family, seed), path, kit_metadata(family, seed))


def _tiny_ldm_checkpoint(family: str, seed: int) -> dict[str, torch.Tensor]:
    """The single-file tensors of the tiny ``family`` model from ``seed``: float16, position_ids int64."""
    ckpt = to_ldm_checkpoint(family, tiny_state_dicts(family, seed), tiny_configs(family))
    return {k: v.half() if v.is_floating_point() else v for k, v in ckpt.items()}


def write_tiny_pickle_checkpoint(path: Path, family: str, seed: int) -> Path:
    """The checkpoint of ``write_tiny_checkpoint(path, family, seed)`` as a pickle ``.ckpt``: ``torch.save`` of
    ``{"state_dict": {...}, **kit_metadata}`` (the layout of A1111-era checkpoints; the marker strings sit where
    ``global_step`` sits in those). Loading reads it with ``torch.load(weights_only=True)``. Returns ``path``.
    """
    checkpoint = {"state_dict": _tiny_ldm_checkpoint(family, seed), **kit_metadata(family, seed)}
    return save_atomic(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def write_tiny_vae(path: Path, family: str, seed: int) -> Path:
    """Write a standalone tiny VAE file as Civitai ships VAEs: LDM keys without prefix (``encoder.conv_in.weight``).

    Uses the VAE weights of ``tiny_state_dicts(family, seed)``, so a VAE from another seed than the checkpoint's
    visibly changes decoded images.
    """
    configs = tiny_configs(family)
    vae = tiny_state_dicts(family, seed)["vae"]
    tensors = {k: v.half() for k, v in ldm_keys.vae_to_ldm(vae, configs["vae"], prefix="").items()}
    return save_safetensors_atomic(tensors, path, kit_metadata(family, seed))


def _tokenizer(pad_token: str):
    """An in-memory ``CLIPTokenizer`` equal to what ``write_clip_tokenizer`` writes (max length 77)."""
    from transformers import CLIPTokenizer

    merges = read_merges(open_clip_bpe_path())
    # transformers annotates merges as list[str], but passes them to tokenizers' BPE, which takes (str, str) pairs
    return CLIPTokenizer(vocab=build_vocab(merges), merges=cast("list[str]", list(merges)),
                         pad_token=pad_token, model_max_length=77)


def tiny_pipeline(family: str, seed: int = 0):
    """In-memory tiny pipeline (``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``), float32 on CPU.

    Same weights as ``write_tiny_checkpoint(path, family, seed)`` loaded back, without touching disk. No safety
    checker, no watermarker. For unit tests of code that takes a pipeline.
    """
    import diffusers

    configs = tiny_configs(family)
    parts: dict = {}
    for name, weights in tiny_state_dicts(family, seed).items():
        parts[name] = build_component(name, configs[name])
        parts[name].load_state_dict(weights, strict=True)
        parts[name].eval()
    for name, pad in TOKENIZER_PADS[family].items():
        parts[name] = _tokenizer(pad)
    scheduler_config = configs["scheduler"]
    parts["scheduler"] = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    if family == "sdxl":
        return diffusers.StableDiffusionXLPipeline(**parts, force_zeros_for_empty_prompt=True, add_watermarker=False)
    return diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
