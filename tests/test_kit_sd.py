"""Tiny SD kit: CLIP tokenizer vs open_clip, LDM/SGM layout of tiny checkpoints, exact round trip via diffusers."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ghostreview.generation.families import FAMILIES
from ghostreview.generation.loading import read_safetensors_header
from ghostreview.generation.tokenizer import write_clip_tokenizer
from ghostreview.kit import sd

# 2 shared cores: OpenMP threads spin against other processes and make tiny models 10-50x slower.
torch.set_num_threads(1)

PROMPTS = [
    "a photo of a cat",
    "Masterpiece, best quality, (1girl:1.2), [blurry], <lora:foo:0.8>",
    "  multiple   spaces\tand\nnewlines  ",
    "it's a dog's life, isn't it? we'll see; they'd've",
    "café naïve façade — “curly quotes” … ellipsis",
    "日本語のプロンプト 東京タワー",
    "emoji 🎉🐱‍👤 and symbols ©®™ ±×÷",
    "&amp; html &lt;b&gt;entities&lt;/b&gt; &quot;x&quot;",
    "numbers 1234567890 3.14159 1e-3 #hashtag @user",
    "UPPER lower MiXeD CaSe",
    "hello!!! ??? ... --- ___ *** ~~~",
    "Ünïcödé ẞ ß ǅ ﬁ ligature",
    "",
    "word " * 100,
]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return write_clip_tokenizer(root / "eos"), write_clip_tokenizer(root / "bang", pad_token="!")


def test_tokenizer_ids_equal_open_clip(tokenizer_dirs):
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower
    from transformers import CLIPTokenizer

    ours = CLIPTokenizer.from_pretrained(tokenizer_dirs[0])
    reference = SimpleTokenizer()
    for prompt in PROMPTS:
        cleaned = _clean_lower(prompt)
        expected = [reference.sot_token_id, *reference.encode(cleaned), reference.eot_token_id]
        assert ours(cleaned).input_ids == expected, prompt


def test_tokenizer_config(tokenizer_dirs):
    from transformers import CLIPTokenizer

    eos, bang = (CLIPTokenizer.from_pretrained(d) for d in tokenizer_dirs)
    assert len(eos) == 49408 and eos.model_max_length == 77
    assert (eos.bos_token_id, eos.eos_token_id, eos.pad_token_id) == (49406, 49407, 49407)
    assert bang.pad_token_id == 0 and bang.convert_ids_to_tokens(0) == "!"
    padded = bang("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[:4] == [49406, 320, 2368, 49407] and set(padded[4:]) == {0}


def test_tiny_configs_keep_real_topology():
    for family in FAMILIES:
        real, tiny = sd.real_configs(family), sd.tiny_configs(family)
        for key in ("down_block_types", "up_block_types", "layers_per_block", "addition_embed_type"):
            assert tiny["unet"].get(key) == real["unet"].get(key)
        assert len(tiny["vae"]["block_out_channels"]) == len(real["vae"]["block_out_channels"])
        for te in sd.TEXT_ENCODERS[family]:
            assert tiny[te]["vocab_size"] == 49408 and tiny[te]["max_position_embeddings"] == 77
            assert tiny[te]["num_hidden_layers"] == real[te]["num_hidden_layers"]
    xl = sd.tiny_configs("sdxl")
    te1, te2 = xl["text_encoder"]["hidden_size"], xl["text_encoder_2"]["hidden_size"]
    assert te1 != te2 and xl["unet"]["cross_attention_dim"] == te1 + te2
    assert xl["unet"]["projection_class_embeddings_input_dim"] == (
        xl["text_encoder_2"]["projection_dim"] + 6 * xl["unet"]["addition_time_embed_dim"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{family: (checkpoint path, config dir)} written once for this module."""
    root = tmp_path_factory.mktemp("tiny")
    return {f: (sd.write_tiny_checkpoint(root / f"{f}.safetensors", f, seed=11),
                sd.write_tiny_config_dir(root / f"{f}-config", f)) for f in FAMILIES}


def test_checkpoint_is_deterministic_small_and_marked(tiny, tmp_path):
    for family, (path, _) in tiny.items():
        again = sd.write_tiny_checkpoint(tmp_path / f"{family}-again.safetensors", family, seed=11)
        other = sd.write_tiny_checkpoint(tmp_path / f"{family}-other.safetensors", family, seed=12)
        assert path.read_bytes() == again.read_bytes()
        assert path.read_bytes() != other.read_bytes()
        assert path.stat().st_size < 8_000_000
        meta = read_safetensors_header(path)["__metadata__"]
        assert meta == {"ghostreview.kit": "tiny-random-weights", "ghostreview.family": family,
                        "ghostreview.seed": "11"}


# Real-layout key names (from the original SD1.5 / SDXL-base checkpoints), with the tiny shapes they must have.
SD15_KEYS = {
    "model.diffusion_model.input_blocks.0.0.weight": [8, 4, 3, 3],
    "model.diffusion_model.input_blocks.1.1.proj_in.weight": [8, 8, 1, 1],
    "model.diffusion_model.input_blocks.3.0.op.weight": [8, 8, 3, 3],
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight": [16, 8, 1, 1],
    "model.diffusion_model.input_blocks.7.0.skip_connection.weight": [32, 16, 1, 1],
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": [32, 24],
    "model.diffusion_model.middle_block.2.emb_layers.1.weight": [32, 32],
    "model.diffusion_model.output_blocks.2.1.conv.weight": [32, 32, 3, 3],
    "model.diffusion_model.output_blocks.5.2.conv.weight": [32, 32, 3, 3],
    "model.diffusion_model.output_blocks.8.2.conv.weight": [16, 16, 3, 3],
    "model.diffusion_model.output_blocks.11.0.skip_connection.weight": [8, 16, 1, 1],
    "model.diffusion_model.out.2.weight": [4, 8, 3, 3],
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": [16, 8, 1, 1],
    "first_stage_model.encoder.mid.attn_1.q.weight": [32, 32, 1, 1],
    "first_stage_model.decoder.up.3.upsample.conv.weight": [32, 32, 3, 3],
    "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight": [16, 32, 1, 1],
    "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": [8, 16, 1, 1],
    "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": [24, 64],
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 24],
}
SDXL_KEYS = {
    "model.diffusion_model.label_emb.0.0.weight": [32, 72],
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight": [16, 16],
    "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight": [32, 32],
    "model.diffusion_model.input_blocks.6.0.op.weight": [16, 16, 3, 3],
    "model.diffusion_model.output_blocks.2.2.conv.weight": [32, 32, 3, 3],
    "model.diffusion_model.output_blocks.5.2.conv.weight": [16, 16, 3, 3],
    "model.diffusion_model.output_blocks.8.0.out_layers.3.weight": [8, 8, 3, 3],
    "conditioner.embedders.0.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight": [8, 8],
    "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": [72, 24],
    "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight": [64, 24],
    "conditioner.embedders.1.model.positional_embedding": [77, 24],
    "conditioner.embedders.1.model.text_projection": [24, 24],
    "conditioner.embedders.1.model.ln_final.weight": [24],
}


@pytest.mark.parametrize("family,expected", [("sd15", SD15_KEYS), ("sdxl", SDXL_KEYS)])
def test_checkpoint_uses_original_layout(tiny, family, expected):
    header = read_safetensors_header(tiny[family][0])
    for key, shape in expected.items():
        assert header[key]["shape"] == shape, key
        assert header[key]["dtype"] == "F16"
    assert not any(k.startswith(("unet.", "down_blocks.", "text_model.")) for k in header)


def test_open_clip_qkv_fused_in_order(tiny):
    """in_proj_weight rows are [q; k; v] and text_projection is the transposed HF Linear weight."""
    weights = sd.tiny_state_dicts("sdxl", seed=11)["text_encoder_2"]
    with safe_open(str(tiny["sdxl"][0]), "pt") as f:
        fused = f.get_tensor("conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_weight").float()
        projection = f.get_tensor("conditioner.embedders.1.model.text_projection").float()
    layer = "text_model.encoder.layers.3.self_attn."
    for i, part in enumerate("qkv"):
        assert torch.equal(fused[24 * i: 24 * (i + 1)], weights[f"{layer}{part}_proj.weight"])
    assert torch.equal(projection, weights["text_projection.weight"].T)


def test_diffusers_recognises_tiny_files(tiny):
    """Real depths keep diffusers' own detector working (SDXL base is probed at OpenCLIP resblocks.9)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors.torch import load_file

    assert infer_diffusers_model_type(load_file(str(tiny["sd15"][0]))) == "v1"
    assert infer_diffusers_model_type(load_file(str(tiny["sdxl"][0]))) == "xl_base"


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_through_from_single_file_is_exact(tiny, family):
    import diffusers

    path, config_dir = tiny[family]
    cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None, "feature_extractor": None}
    pipe = cls.from_single_file(str(path), config=str(config_dir), local_files_only=True, **extra)
    expected = sd.tiny_state_dicts(family, seed=11)
    assert sorted(expected) == sorted(["unet", "vae", *sd.TEXT_ENCODERS[family]])
    for component, weights in expected.items():
        loaded = getattr(pipe, component).state_dict()
        assert sorted(loaded) == sorted(weights), component
        mismatched = [k for k in weights if not torch.equal(loaded[k], weights[k])]
        assert not mismatched, f"{component}: {mismatched[:5]}"


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_pipeline_generates_64px_in_4_steps(family):
    pipe = sd.tiny_pipeline(family, seed=2)
    pipe.set_progress_bar_config(disable=True)
    run = lambda prompt: pipe(prompt, num_inference_steps=4, height=64, width=64,  # noqa: E731
                              generator=torch.Generator().manual_seed(5), output_type="np").images
    image = run("a red fox")
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all() and image.std() > 0.01
    assert np.array_equal(run("a red fox"), image)
    assert np.abs(run("a blue whale") - image).mean() > 1e-4  # the prompt reaches the UNet


def test_vae_file_has_no_prefix(tmp_path):
    header = read_safetensors_header(sd.write_tiny_vae(tmp_path / "vae.safetensors", "sd15", seed=3))
    assert "encoder.conv_in.weight" in header and "decoder.mid.attn_1.proj_out.weight" in header
    assert not any(k.startswith("first_stage_model.") for k in header)


def test_unknown_family_lists_valid_ones():
    with pytest.raises(ValueError, match="sd15, sdxl"):
        sd.tiny_configs("sd3")
