"""LoraAdapters: each LoRA file loaded once per pipeline, adapters switched per item, and every item computes exactly
(bit for bit) what apply_loras computes on a fresh pipeline, whatever was loaded before it."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from ghostreview.generation.lora import LoraAdapters, LoraSpec, apply_loras
from ghostreview.kit import lora as kit_lora
from ghostreview.kit import sd

torch.set_num_threads(1)  # 2 shared cores: see tests/test_lora.py


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for family in sd.FAMILIES:
        config_dir = sd.write_tiny_config_dir(root / f"{family}-config", family)
        out[family] = {"a": kit_lora.write_tiny_lora(root / f"{family}-a.safetensors", family, config_dir, seed=1),
                       "b": kit_lora.write_tiny_lora(root / f"{family}-b.safetensors", family, config_dir, seed=2,
                                                     rank=2, alpha=1.0)}
    return out


def outputs(pipe, family: str) -> list[torch.Tensor]:
    """The UNet's output on fixed inputs and each text encoder's hidden states on fixed ids."""
    g = torch.Generator().manual_seed(0)
    cfg = pipe.unet.config
    sample, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, cfg.cross_attention_dim, generator=g)
    extra = {}
    if family == "sdxl":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}}
    ids = torch.randint(0, 1000, (1, 77), generator=g)
    with torch.no_grad():
        out = [pipe.unet(sample, 500, context, **extra).sample]
        out += [getattr(pipe, te)(ids, output_hidden_states=True).hidden_states[-2] for te in sd.TEXT_ENCODERS[family]]
    return out


def items(f):
    a, b = f["a"], f["b"]
    return [[LoraSpec("a", a, 0.8)], [], [LoraSpec("a", a, 0.8), LoraSpec("b", b, -0.5)], [LoraSpec("b", b, 1.0)],
            [LoraSpec("a", a, 0.3), LoraSpec("again", a, 0.5)], [LoraSpec("b", b, 0.7), LoraSpec("a", a, 1.2)], []]


@pytest.mark.parametrize(("family", "max_loaded"), [("sd15", 16), ("sdxl", 16), ("sd15", 1)])
def test_switching_adapters_computes_what_a_fresh_pipeline_computes(files, family, max_loaded):
    pipe = sd.tiny_pipeline(family, seed=5)
    base = outputs(pipe, family)
    loads = []
    real_load = pipe.load_lora_weights
    pipe.load_lora_weights = lambda *a, **k: (loads.append(a[0]), real_load(*a, **k))[1]
    adapters = LoraAdapters(pipe, family, max_loaded=max_loaded)
    for item in items(files[family]):
        assert adapters.activate(item) == {}
        fresh = sd.tiny_pipeline(family, seed=5)
        assert apply_loras(fresh, family, item) == {}
        got = outputs(pipe, family)
        for x, expected in zip(got, outputs(fresh, family), strict=True):
            assert torch.equal(x, expected), [s.name for s in item]
        assert torch.equal(got[0], base[0]) == (not item)  # a LoRA changes the UNet's output; none leaves it be
    if max_loaded == 16:  # a, b, and a second adapter of a for the item that names it twice: each loaded once
        assert sorted(map(str, loads)) == sorted(map(str, [files[family]["a"], files[family]["b"], files[family]["a"]]))


def test_a_refused_file_loads_nothing_and_keeps_the_active_set(files, tmp_path):
    pipe = sd.tiny_pipeline("sd15", seed=5)
    adapters = LoraAdapters(pipe, "sd15")
    adapters.activate([LoraSpec("a", files["sd15"]["a"], 1.0)])
    before = outputs(pipe, "sd15")
    with pytest.raises(ValueError, match="incompatible"):
        adapters.activate([LoraSpec("b", files["sd15"]["b"], 1.0), LoraSpec("xl", files["sdxl"]["a"], 1.0)])
    with pytest.raises(ValueError, match="unique"):
        adapters.activate([LoraSpec("a", files["sd15"]["a"], 1.0), LoraSpec("a", files["sd15"]["b"], 1.0)])
    assert all(torch.equal(x, y) for x, y in zip(outputs(pipe, "sd15"), before))
    assert sorted(pipe.get_list_adapters()["unet"]) == ["ghostreview_lora_0"]
