"""Flux LoRAs: both formats recognised and checked against the model from the header, applied as adapters with
the kohya scale, switched off and unloaded back to the exact base weights."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from ghostreview.generation import flux_lora
from ghostreview.generation.draw import DrawRequest
from ghostreview.generation.flux import draw_flux, flux_config_dir, flux_files, open_flux_pipeline
from ghostreview.generation.loading import inspect_checkpoint
from ghostreview.generation.lora import LoraSpec
from ghostreview.kit import flux as kit
from ghostreview.kit import lora as sd_lora
from ghostreview.kit.sd import save_safetensors_atomic

torch.set_num_threads(1)
VARIANT = "flux1-dev"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fluxlora")
    path = kit.write_all_in_one(root / "aio.safetensors", VARIANT, 11)
    ckpt = inspect_checkpoint(path)
    pipe = open_flux_pipeline(flux_files(path, ckpt.shapes, ckpt.metadata),
                              flux_config_dir(VARIANT, root / "cache", tiny=True))
    return {"root": root, "pipe": pipe, "config": dict(pipe.transformer.config),
            "kohya": kit.write_kohya_lora(root / "kohya.safetensors", VARIANT, 5),
            "diffusers": kit.write_diffusers_lora(root / "aitk.safetensors", VARIANT, 5)}


def draw(pipe) -> np.ndarray:
    req = DrawRequest("a cat", "", 3, 2, 3.5, 64, 64, "Euler")
    return np.asarray(draw_flux(pipe, [req])[0][0]).astype(int)


def test_both_formats_are_recognised_and_fit(setup):
    for fmt in ("kohya", "diffusers"):
        shapes = {k: list(v.shape) for k, v in flux_lora.read_lora(setup[fmt]).items()}
        assert flux_lora.flux_lora_format(shapes) == fmt
        assert flux_lora.flux_lora_status(setup[fmt], setup["config"]) == "ok"


def test_both_formats_give_the_same_peft_deltas(setup):
    """kohya's alpha / rank folded into lora_A equals the diffusers file's pre-scaled lora_A (kit: same deltas)."""
    a = flux_lora.peft_state_dict(flux_lora.read_lora(setup["kohya"]), setup["config"])
    b = flux_lora.peft_state_dict(flux_lora.read_lora(setup["diffusers"]), setup["config"])
    # (lora_A, lora_B) x (2 double blocks x 7 diffusers modules + 4 single blocks x 5)
    assert set(a) == set(b) and len(a) == 2 * (2 * 7 + 4 * 5)
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-6) for k in a)
    # the fused qkv delta splits into q, k and v with lora_A shared
    assert "transformer.transformer_blocks.0.attn.to_k.lora_B.weight" in a


def test_a_lora_for_another_model_is_refused(setup, tmp_path):
    sd_file = sd_lora.write_tiny_lora(tmp_path / "sd.safetensors", "sd15", kit_configs(tmp_path), seed=1)
    assert flux_lora.flux_lora_status(sd_file, setup["config"]).startswith("incompatible: an SD/SDXL LoRA")
    tensors = flux_lora.read_lora(setup["kohya"])
    wide = {k: (torch.zeros(v.shape[0], v.shape[1] * 2) if k.endswith("lora_down.weight") else v)
            for k, v in tensors.items()}
    path = save_safetensors_atomic(wide, tmp_path / "wide.safetensors", {})
    assert flux_lora.flux_lora_status(path, setup["config"]).startswith("incompatible: ")
    te = tensors | {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 24),
                    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(24, 4)}
    path = save_safetensors_atomic(te, tmp_path / "te.safetensors", {})
    assert flux_lora.flux_lora_status(path, setup["config"]).startswith("partial: te.safetensors: no delta on 1")


def kit_configs(tmp_path):
    from ghostreview.kit.sd import write_tiny_config_dir

    return write_tiny_config_dir(tmp_path / "sd15cfg", "sd15")


def test_apply_switch_off_and_unload_exactly(setup):
    pipe = setup["pipe"]
    base_weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    base = draw(pipe)
    adapters = flux_lora.FluxLoraAdapters(pipe)
    assert adapters.activate([LoraSpec("k", setup["kohya"], 1.0)]) == {}
    with_kohya = draw(pipe)
    adapters.activate([LoraSpec("d", setup["diffusers"], 1.0)])
    with_diffusers = draw(pipe)
    adapters.activate([])
    off = draw(pipe)
    flux_lora.remove_flux_loras(pipe)
    assert np.abs(with_kohya - base).max() > 20  # the LoRA changes the image
    assert np.abs(with_kohya - with_diffusers).max() <= 1  # same deltas, either format
    assert np.array_equal(off, base)  # adapters off: the base layers alone
    assert all(torch.equal(base_weights[k], v) for k, v in pipe.transformer.state_dict().items())
    assert np.array_equal(draw(pipe), base)
