"""Flux.1 tensor names: how a Flux checkpoint is recognised from its header (layout, dev vs schnell) and the one
table between Black Forest Labs' transformer names and diffusers' (``bfl_to_diffusers`` loads, the kit writes with
``diffusers_to_bfl``). A leaf: ``loading`` asks it whether a file is Flux, ``flux`` loads it.

Diffusers' own converter (``convert_flux_transformer_checkpoint_to_diffusers``) hard-codes the real width
(``inner_dim = 3072``) when it splits the single blocks' fused projection, so it cannot read a narrow stand-in;
this table derives every size from the tensors and reads both.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ghostreview.generation.families import FLUX_FAMILY as FAMILY  # noqa: F401 (flux.py's callers use it)

VARIANTS = ("flux1-dev", "flux1-schnell")
LAYOUTS = ("all-in-one", "bfl", "diffusers")
TRANSFORMER_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "text_encoders.clip_l.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
VAE_PREFIX = "vae."
BFL_PROBE = "double_blocks.0.img_attn.norm.key_norm.scale"
DIFFUSERS_PROBE = "transformer_blocks.0.attn.norm_added_k.weight"
GUIDANCE_KEYS = ("guidance_in.in_layer.weight", "time_text_embed.guidance_embedder.linear_1.weight")
EXPECTED_LAYOUT = (
    "Flux: model.diffusion_model.double_blocks.* with text_encoders.clip_l.*, text_encoders.t5xxl.* and vae.* "
    "(all-in-one), double_blocks.* (BFL transformer-only) or transformer_blocks.* + single_transformer_blocks.* "
    "(diffusers transformer)"
)

# ---------------------------------------------------------------------------------------------------- key table

# BFL module name -> the diffusers module names it holds, in order along dim 0 (fused q/k/v, and the single
# blocks' q/k/v/mlp input projection). RMSNorm gains are ``.scale`` in BFL and ``.weight`` in diffusers.
TOP: dict[str, tuple[str, ...]] = {
    "img_in": ("x_embedder",), "txt_in": ("context_embedder",),
    "time_in.in_layer": ("time_text_embed.timestep_embedder.linear_1",),
    "time_in.out_layer": ("time_text_embed.timestep_embedder.linear_2",),
    "vector_in.in_layer": ("time_text_embed.text_embedder.linear_1",),
    "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2",),
    "guidance_in.in_layer": ("time_text_embed.guidance_embedder.linear_1",),
    "guidance_in.out_layer": ("time_text_embed.guidance_embedder.linear_2",),
    "final_layer.linear": ("proj_out",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),  # BFL (shift, scale) vs diffusers (scale, shift)
}
DOUBLE_BLOCK: dict[str, tuple[str, ...]] = {
    "img_mod.lin": ("norm1.linear",), "txt_mod.lin": ("norm1_context.linear",),
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.norm.query_norm": ("attn.norm_q",), "img_attn.norm.key_norm": ("attn.norm_k",),
    "txt_attn.norm.query_norm": ("attn.norm_added_q",), "txt_attn.norm.key_norm": ("attn.norm_added_k",),
    "img_attn.proj": ("attn.to_out.0",), "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",), "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",), "txt_mlp.2": ("ff_context.net.2",),
}
SINGLE_BLOCK: dict[str, tuple[str, ...]] = {
    "modulation.lin": ("norm.linear",),
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "norm.query_norm": ("attn.norm_q",), "norm.key_norm": ("attn.norm_k",),
    "linear2": ("proj_out",),
}
SWAPPED_HALVES = ("final_layer.adaLN_modulation.1",)


def module_table(num_layers: int, num_single_layers: int) -> dict[str, tuple[str, ...]]:
    """{BFL module: diffusers modules} of a transformer with these block counts (the whole key table)."""
    table: dict[str, tuple[str, ...]] = dict(TOP)
    for i in range(num_layers):
        table.update({f"double_blocks.{i}.{k}": tuple(f"transformer_blocks.{i}.{p}" for p in v)
                      for k, v in DOUBLE_BLOCK.items()})
    for i in range(num_single_layers):
        table.update({f"single_blocks.{i}.{k}": tuple(f"single_transformer_blocks.{i}.{p}" for p in v)
                      for k, v in SINGLE_BLOCK.items()})
    return table


def _block_count(keys, prefix: str) -> int:
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in keys if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def split_sizes(parts: int, rows: int, hidden: int) -> list[int]:
    """Row counts of the ``parts`` diffusers tensors of a fused BFL tensor with ``rows`` rows (``hidden`` = model
    width): the single blocks' linear1 is q, k, v (``hidden`` each) then the MLP input (the rest); qkv is thirds."""
    if parts == 4:
        return [hidden, hidden, hidden, rows - 3 * hidden]
    return [rows // parts] * parts


def _split_key(key: str) -> tuple[str, str]:
    module, param = key.rsplit(".", 1)
    return module, param


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def bfl_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BFL-named Flux transformer (prefix already removed) -> diffusers ``FluxTransformer2DModel`` names.

    Raises:
        KeyError: a tensor the table does not know (another architecture, or a Flux variant we do not load).
    """
    table = module_table(_block_count(state_dict, "double_blocks."), _block_count(state_dict, "single_blocks."))
    hidden = state_dict["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        module, param = _split_key(key)
        if module not in table:
            raise KeyError(f"Flux transformer tensor {key!r} is not in the Flux.1 layout; expected {EXPECTED_LAYOUT}")
        if module in SWAPPED_HALVES:
            value = _swap_halves(value)
        targets = table[module]
        parts = value.split(split_sizes(len(targets), value.shape[0], hidden), dim=0) if len(targets) > 1 \
            else (value,)
        for target, part in zip(targets, parts, strict=True):
            out[f"{target}.{'weight' if param == 'scale' else param}"] = part
    return out


def diffusers_to_bfl(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`bfl_to_diffusers` (the kit writes BFL-layout stand-ins with it)."""
    keys = list(state_dict)
    table = module_table(_block_count(keys, "transformer_blocks."), _block_count(keys, "single_transformer_blocks."))
    out: dict[str, torch.Tensor] = {}
    for module, targets in table.items():
        for param in ("weight", "bias"):
            if f"{targets[0]}.{param}" not in state_dict:
                continue
            parts = [state_dict[f"{t}.{param}"] for t in targets]
            value = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
            if module in SWAPPED_HALVES:
                value = _swap_halves(value)
            out[f"{module}.{'scale' if module.endswith(('query_norm', 'key_norm')) else param}"] = value
    return out


# ---------------------------------------------------------------------------------------------------- recognising


def flux_layout(shapes: Mapping[str, list[int]]) -> str | None:
    """"all-in-one" | "bfl" | "diffusers" for a Flux.1 checkpoint's tensor names, None when it is not Flux."""
    if TRANSFORMER_PREFIX + BFL_PROBE in shapes:
        return "all-in-one" if any(k.startswith(T5_PREFIX) for k in shapes) else "bfl-prefixed"
    if BFL_PROBE in shapes:
        return "bfl"
    if DIFFUSERS_PROBE in shapes and "single_transformer_blocks.0.proj_mlp.weight" in shapes:
        return "diffusers"
    return None


def flux_variant(shapes: Mapping[str, list[int]]) -> str:
    """"flux1-dev" (distilled-guidance embedder present) or "flux1-schnell" (none)."""
    has_guidance = any(k in shapes or TRANSFORMER_PREFIX + k in shapes for k in GUIDANCE_KEYS)
    return "flux1-dev" if has_guidance else "flux1-schnell"
