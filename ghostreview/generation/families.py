"""The model families GhostReview knows: one owner for every list of them.

A checkpoint's family is read from its header once (``loading.inspect_checkpoint`` -> ``CheckpointFile.family``) and
passed down; these tuples say which families exist where.
"""

from __future__ import annotations

# Reviewable: prompt encoding (encode.py), drawing (draw.py), the benchmark's LoRA tables and LoRA header sets cover
# these. The order is the order of every listing (params' paths.loras, reports).
FAMILIES = ("sd15", "sdxl")
# Flux.1 dev/schnell (generation/flux.py, generation/configs/flux1-*): recognised from the header, loaded and drawn
# by its own module. Not among FAMILIES: the benchmark's LoRA tables, LoRA header sets and A1111 prompt encoding do
# not cover it (SD LoRAs do not transfer; Flux LoRAs are generation/flux_lora.py's).
FLUX_FAMILY = "flux"
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
