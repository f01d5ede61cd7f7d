"""The diffusers configs the loader builds pipelines from: the shipped real-size configs of each family, and the
stand-in topology of the tiny kit, which the loader recognises by its metadata marker.

A tiny model is the real SD1.5 / SDXL-base diffusers config (shipped in ``ghostreview/generation/configs/<family>/``)
with only widths shrunk (``TINY_OVERRIDES``): same number of UNet levels, resnets per level, attention placement,
SDXL ``text_time`` conditioning, both SDXL text encoders, real CLIP vocabulary (49,408) and 77 positions. The loader
needs the topology (a tiny file loads with the tiny configs, ``loading.checkpoint_config_dir``); ``ghostreview.kit``
writes the weights. This module is the one owner of both, so nothing outside ``kit/`` imports ``kit``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ghostreview.generation.families import check_family
from ghostreview.generation.tokenizer import TOKENIZER_PADS, write_clip_tokenizer

CONFIGS_ROOT = Path(__file__).resolve().parent / "configs"
# The metadata marker ``ghostreview.kit`` writes into every stand-in file: its weights are random (reports say so);
# with this value the file has the tiny topology.
KIT_METADATA_KEY = "ghostreview.kit"
KIT_METADATA_VALUE = "tiny-random-weights"

# Only widths shrink, keeping the real channel ratios (SD1 UNet c,2c,4c,4c; SDXL c,2c,4c; VAE c,2c,4c,4c) so the
# same resnets carry shortcut convolutions as in the real models. Depths stay real: 12 CLIP-L layers and 32
# OpenCLIP-bigG layers. With config= given, from_single_file never runs diffusers' own type inference, so depth is
# not needed for loading; keeping it means diffusers' detector (which probes OpenCLIP resblocks.9) agrees anyway.
# SDXL: the two text encoders differ in hidden size (8 vs 24), or diffusers' single-file CLIP loader cannot tell
# them apart; cross_attention_dim = 8 + 24; projection_class_embeddings_input_dim = projection_dim (24) +
# 6 add_time ids * addition_time_embed_dim (8) = 72, as 1280 + 6 * 256 = 2816 in the real model.
# The 49,408-token embeddings dominate the file size (float16: 49,408 * hidden * 2 bytes).
_TINY_CLIP = {"intermediate_size": 64, "num_attention_heads": 2}
_TINY_VAE = {"block_out_channels": [8, 16, 32, 32], "norm_num_groups": 8, "sample_size": 64}
TINY_OVERRIDES: dict[str, dict[str, dict]] = {
    "sd15": {
        "unet": {"block_out_channels": [8, 16, 32, 32], "norm_num_groups": 8, "attention_head_dim": 2,
                 "cross_attention_dim": 24, "sample_size": 8},
        "vae": _TINY_VAE,
        "text_encoder": {**_TINY_CLIP, "hidden_size": 24, "projection_dim": 24},
    },
    "sdxl": {
        "unet": {"block_out_channels": [8, 16, 32], "norm_num_groups": 8, "attention_head_dim": [1, 2, 4],
                 "cross_attention_dim": 32, "transformer_layers_per_block": [1, 1, 2], "addition_time_embed_dim": 8,
                 "projection_class_embeddings_input_dim": 72, "sample_size": 8},
        "vae": _TINY_VAE,
        "text_encoder": {**_TINY_CLIP, "hidden_size": 8, "projection_dim": 8},
        "text_encoder_2": {**_TINY_CLIP, "hidden_size": 24, "projection_dim": 24},
    },
}


def real_configs(family: str) -> dict[str, dict]:
    """The shipped real-size configs of ``family``: {"model_index": ..., "unet": ..., "scheduler": ..., ...}."""
    root = CONFIGS_ROOT / family
    if not (root / "model_index.json").is_file():
        raise FileNotFoundError(f"{root}/model_index.json missing: generation/configs/{family} is not shipped")
    configs = {"model_index": json.loads((root / "model_index.json").read_text())}
    for cfg in sorted(root.glob("*/*.json")):
        configs[cfg.parent.name] = json.loads(cfg.read_text())
    return configs


def tiny_configs(family: str) -> dict[str, dict]:
    """Real configs of ``family`` with ``TINY_OVERRIDES`` applied (same keys as ``real_configs``)."""
    check_family(family)
    configs = copy.deepcopy(real_configs(family))
    for component, overrides in TINY_OVERRIDES[family].items():
        configs[component].update(overrides)
    return configs


def _config_file(component: str) -> str:
    return "scheduler_config.json" if component == "scheduler" else "config.json"


def write_config_dir(dest: Path, configs: Mapping[str, dict], family: str) -> Path:
    """Write a diffusers pipeline config directory (configs + tokenizers, no weights) into ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model_index.json").write_text(json.dumps(configs["model_index"], indent=2, sort_keys=True))
    for component, config in configs.items():
        if component == "model_index":
            continue
        (dest / component).mkdir(exist_ok=True)
        (dest / component / _config_file(component)).write_text(json.dumps(config, indent=2, sort_keys=True))
    for name, pad in TOKENIZER_PADS[family].items():
        write_clip_tokenizer(dest / name, pad_token=pad)
    return dest


def write_tiny_config_dir(dest: Path, family: str) -> Path:
    """Write a complete local diffusers config dir for the tiny topology of ``family`` into ``dest``.

    Holds ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` (SDXL adds
    ``text_encoder_2/`` and ``tokenizer_2/`` padding with "!"), so ``from_single_file(config=dest)`` never
    looks for a hub. Returns ``dest``.
    """
    return write_config_dir(dest, tiny_configs(family), family)


def build_component(name: str, config: Mapping) -> torch.nn.Module:
    """Instantiate weight-bearing component ``name`` (unet, vae, text_encoder, text_encoder_2) from its config."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if name == "unet":
        return UNet2DConditionModel.from_config(config)
    if name == "vae":
        return AutoencoderKL.from_config(config)
    cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
    return cls(CLIPTextConfig(**config))
