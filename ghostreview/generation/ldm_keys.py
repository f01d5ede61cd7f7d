"""Diffusers -> original LDM / SGM single-file key layout (the layout Civitai checkpoints use).

diffusers only ships the LDM -> diffusers direction (``diffusers.loaders.single_file_utils``); the reverse exists
only as scripts in the diffusers repository, not in the wheel. This module is our own mapping, written from the
two published layouts and checked by a round trip through ``from_single_file`` (tests/test_kit_sd.py).

Layouts, for a UNet with ``L`` levels and ``n = layers_per_block`` resnets per down level:

    diffusers                                   LDM (``model.diffusion_model.`` prefix in a checkpoint)
    conv_in                                     input_blocks.0.0
    down_blocks.b.resnets.j / attentions.j      input_blocks.{1 + b(n+1) + j}.0 / .1
    down_blocks.b.downsamplers.0.conv           input_blocks.{1 + b(n+1) + n}.0.op
    mid_block.resnets.0 / attentions.0 / resnets.1   middle_block.0 / .1 / .2
    up_blocks.u.resnets.j / attentions.j        output_blocks.{u(n+1) + j}.0 / .1
    up_blocks.u.upsamplers.0.conv               output_blocks.{u(n+1) + n}.{2 if level has attention else 1}.conv
    time_embedding.linear_1/2, add_embedding.linear_1/2   time_embed.0/2, label_emb.0.0/0.2
    conv_norm_out, conv_out                     out.0, out.2
    resnet norm1, conv1, time_emb_proj         in_layers.0, in_layers.2, emb_layers.1
    resnet norm2, conv2, conv_shortcut          out_layers.0, out_layers.3, skip_connection

Transformer internals (``proj_in``, ``transformer_blocks.k.attn1.to_q`` ...) have the same names in both layouts.
The VAE and the OpenCLIP text tower (SDXL's second encoder, SD2's encoder) have their own tables below.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."

_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP = {
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_norm_out": "decoder.norm_out",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _split_module(key: str, table: Mapping[str, str]) -> tuple[str, str] | None:
    """Split ``key`` into (module, rest) where ``module`` is the longest entry of ``table`` that prefixes it."""
    for module in sorted(table, key=len, reverse=True):
        if key.startswith(module + "."):
            return module, key[len(module) + 1 :]
    return None


def _resnet_rest(rest: str) -> str:
    """Rename a diffusers resnet-internal key (``conv1.weight``) to LDM (``in_layers.2.weight``)."""
    hit = _split_module(rest, _UNET_RESNET)
    if hit is None:
        raise KeyError(f"unknown resnet parameter {rest!r}; expected one of {sorted(_UNET_RESNET)}")
    return f"{_UNET_RESNET[hit[0]]}.{hit[1]}"


def unet_key_to_ldm(key: str, config: Mapping) -> str:
    """LDM/SGM name (without ``model.diffusion_model.``) of diffusers UNet parameter ``key``.

    Args:
        key: a ``UNet2DConditionModel.state_dict()`` key, e.g. ``down_blocks.1.attentions.0.proj_in.weight``.
        config: the UNet's diffusers config (``layers_per_block`` and ``up_block_types`` are used).

    Raises:
        KeyError: naming ``key`` when it is not part of the SD1/SD2/SDXL UNet layout.
    """
    n = int(config["layers_per_block"])
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    top = _split_module(key, _UNET_TOP)
    if top is not None:
        return f"{_UNET_TOP[top[0]]}.{top[1]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + b * (n + 1) + j
        return f"input_blocks.{idx}.0.{_resnet_rest(rest)}" if kind == "resnets" else f"input_blocks.{idx}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * (n + 1) + n}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet_rest(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        u, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = u * (n + 1) + j
        return f"output_blocks.{idx}.0.{_resnet_rest(rest)}" if kind == "resnets" else f"output_blocks.{idx}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        u = int(m[1])
        return f"output_blocks.{u * (n + 1) + n}.{2 if up_attn[u] else 1}.conv.{m[2]}"
    raise KeyError(f"UNet parameter {key!r} has no LDM equivalent in the SD1/SD2/SDXL layout")


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """Diffusers UNet state dict -> checkpoint entries with the ``model.diffusion_model.`` prefix."""
    return {LDM_UNET_PREFIX + unet_key_to_ldm(k, config): v for k, v in state_dict.items()}


def vae_key_to_ldm(key: str, n_levels: int) -> str:
    """LDM name (without ``first_stage_model.``) of diffusers ``AutoencoderKL`` parameter ``key``.

    ``n_levels`` is ``len(config["block_out_channels"])``: the decoder's up levels are numbered in reverse in LDM.
    """
    top = _split_module(key, _VAE_TOP)
    if top is not None:
        return f"{_VAE_TOP[top[0]]}.{top[1]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = n_levels - 1 - int(m[1])
        return f"decoder.up.{level}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{n_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        hit = _split_module(m[2], _VAE_ATTN)
        if hit is None:
            raise KeyError(f"unknown VAE attention parameter {key!r}")
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[hit[0]]}.{hit[1]}"
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)|(post_)?quant_conv\.(weight|bias)", key):
        return key
    raise KeyError(f"VAE parameter {key!r} has no LDM equivalent")


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping,
               prefix: str = LDM_VAE_PREFIX) -> dict[str, torch.Tensor]:
    """Diffusers VAE state dict -> LDM entries (``prefix`` + name).

    LDM's mid-block attention uses 1x1 convolutions: its q/k/v/proj_out weights are [C, C, 1, 1] where diffusers
    has Linear [C, C]. Use ``prefix=""`` for a standalone VAE file as Civitai ships them (``encoder.conv_in.weight``).
    """
    n_levels = len(config["block_out_channels"])
    out = {}
    for key, value in state_dict.items():
        ldm = vae_key_to_ldm(key, n_levels)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[prefix + ldm] = value
    return out


def clip_to_ldm(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Hugging Face ``CLIPTextModel`` state dict -> LDM entries under ``prefix`` (which ends in ``text_model.``).

    transformers >= 5.6 dropped the ``text_model.`` level from ``CLIPTextModel``; SD1 checkpoints keep it
    (``cond_stage_model.transformer.text_model.…``, SDXL: ``conditioner.embedders.0.transformer.text_model.…``).
    Keys that still carry ``text_model.`` (older transformers) are accepted too.
    """
    return {prefix + k.removeprefix("text_model."): v for k, v in state_dict.items()}


def open_clip_to_ldm(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Hugging Face ``CLIPTextModelWithProjection`` state dict -> OpenCLIP layout entries under ``prefix``.

    OpenCLIP fuses q, k, v into ``attn.in_proj_weight`` [3D, D] / ``in_proj_bias`` [3D] (q first) and stores
    ``text_projection`` as [D, P] (used as ``x @ P``), the transpose of the HF Linear weight [P, D].
    ``prefix`` is e.g. ``conditioner.embedders.1.model.`` (SDXL) or ``cond_stage_model.model.`` (SD2).
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key in _OPEN_CLIP_TOP:
            out[prefix + _OPEN_CLIP_TOP[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key):
            hit = _split_module(m[2], _OPEN_CLIP_LAYER)
            if hit is None:
                raise KeyError(f"text encoder parameter {key!r} has no OpenCLIP equivalent")
            out[f"{prefix}transformer.resblocks.{m[1]}.{_OPEN_CLIP_LAYER[hit[0]]}.{hit[1]}"] = value
        else:
            raise KeyError(f"text encoder parameter {key!r} has no OpenCLIP equivalent")
    for (layer, kind), parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise KeyError(f"layer {layer} {kind}: q/k/v projections incomplete ({sorted(parts)})")
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts[c] for c in "qkv"])
    return out
