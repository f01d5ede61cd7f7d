"""The model families GhostReview knows: one owner for every list of them.

A checkpoint's family is read from its header once (``loading.inspect_checkpoint`` -> ``CheckpointFile.family``) and
passed down; these tuples say which families exist where.
"""

from __future__ import annotations

# Reviewable: prompt encoding (encode.py), drawing (draw.py), the benchmark's LoRA tables and LoRA header sets cover
# these. The order is the order of every listing (params' paths.loras, reports).
FAMILIES = ("sd15", "sdxl")
# Flux.1 dev/schnell (generation/flux.py, generation/configs/flux1-*): recognised from the header, loaded and drawn
# by its own module. Not among FAMILIES: A1111 prompt encoding and SD drawing do not cover it; SD LoRAs do not
# transfer, so it has a LoRA table of its own, of Flux LoRAs (generation/flux_lora.py applies them).
FLUX_FAMILY = "flux"
# The families with a LoRA table in the benchmark (loras_<family>.yaml; Flux's is optional in a benchmark directory)
# and a LoRA header set: params' paths.loras.<family> and paths.lora_headers.<family>, in this order.
LORA_FAMILIES = (*FAMILIES, FLUX_FAMILY)
# LoRA tables of bases whose LoRAs do not transfer from their family's table (loras_<table>.yaml, optional in a
# benchmark directory; a base names its table in bases.yaml's lora_table): table -> the family its LoRA files are
# for. Their files and header images sit in that family's paths.loras / paths.lora_headers directories, as A1111 and
# Forge keep every SDXL LoRA in one folder (LoRA names are unique across tables).
BASE_LORA_TABLES = {"pony": "sdxl", "illustrious": "sdxl"}


def table_family(table: str) -> str:
    """The family whose directories hold LoRA table ``table``'s files: itself for a family's table."""
    return BASE_LORA_TABLES.get(table, table)
# Recognised from a checkpoint's header and shipped as diffusers configs (generation/configs/<family>/): SD2.x is
# recognised so that it is refused with its reason, not misread as another family.
CONFIG_FAMILIES = ("sd15", "sd2", "sdxl")
# The diffusers pipeline class that loads each family's single-file checkpoints.
PIPELINE_CLASSES = {
    "sd15": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}
# The text encoders of each family, by diffusers component name.
TEXT_ENCODERS = {"sd15": ("text_encoder",), "sd2": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2")}


def check_family(family: str, valid: tuple[str, ...] = FAMILIES) -> None:
    """Raise ``ValueError`` listing the valid families when ``family`` is not one of ``valid``."""
    if family not in valid:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(valid)}")
