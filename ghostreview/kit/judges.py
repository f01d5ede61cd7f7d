"""Tiny, deterministic stand-ins for the preference judges' weights, in the real file formats.

- HPSv2.1: an open_clip config of the ViT-H-14 family (GELU, patch 14, the real 49,408-token vocabulary and
  77-token context) shrunk to 2-layer width-64 towers on 56x56 images, built as open_clip's ``CLIP`` with its own
  seeded init and ``torch.save``'d as ``{"state_dict": ...}`` like ``HPS_v2.1_compressed.pt``.
- PickScore: a transformers ``CLIPModel`` from a tiny ``CLIPConfig`` (real vocabulary and positions, GELU like
  laion's ViT-H-14), written with ``save_pretrained`` (config.json + model.safetensors), and a processor folder
  laid out like laion/CLIP-ViT-H-14-laion2B-s32B-b79K's (CLIP tokenizer files written offline from open_clip's
  BPE merges, a ``preprocessor_config.json`` in laion's legacy layout sized for the tiny tower, OpenAI mean/std from
  transformers).
All random values come from a seeded generator; the global RNG is left untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ghostreview.generation.tokenizer import EOS_TOKEN, write_clip_tokenizer

TINY_HPS_ARCH = "ghostreview-tiny-ViT-H-14"
TINY_PICK_IMAGE = 32


def tiny_hps_config() -> dict:
    """open_clip model config of the tiny HPSv2.1 stand-in (ViT-H-14's layout, tiny widths)."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 56, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


def write_tiny_hps(dir: Path, seed: int) -> tuple[str, Path, Path]:
    """Write ``<arch>.json`` and ``tiny-HPS_v2.1_compressed.pt`` ({"state_dict": tensors}) into ``dir``.

    Returns (arch, weights, config) for ``load_hpsv21(weights, arch, model_config=config)``.
    """
    from open_clip.model import CLIP

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    config = tiny_hps_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**config)
    config_path = dir / f"{TINY_HPS_ARCH}.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    weights = dir / "tiny-HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {k: v.contiguous() for k, v in model.state_dict().items()}}, weights)
    return TINY_HPS_ARCH, weights, config_path


def tiny_pick_config():
    """``CLIPConfig`` of the tiny PickScore stand-in: 2-layer width-64 towers, 32x32 images, projection 32."""
    from transformers import CLIPConfig

    common = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
              "hidden_act": "gelu"}
    text = {**common, "vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 49406,
            "eos_token_id": 49407, "pad_token_id": 49407}
    vision = {**common, "image_size": TINY_PICK_IMAGE, "patch_size": 8}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def write_tiny_pick_processor(dir: Path) -> Path:
    """Write a CLIP processor folder for the tiny tower into ``dir``: CLIP tokenizer files and a
    ``preprocessor_config.json`` in the legacy layout laion/CLIP-ViT-H-14-laion2B-s32B-b79K ships (integer ``size``
    and ``crop_size``, ``feature_extractor_type``; read by transformers 5 as shortest edge + square crop)."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    dir = Path(dir)
    write_clip_tokenizer(dir, pad_token=EOS_TOKEN)
    config = {"crop_size": TINY_PICK_IMAGE, "do_center_crop": True, "do_normalize": True, "do_resize": True,
              "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(OPENAI_CLIP_MEAN),
              "image_std": list(OPENAI_CLIP_STD), "resample": 3, "size": TINY_PICK_IMAGE}
    (dir / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return dir


def write_tiny_pickscore(dir: Path, seed: int) -> tuple[Path, Path]:
    """Write ``dir/model`` (config.json + model.safetensors) and ``dir/processor``; returns (model_dir, processor_dir)
    for ``load_pickscore(model_dir, processor_dir)``."""
    from transformers import CLIPModel

    dir = Path(dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(tiny_pick_config()).eval()
    model_dir = dir / "model"
    model.save_pretrained(str(model_dir))
    return model_dir, write_tiny_pick_processor(dir / "processor")


def write_tiny_judges(dir: Path, seed: int) -> dict[str, Path | str]:
    """Both stand-ins in ``dir``: keys hps_arch, hps_weights, hps_config, pick_model, pick_processor."""
    dir = Path(dir)
    arch, weights, config = write_tiny_hps(dir / "hpsv21", seed)
    pick_model, pick_processor = write_tiny_pickscore(dir / "pickscore", seed + 1)
    return {"hps_arch": arch, "hps_weights": weights, "hps_config": config, "pick_model": pick_model,
            "pick_processor": pick_processor}
