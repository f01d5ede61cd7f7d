"""Flux.1: layouts recognised from headers, loading both file layouts fully offline (sockets blocked), fp8, the key
table against diffusers' own converter, drawing through the worker's path with Forge's infotext fields."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import numpy as np
import pytest
import torch

from ghostreview.generation import flux, flux_keys
from ghostreview.generation.draw import DrawRequest
from ghostreview.generation.infotext import (
    flux_fields,
    format_infotext,
    parse_infotext,
    pnginfo,
    read_flux_fields,
    read_png_infotext,
)
from ghostreview.generation.loading import CheckpointError, family_from_shapes, inspect_checkpoint
from ghostreview.generation.plan import ImageJob
from ghostreview.generation.worker import PipelineSpec, load_spec_pipeline, pipeline_drawer
from ghostreview.kit import flux as kit
from ghostreview.kit.sd import save_safetensors_atomic

torch.set_num_threads(1)
VARIANT, SEED = "flux1-dev", 7


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    out = {"aio": kit.write_all_in_one(root / "aio.safetensors", VARIANT, SEED), "cache": root / "cache"}
    out["separate"] = kit.write_transformer_only(root / "sep", VARIANT, SEED)
    return out


@pytest.fixture(scope="module")
def weights():
    return kit.tiny_state_dicts(VARIANT, SEED)


def spec(ckpt, cache, **files) -> PipelineSpec:
    return PipelineSpec(ckpt, None, files.pop("vae", None), False, "epsilon", "cpu", "float32", 1, cache, 1, **files)


@pytest.fixture(scope="module")
def pipe(files):
    return load_spec_pipeline(spec(inspect_checkpoint(files["aio"]), files["cache"]))


def assert_weights(pipe, weights, cast=lambda t: t):
    for component in kit.COMPONENTS:
        loaded = getattr(pipe, component).state_dict()
        for key, value in weights[component].items():
            assert torch.equal(loaded[key], cast(value)), (component, key)


# ---------------------------------------------------------------------------------------------------- recognising


def test_layouts_and_variant_from_the_header(files):
    aio = inspect_checkpoint(files["aio"])
    bfl = inspect_checkpoint(files["separate"]["checkpoint"])
    assert (aio.family, bfl.family) == ("flux", "flux")
    assert (flux_keys.flux_layout(aio.shapes), flux_keys.flux_layout(bfl.shapes)) == ("all-in-one", "bfl")
    assert flux_keys.flux_variant(bfl.shapes) == "flux1-dev"
    schnell = {k: v for k, v in bfl.shapes.items() if not k.startswith("guidance_in.")}
    assert flux_keys.flux_variant(schnell) == "flux1-schnell"
    diffusers_names = {k: list(v.shape) for k, v in kit.tiny_state_dicts(VARIANT, SEED)["transformer"].items()}
    assert flux_keys.flux_layout(diffusers_names) == "diffusers"


def test_unknown_layouts_are_refused_naming_flux():
    with pytest.raises(CheckpointError, match="Flux: model.diffusion_model.double_blocks"):
        family_from_shapes({"foo.weight": [1]}, "x.safetensors")


def test_fill_variant_is_refused():
    shapes = {flux_keys.BFL_PROBE: [8], "img_in.weight": [16, 384]}
    with pytest.raises(CheckpointError, match="384 = Fill"):
        flux.check_flux_layout(shapes, "fill.safetensors")


def test_key_table_agrees_with_diffusers_converter_at_real_width():
    """Names and shapes at the real width (meta tensors), and values where they move: biases (small, real) go
    through the same splits as the weights; the final modulation's halves are swapped."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from ghostreview.kit.flux import _meta_models

    configs = flux.real_configs(VARIANT)
    configs["transformer"].update(num_layers=1, num_single_layers=1)
    meta = _meta_models(configs)["transformer"].state_dict()
    bfl = flux_keys.diffusers_to_bfl(meta)
    for key in list(bfl):
        if key.endswith(".bias") or key.startswith("final_layer.adaLN"):
            bfl[key] = torch.arange(bfl[key].numel(), dtype=torch.float32).reshape(bfl[key].shape)
    ours = flux_keys.bfl_to_diffusers(dict(bfl))
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert set(ours) == set(meta)
    real = [k for k, v in ours.items() if not v.is_meta]
    assert len(real) > 20 and all(torch.equal(ours[k], theirs[k]) for k in real)


def test_shipped_configs_have_the_published_sizes():
    """FLUX.1-dev: a 12B transformer (11.9B parameters), T5-XXL's encoder 4.76B, CLIP-L 123M."""
    configs = flux.real_configs("flux1-dev")
    models = kit._meta_models(configs)
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    assert 11.85e9 < counts["transformer"] < 11.95e9
    assert 4.7e9 < counts["text_encoder_2"] < 4.8e9
    assert 1.2e8 < counts["text_encoder"] < 1.25e8
    assert configs["vae"]["latent_channels"] == 16 and configs["vae"]["scaling_factor"] == 0.3611
    assert flux.real_configs("flux1-schnell")["transformer"]["guidance_embeds"] is False


# ---------------------------------------------------------------------------------------------------- loading


def test_all_in_one_loads_offline_with_the_kit_weights(files, weights, no_network):
    loaded = load_spec_pipeline(spec(inspect_checkpoint(files["aio"]), files["cache"]))
    assert_weights(loaded, weights)


def test_transformer_only_loads_offline_with_separate_files(files, weights, no_network):
    sep = files["separate"]
    loaded = load_spec_pipeline(spec(inspect_checkpoint(sep["checkpoint"]), files["cache"], clip_l=sep["clip_l"],
                                     t5xxl=sep["t5xxl"], vae=sep["vae"]))
    assert_weights(loaded, weights)


def test_diffusers_named_transformer_loads(tmp_path, weights, no_network):
    sep = kit.write_transformer_only(tmp_path, VARIANT, SEED, layout="diffusers")
    ckpt = inspect_checkpoint(sep["checkpoint"])
    assert flux_keys.flux_layout(ckpt.shapes) == "diffusers" and ckpt.family == "flux"
    loaded = load_spec_pipeline(spec(ckpt, tmp_path / "cache", clip_l=sep["clip_l"], t5xxl=sep["t5xxl"],
                                     vae=sep["vae"]))
    assert_weights(loaded, weights)


def test_transformer_only_without_its_files_names_them(files):
    ckpt = inspect_checkpoint(files["separate"]["checkpoint"])
    with pytest.raises(CheckpointError, match="clip_l: <file>, t5xxl: <file>, vae: <file>"):
        load_spec_pipeline(spec(ckpt, files["cache"]))


def test_real_size_model_needs_a_t5_tokenizer(tmp_path):
    with pytest.raises(CheckpointError, match="t5_tokenizer"):
        flux.flux_config_dir("flux1-dev", tmp_path, tiny=False)


def test_fp8_is_upcast_and_scaled_fp8_refused(tmp_path, weights):
    sep = kit.write_transformer_only(tmp_path, VARIANT, SEED, fp8=True)
    header = json.loads(sep["checkpoint"].read_bytes()[8:8 + int.from_bytes(sep["checkpoint"].read_bytes()[:8],
                                                                             "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F8_E4M3"}
    config = kit.tiny_configs(VARIANT)["transformer"]
    model = flux.load_transformer(sep["checkpoint"], "", config, torch.float32)
    expected = weights["transformer"]["x_embedder.weight"].to(torch.float16).to(torch.float8_e4m3fn).float()
    assert model.x_embedder.weight.dtype == torch.float32 and torch.equal(model.x_embedder.weight, expected)
    from safetensors.torch import load_file

    tensors = load_file(sep["checkpoint"]) | {"double_blocks.0.img_attn.qkv.scale_weight": torch.ones(1)}
    scaled = save_safetensors_atomic(tensors, tmp_path / "scaled.safetensors", {})
    with pytest.raises(CheckpointError, match=r"scaled\.safetensors: a scaled-fp8 file"):
        flux.load_transformer(scaled, "", config, torch.float32)


def test_tiny_t5_tokenizer_is_deterministic_in_the_real_format(tmp_path):
    from transformers import T5TokenizerFast

    a, b = flux.write_tiny_t5_tokenizer(tmp_path / "a"), flux.write_tiny_t5_tokenizer(tmp_path / "b")
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert json.loads((a / "tokenizer.json").read_text())["model"]["type"] == "Unigram"
    tok = T5TokenizerFast.from_pretrained(str(a), local_files_only=True)
    ids = tok("a photo of a cat").input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces == ["▁a", "▁photo", "▁of", "▁a", "▁cat", "</s>"] and ids[-1] == 1 and tok.pad_token_id == 0


# ---------------------------------------------------------------------------------------------------- drawing


def job(prompt="a cat in a red room", seed=3, **request) -> ImageJob:
    fields = {"negative_prompt": "", "steps": 2, "cfg_scale": 3.5, "width": 64, "height": 64, "sampler": "Euler"}
    req = DrawRequest(prompt=prompt, seed=seed, **(fields | request))
    return ImageJob("general", "p1", seed, prompt, req.negative_prompt, (), (), "ok", req)


def test_draw_through_the_worker_with_forge_infotext(pipe, tmp_path):
    drawer = pipeline_drawer(pipe, "flux", batch_size=2)
    (image, flags), (other, _) = drawer([job(), job(seed=4)])
    assert flags == [] and image.size == (64, 64) and np.asarray(image).std() > 5
    alone, _ = drawer([job()])[0]  # padded to the forward shape of 2: the batch-mate does not change it
    assert np.array_equal(np.asarray(alone), np.asarray(image)) and not np.array_equal(np.asarray(other),
                                                                                          np.asarray(image))
    r = job().request
    fields = {"Steps": r.steps, "Sampler": r.sampler,
              **flux_fields(*flux.guidance_and_shift(r, VARIANT, pipe.scheduler.config)), "Seed": r.seed}
    text = format_infotext(r.prompt, "", fields)
    image.save(tmp_path / "x.png", pnginfo=pnginfo(text))
    prompt, negative, params = parse_infotext(read_png_infotext(tmp_path / "x.png"))
    assert (prompt, negative, params["CFG scale"], params["Schedule type"]) == (r.prompt, "", "1", "Simple")
    # dev's dynamic shift at 64x64: 16 packed tokens, mu = 0.5 + (16 - 256) * 0.65 / 3840
    assert read_flux_fields(params) == (3.5, round(float(np.exp(0.5 + (16 - 256) * 0.65 / 3840)), 4))
    schnell = format_infotext(r.prompt, "", {"Steps": 1, **flux_fields(*flux.guidance_and_shift(r, "flux1-schnell", {
        "shift": 1.0, "use_dynamic_shifting": False}))})
    assert read_flux_fields(parse_infotext(schnell)[2]) == (None, 1.0)


def test_flux_rules_are_checked_before_drawing(pipe):
    with pytest.raises(ValueError, match="negative prompt"):
        flux.draw_flux(pipe, [job(negative_prompt="ugly").request])
    with pytest.raises(ValueError, match="Valid: Euler"):
        flux.draw_flux(pipe, [job(sampler="DPM++ 2M").request])
    with pytest.raises(ValueError, match="multiples of 16"):
        flux.draw_flux(pipe, [job(width=72).request])


def test_prompt_past_t5s_512_tokens_is_flagged(pipe):
    long = " ".join(["cat"] * 600)
    assert flux.t5_token_count(pipe.tokenizer_2, long) > flux.T5_MAX_TOKENS
    (_, flags), = flux.draw_flux(pipe, [job(prompt=long, steps=1).request])
    assert flags == ["text_truncated"]


def test_scheduler_shift_matches_diffusers(pipe):
    """Our recorded shift is the one FluxPipeline's scheduler draws with: its first sigma after set_timesteps(mu)."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    mu = flux.scheduler_mu(pipe.scheduler.config, 512, 512)
    scheduler.set_timesteps(sigmas=np.array([0.5]), mu=mu)
    shift = flux.shift_of(pipe.scheduler.config, 512, 512)
    assert float(scheduler.sigmas[0]) == pytest.approx(shift * 0.5 / (1 + (shift - 1) * 0.5), rel=1e-4)

