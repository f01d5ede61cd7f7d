"""Full-size stand-ins (ghostreview.kit.fullsize): the streamed LDM writer, checked on the tiny configs against the
tiny kit, and the full-size plan (key set, parameter counts, family) on the meta device. No full-size file is
written."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ghostreview.generation.families import FAMILIES
from ghostreview.generation.loading import family_from_shapes, is_tiny_kit_file, read_safetensors_header
from ghostreview.kit import fullsize, sd

torch.set_num_threads(1)

# Published parameter counts (UNet2DConditionModel, AutoencoderKL, CLIPTextModel[WithProjection]).
REAL_COUNTS = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_checkpoint_equals_the_tiny_kit_on_tiny_configs(tmp_path, family):
    """Same generator order, same renaming: the streaming writer reproduces write_tiny_checkpoint tensor for tensor."""
    expected = load_file(sd.write_tiny_checkpoint(tmp_path / "kit.safetensors", family, seed=5))
    path = fullsize.write_checkpoint(tmp_path / "streamed.safetensors", family, 5, sd.tiny_configs(family))
    got = load_file(path)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    read_safetensors_header(path)  # offsets cover the data exactly
    assert not is_tiny_kit_file(path)  # full-size marker: loading uses the real configs
    again = fullsize.write_checkpoint(tmp_path / "again.safetensors", family, 5, sd.tiny_configs(family))
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("family", FAMILIES)
def test_full_size_plan_has_the_real_parameter_counts_and_layout(family):
    counts = fullsize.parameter_counts(family)
    assert {k: v for k, v in counts.items() if k != "total"} == REAL_COUNTS[family]
    plan = fullsize.checkpoint_plan(family)
    tensors = sum(torch.Size(s).numel() for k, s in plan.items() if not k.endswith("position_ids"))
    assert tensors == counts["total"]  # nothing dropped or duplicated by the renaming
    assert family_from_shapes({k: list(s) for k, s in plan.items()}) == family
    te = fullsize.TEXT_ENCODER_PREFIX[family]
    assert plan[te + "embeddings.token_embedding.weight"] == (49408, 768)
    assert plan["model.diffusion_model.input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert plan["first_stage_model.decoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    if family == "sdxl":
        assert plan[fullsize.OPEN_CLIP_PREFIX + "transformer.resblocks.31.attn.in_proj_weight"] == (3840, 1280)
        assert plan[fullsize.OPEN_CLIP_PREFIX + "text_projection"] == (1280, 1280)
        assert plan["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)


def test_diffusers_recognises_the_full_size_layout():
    """diffusers' own single-file type inference (independent of our mapping) reads both plans as the right model."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    for family, expected in (("sd15", "v1"), ("sdxl", "xl_base")):
        meta = {k: torch.empty(s, device="meta") for k, s in fullsize.checkpoint_plan(family).items()}
        assert infer_diffusers_model_type(meta) == expected


def test_full_size_stand_ins_are_reported_as_random_weights():
    from ghostreview.generation.loading import CheckpointFile
    from ghostreview.kit.fullsize import FULL_METADATA_VALUE
    from ghostreview.kit.sd import KIT_METADATA_KEY

    full = CheckpointFile(Path("m.safetensors"), "safetensors", {}, {KIT_METADATA_KEY: FULL_METADATA_VALUE})
    real = CheckpointFile(Path("m.safetensors"), "safetensors", {}, {"modelspec.title": "x"})
    assert full.random_weights and not full.is_tiny_kit  # real topology: the real configs load it
    assert not real.random_weights
