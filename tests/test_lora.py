"""kohya LoRA files: header-only status checks, application with weights, and exact removal."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ghostreview.generation import lora
from ghostreview.generation.lora import LoraSpec, apply_loras, lora_status, remove_loras
from ghostreview.kit import lora as kit_lora
from ghostreview.kit import sd

# 2 shared cores: OpenMP threads spin against other processes and make tiny models 10-50x slower.
torch.set_num_threads(1)

OTHER = {"sd15": "sdxl", "sdxl": "sd15"}
# kohya name -> diffusers module (written out by hand from the two layouts, independent of
# ghostreview.generation.ldm_keys)
PROBES = {
    "sd15": [("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", "unet",
              "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"),
             ("lora_te_text_model_encoder_layers_3_mlp_fc1", "text_encoder", "encoder.layers.3.mlp.fc1")],
    "sdxl": [("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", "unet",
              "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"),
             ("lora_unet_output_blocks_1_1_transformer_blocks_1_ff_net_2", "unet",
              "up_blocks.0.attentions.1.transformer_blocks.1.ff.net.2"),
             ("lora_te1_text_model_encoder_layers_2_self_attn_q_proj", "text_encoder",
              "encoder.layers.2.self_attn.q_proj"),
             ("lora_te2_text_model_encoder_layers_30_self_attn_out_proj", "text_encoder_2",
              "text_model.encoder.layers.30.self_attn.out_proj")],
}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Per family: config dir and LoRA files (two plain ones, the three LyCORIS variants)."""
    root = tmp_path_factory.mktemp("lora")
    out = {}
    for family in sd.FAMILIES:
        config_dir = sd.write_tiny_config_dir(root / f"{family}-config", family)
        files = {v: kit_lora.write_tiny_lora(root / f"{family}-{v}.safetensors", family, config_dir, seed=1, variant=v)
                 for v in kit_lora.VARIANTS}
        files["second"] = kit_lora.write_tiny_lora(root / f"{family}-second.safetensors", family, config_dir,
                                                   seed=2, rank=2, alpha=1.0)
        out[family] = {"config": config_dir, **files}
    return out


# ------------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("family", sd.FAMILIES)
def test_kohya_layout(kit, family):
    path = kit[family]["lora"]
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        for name, _, _ in PROBES[family]:
            down, up = f.get_tensor(f"{name}.lora_down.weight"), f.get_tensor(f"{name}.lora_up.weight")
            assert down.shape[0] == 4 and up.shape[1] == 4 and up.abs().min() > 0
            assert f.get_tensor(f"{name}.alpha").item() == 2.0
        conv = next(k for k in keys if "proj_in.lora_down" in k) if family == "sd15" else None
        if conv:
            assert f.get_tensor(conv).ndim == 4  # SD1 proj_in is a 1x1 convolution
    prefixes = {k.split(".")[0].split("_")[1] for k in keys}
    assert prefixes == ({"unet", "te"} if family == "sd15" else {"unet", "te1", "te2"})
    assert not any("down_blocks" in k for k in keys) if family == "sdxl" else not any("input_blocks" in k for k in keys)
    assert meta["ss_base_model_version"] == kit_lora.BASE_MODEL_VERSION[family]
    again = kit_lora.write_tiny_lora(path.with_name("again.safetensors"), family, kit[family]["config"], seed=1)
    assert again.read_bytes() == path.read_bytes()


# ------------------------------------------------------------------------------------------------ status


@pytest.mark.parametrize("family", sd.FAMILIES)
def test_status_of_kit_files(kit, family):
    files = kit[family]
    assert lora_status(files["lora"], family) == "ok"
    assert lora_status(files["second"], family) == "ok"
    assert lora_status(files["lora"], OTHER[family]) == f"incompatible: {family} LoRA on {OTHER[family]} checkpoint"
    assert lora_status(files["loha"], family) == "unsupported: LyCORIS LoHa (hada_*)"
    assert lora_status(files["lokr"], family) == "unsupported: LyCORIS LoKr (lokr_*)"
    assert lora_status(files["lora_mid"], family).startswith("unsupported: LyCORIS lora_mid")


def test_status_of_broken_and_foreign_files(kit, tmp_path):
    data = kit["sd15"]["lora"].read_bytes()
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    assert lora_status(truncated, "sd15").startswith("error:") and "truncated" in lora_status(truncated, "sd15")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert lora_status(empty, "sd15").startswith("error:")
    assert lora_status(tmp_path / "missing.safetensors", "sd15").startswith("error:")
    peft_style = tmp_path / "peft.safetensors"
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 8)}, str(peft_style))
    assert lora_status(peft_style, "sd15").startswith("unsupported: not a kohya")
    dora = tmp_path / "dora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4), "lora_unet_x.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_x.dora_scale": torch.zeros(1, 4)}, str(dora))
    assert lora_status(dora, "sd15") == "unsupported: DoRA (dora_scale)"


def synthetic(tmp_path: Path, name: str, context_dim: int, metadata: dict | None = None) -> Path:
    path = tmp_path / f"{name}.safetensors"
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{key}.lora_down.weight": torch.zeros(4, context_dim), f"{key}.lora_up.weight": torch.zeros(320, 4),
               f"{key}.alpha": torch.tensor(4.0)}, str(path), metadata=metadata)
    return path


def test_sd1_vs_sd2_from_shapes_and_metadata(tmp_path):
    assert lora_status(synthetic(tmp_path, "v1", 768), "sd15") == "ok"
    assert lora_status(synthetic(tmp_path, "v2", 1024), "sd15") == "incompatible: sd2 LoRA on sd15 checkpoint"
    assert lora_status(synthetic(tmp_path, "v2meta", 768, {"ss_v2": "True"}), "sd2") == "ok"
    tagged = synthetic(tmp_path, "tagged", 1024, {"ss_base_model_version": "sd_v1"})
    assert lora_status(tagged, "sd15") == "ok"  # metadata, when present, outranks the width heuristic


# ------------------------------------------------------------------------------------------------ apply


def snapshot(pipe, family: str) -> dict[str, dict[str, torch.Tensor]]:
    return {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()}
            for c in ("unet", *sd.TEXT_ENCODERS[family])}


def unet_output(pipe, family: str) -> torch.Tensor:
    """One UNet evaluation on fixed random inputs (no sampler involved)."""
    g = torch.Generator().manual_seed(0)
    cfg = pipe.unet.config
    sample = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, cfg.cross_attention_dim, generator=g)
    extra = {}
    if family == "sdxl":
        pooled_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        embeds = torch.randn(1, pooled_dim, generator=g)
        extra = {"added_cond_kwargs": {"text_embeds": embeds, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}}
    with torch.no_grad():
        return pipe.unet(sample, 500, context, **extra).sample


def lora_delta(path: Path, name: str, shape: torch.Size) -> torch.Tensor:
    """alpha / rank * up @ down, computed from the file (the kohya definition)."""
    with safe_open(str(path), "pt") as f:
        down = f.get_tensor(f"{name}.lora_down.weight").float().flatten(1)
        up = f.get_tensor(f"{name}.lora_up.weight").float().flatten(1)
        alpha = f.get_tensor(f"{name}.alpha").item()
    return (alpha / down.shape[0] * up @ down).reshape(shape)


@pytest.mark.parametrize("family", sd.FAMILIES)
def test_apply_two_loras_then_remove(kit, family):
    pipe = sd.tiny_pipeline(family, seed=5)
    base, base_out = snapshot(pipe, family), unet_output(pipe, family)
    specs = [LoraSpec("first", kit[family]["lora"], 0.8), LoraSpec("second", kit[family]["second"], -0.5)]
    assert apply_loras(pipe, family, specs) == {}  # every module each file targets received its delta
    assert sorted(pipe.get_active_adapters()) == ["ghostreview_lora_0", "ghostreview_lora_1"]  # names of our own
    assert (unet_output(pipe, family) - base_out).abs().mean() > 1e-3  # the LoRAs change the UNet output

    # Each probed module computes x @ (W + 0.8 d1 - 0.5 d2)^T + b, with d = alpha / r * up @ down from the files.
    for name, component, module_name in PROBES[family]:
        module = getattr(pipe, component).get_submodule(module_name)
        weight = base[component][module_name + ".weight"]
        bias = base[component].get(module_name + ".bias")
        expected_w = (weight + 0.8 * lora_delta(specs[0].path, name, weight.shape)
                      - 0.5 * lora_delta(specs[1].path, name, weight.shape))
        x = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            got = module(x)
        assert torch.allclose(got, torch.nn.functional.linear(x, expected_w, bias), atol=1e-5), name

    remove_loras(pipe)
    after = snapshot(pipe, family)
    for component, weights in base.items():
        assert sorted(after[component]) == sorted(weights), component
        for key, value in weights.items():
            assert (after[component][key] - value).abs().max() <= 1e-6, f"{component}.{key}"
    assert torch.allclose(unet_output(pipe, family), base_out, atol=1e-6)


def test_apply_refuses_before_loading_anything(kit):
    pipe = sd.tiny_pipeline("sd15", seed=5)
    good = LoraSpec("good", kit["sd15"]["lora"], 1.0)
    with pytest.raises(ValueError, match="LoHa"):
        apply_loras(pipe, "sd15", [good, LoraSpec("bad", kit["sd15"]["loha"], 1.0)])
    with pytest.raises(ValueError, match="incompatible"):
        apply_loras(pipe, "sd15", [LoraSpec("xl", kit["sdxl"]["lora"], 1.0)])
    with pytest.raises(ValueError, match="unique"):
        apply_loras(pipe, "sd15", [good, good])
    assert not any("lora" in k for k in pipe.unet.state_dict())
    apply_loras(pipe, "sd15", [])  # no-op
    assert not any("lora" in k for k in pipe.unet.state_dict())


def test_metadata_names_the_variant(kit):
    with safe_open(str(kit["sdxl"]["loha"]), "pt") as f:
        assert json.loads(f.metadata()["ss_network_args"]) == {"algo": "loha"}
    assert lora.lora_family({"lora_te2_x.lora_down.weight": [4, 8]}, {}) == "sdxl"


# ------------------------------------------------------------------------------------------------ partly read files

# kohya files whose text-encoder part diffusers' key-format detection mishandles (diffusers 0.42.1):
NO_OUT_PROJ = r"^lora_unet_|_self_attn_[qkv]_proj$|_mlp_fc1$"  # q/k/v and fc1, no out_proj: q/k/v silently dropped
Q_ONLY = r"^lora_te_.*_q_proj$"  # a lone text-encoder q_proj: "Could not automatically infer state dict type"


@pytest.fixture(scope="module")
def broken(kit, tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    return {name: kit_lora.write_tiny_lora(root / f"{name}.safetensors", "sd15", kit["sd15"]["config"], seed=3, keep=k)
            for name, k in (("no_out_proj", NO_OUT_PROJ), ("q_only", Q_ONLY))}


def test_modules_a_file_targets_that_got_no_delta_are_named(broken):
    path = broken["no_out_proj"]
    assert lora_status(path, "sd15") == "ok"  # diffusers reads it (and drops a part): only loading can tell
    pipe = sd.tiny_pipeline("sd15", seed=5)
    base = snapshot(pipe, "sd15")["text_encoder"]
    problems = apply_loras(pipe, "sd15", [LoraSpec("halfway", path, 1.0)])
    qkv = {f"lora_te_text_model_encoder_layers_{i}_self_attn_{p}_proj" for i in range(12) for p in "qkv"}
    missing = lora.targeted_modules(path) - lora.installed_modules(pipe, "sd15", "ghostreview_lora_0")
    assert set(problems) == {"halfway"} and missing == qkv
    # independently of how modules are named: q_proj computes its base weight, fc1 its base weight plus the delta
    x = torch.randn(3, 24, generator=torch.Generator().manual_seed(1))
    for module, changed in (("encoder.layers.4.self_attn.q_proj", False), ("encoder.layers.4.mlp.fc1", True)):
        name = "lora_te_text_model_" + module.replace(".", "_")
        w, b = base[module + ".weight"], base[module + ".bias"]
        expected = torch.nn.functional.linear(x, w + (lora_delta(path, name, w.shape) if changed else 0), b)
        with torch.no_grad():
            assert torch.allclose(pipe.text_encoder.get_submodule(module)(x), expected, atol=1e-5), module
    assert problems["halfway"] == lora.partial_status("halfway", sorted(missing)) == (
        "partial: halfway: no delta on 36 targeted modules: "
        "lora_te_text_model_encoder_layers_*_self_attn_k_proj (12), "
        "lora_te_text_model_encoder_layers_*_self_attn_q_proj (12), "
        "lora_te_text_model_encoder_layers_*_self_attn_v_proj (12)")


def test_a_file_diffusers_cannot_read_is_unsupported_before_any_model_work(broken):
    path = broken["q_only"]
    status = lora_status(path, "sd15")
    assert status.startswith("unsupported: diffusers cannot read it") and "Could not automatically infer" in status
    control = sd.tiny_pipeline("sd15", seed=5)
    with pytest.raises(ValueError, match="Could not automatically infer state dict type"):
        control.load_lora_weights(str(path), adapter_name="x")  # the loader itself fails the same way
    pipe = sd.tiny_pipeline("sd15", seed=5)
    with pytest.raises(ValueError, match="unsupported: diffusers cannot read it"):
        apply_loras(pipe, "sd15", [LoraSpec("q", path, 1.0)])
    assert not any("lora" in k for k in pipe.text_encoder.state_dict())
