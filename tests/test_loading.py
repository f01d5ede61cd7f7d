"""Checkpoint headers, family detection, config dirs and offline pipeline loading (tiny kit files)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ghostreview.generation import loading
from ghostreview.generation.loading import CheckpointError
from ghostreview.kit import sd

# 2 shared cores: OpenMP threads spin against other processes and make tiny models 10-50x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    out = {f: sd.write_tiny_checkpoint(root / f"{f}.safetensors", f, seed=21) for f in sd.FAMILIES}
    out["cache"] = root / "cache"
    return out


def write_raw(path: Path, header: dict, data: bytes = b"") -> Path:
    """A safetensors file written by hand: 8-byte little-endian header length, JSON header, data."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


# ------------------------------------------------------------------------------------------------ headers


def test_header_of_valid_file(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.int64)}, str(path), metadata={"k": "v"})
    header = loading.read_safetensors_header(path)
    assert header["a"]["shape"] == [2, 3] and header["b"]["dtype"] == "I64"
    assert header["__metadata__"] == {"k": "v"}
    assert loading.tensor_shapes(header) == {"a": [2, 3], "b": [4]}


def test_header_hand_written_matches_format(tmp_path):
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    path = write_raw(tmp_path / "raw.safetensors", {"x": entry}, bytes(8))
    assert loading.read_safetensors_header(path)["x"]["shape"] == [2]


def bad_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    rng = np.random.default_rng(0)
    cases = {
        "empty": b"",
        "tiny": b"\x01\x02",
        "truncated-data": data[: 8 + n + 100],
        "truncated-header": data[: 8 + n // 2],
        "random": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "pickle-renamed": b"\x80\x04\x95" + bytes(200),
        "trailing-bytes": data + b"junk",
    }
    out = {name: tmp_path / f"{name}.safetensors" for name in cases}
    for name, content in cases.items():
        out[name].write_bytes(content)
    out["not-json"] = tmp_path / "not-json.safetensors"
    out["not-json"].write_bytes(struct.pack("<Q", 5) + b"{{{{{")
    out["bad-entry"] = write_raw(tmp_path / "bad-entry.safetensors", {"x": {"dtype": "F32", "shape": [2]}})
    return out


def test_bad_files_raise_checkpoint_error_naming_the_file(tmp_path, files):
    for name, path in bad_files(tmp_path, files["sd15"]).items():
        with pytest.raises(CheckpointError) as info:
            loading.read_safetensors_header(path)
        assert str(path) in str(info.value), name
        with pytest.raises(CheckpointError):
            loading.detect_family(path)
    with pytest.raises(CheckpointError, match="empty"):
        loading.read_safetensors_header(tmp_path / "empty.safetensors")
    with pytest.raises(CheckpointError, match="truncated"):
        loading.read_safetensors_header(tmp_path / "truncated-data.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        loading.read_safetensors_header(tmp_path / "missing.safetensors")


def test_header_reading_reads_no_tensor_data(files, monkeypatch):
    """Only the 8-byte length and the JSON header are read, however large the file."""
    real_open = open
    sizes = []

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            sizes.append(n)
            return self.f.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k: Counting(real_open(p, mode, *a, **k)))
    header_len = struct.unpack("<Q", files["sdxl"].read_bytes()[:8])[0]
    assert loading.detect_family(files["sdxl"]) == "sdxl"
    assert sizes == [8, header_len] and header_len < files["sdxl"].stat().st_size / 20


# ------------------------------------------------------------------------------------------------ families


def test_detect_family_on_tiny_files(files):
    assert loading.detect_family(files["sd15"]) == "sd15"
    assert loading.detect_family(files["sdxl"]) == "sdxl"
    assert loading.is_tiny_kit_file(files["sd15"]) and loading.is_tiny_kit_file(files["sdxl"])


def header_file(tmp_path: Path, name: str, shapes: dict[str, list[int]], metadata: dict | None = None) -> Path:
    """A valid safetensors file with zero-filled float16 tensors of the given shapes (header-level fixtures)."""
    path = tmp_path / f"{name}.safetensors"
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, str(path), metadata=metadata)
    return path


UNET = {"model.diffusion_model.input_blocks.0.0.weight": [8, 4, 3, 3]}


def test_detect_family_from_keys(tmp_path):
    sd2 = header_file(tmp_path, "sd2", {**UNET, "cond_stage_model.model.token_embedding.weight": [10, 4]})
    assert loading.family_from_shapes(loading.inspect_checkpoint(sd2).shapes) == "sd2"  # recognised, then refused:
    with pytest.raises(CheckpointError, match="reviews sd15 and sdxl checkpoints only"):
        loading.detect_family(sd2)
    assert not loading.is_tiny_kit_file(sd2)
    sdxl_shallow = header_file(tmp_path, "xl", {
        **UNET, "conditioner.embedders.1.model.positional_embedding": [77, 4],
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": [10, 4]})
    assert loading.detect_family(sdxl_shallow) == "sdxl"  # no resblocks.9 needed


@pytest.mark.parametrize("name,shapes,match", [
    ("plain", {"foo.weight": [3, 3], "bar": [2]}, "model.diffusion_model"),
    ("lora", {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": [4, 8]}, "LoRA"),
    ("vae", {"encoder.conv_in.weight": [8, 3, 3, 3]}, "VAE"),
    ("diffusers", {"down_blocks.0.resnets.0.conv1.weight": [8, 8, 3, 3]}, "diffusers-format"),
    ("inpaint", {"model.diffusion_model.input_blocks.0.0.weight": [8, 9, 3, 3]}, "inpainting"),
    ("refiner", {**UNET, "conditioner.embedders.0.model.positional_embedding": [77, 4]}, "refiner"),
    ("unet-only", UNET, "no text encoder"),
])
def test_detect_family_rejects_non_checkpoints(tmp_path, name, shapes, match):
    path = header_file(tmp_path, name, shapes)
    with pytest.raises(CheckpointError, match=match) as info:
        loading.detect_family(path)
    assert str(path) in str(info.value)


def test_detect_family_of_pickle_only_on_request(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {**{k: torch.zeros(s) for k, s in UNET.items()},
                               loading.SD1_CLIP_KEY: torch.zeros(10, 4)}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="pickle"):
        loading.detect_family(path)
    assert loading.detect_family(path, allow_pickle=True) == "sd15"


def test_inspect_reads_a_pickle_once_into_the_same_record_as_a_safetensors_file(files, tmp_path):
    """One record (format, shapes, metadata) per checkpoint, whatever its format: everything else asks it."""
    st = loading.inspect_checkpoint(files["sd15"])
    pk = loading.inspect_checkpoint(sd.write_tiny_pickle_checkpoint(tmp_path / "kit.ckpt", "sd15", seed=21),
                                    allow_pickle=True)
    assert (st.format, pk.format) == ("safetensors", "pickle")
    assert pk.shapes == st.shapes and pk.family == st.family == "sd15"
    assert st.is_tiny_kit and pk.is_tiny_kit  # the kit marks its pickles too
    assert loading.is_tiny_kit_file(pk.path, allow_pickle=True)
    with pytest.raises(CheckpointError, match="allow_pickle: true"):
        loading.is_tiny_kit_file(pk.path)  # asking about a pickle is reading it: refused without the opt-in
    tiny = loading.pipeline_config_dir(pk.path, "sd15", tmp_path, allow_pickle=True)
    assert tiny == loading.tiny_config_dir("sd15", tmp_path)


def test_a_pickle_named_safetensors_is_reported_as_a_pickle(files, tmp_path):
    disguised = tmp_path / "model.safetensors"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}}, disguised)
    with pytest.raises(CheckpointError, match=r"a pickle \(torch.save\) file named \.safetensors") as info:
        loading.detect_family(disguised)
    assert str(disguised) in str(info.value) and ".ckpt" in str(info.value)


# ------------------------------------------------------------------------------------------------ configs

# Parameter counts of the original models (diffusers' published component sizes): SD1.5 UNet 859.52M,
# SD2.1 UNet 865.91M, SDXL UNet 2.567B, VAE 83.65M, CLIP ViT-L/14 text 123.06M, OpenCLIP-H text (23 layers)
# 340.39M, OpenCLIP-bigG text with projection 694.66M.
REAL_PARAMS = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("family", loading.CONFIG_FAMILIES)
def test_family_config_dir_holds_the_real_configs(tmp_path, family):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    first = loading.family_config_dir(family, tmp_path)
    marker = first / "unet" / "config.json"
    stamp = marker.stat().st_mtime_ns
    assert loading.family_config_dir(family, tmp_path) == first and marker.stat().st_mtime_ns == stamp
    assert first.name.startswith(f"{family}-") and len(first.name) == len(family) + 13
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp dirs left behind
    build = {"unet": UNet2DConditionModel.from_config, "vae": AutoencoderKL.from_config,
             "text_encoder": lambda c: CLIPTextModel(CLIPTextConfig(**c)),
             "text_encoder_2": lambda c: CLIPTextModelWithProjection(CLIPTextConfig(**c))}
    for component, expected in REAL_PARAMS[family].items():
        config = json.loads((first / component / "config.json").read_text())
        with torch.device("meta"):
            model = build[component](config)
        assert sum(p.numel() for p in model.parameters()) == expected, component
    pads = {"sd15": ["<|endoftext|>"], "sd2": ["!"], "sdxl": ["<|endoftext|>", "!"]}[family]
    for name, pad in zip(["tokenizer", "tokenizer_2"], pads):
        assert CLIPTokenizer.from_pretrained(first / name).pad_token == pad


def test_family_config_dir_rejects_unknown_family(tmp_path):
    with pytest.raises(ValueError, match="sd15, sd2, sdxl"):
        loading.family_config_dir("flux", tmp_path)


def test_pipeline_config_dir_picks_tiny_topology_for_kit_files(files, tmp_path):
    tiny = loading.pipeline_config_dir(files["sd15"], "sd15", tmp_path)
    assert json.loads((tiny / "unet" / "config.json").read_text())["block_out_channels"] == [8, 16, 32, 32]
    plain = header_file(tmp_path, "plain", {**UNET, loading.SD1_CLIP_KEY: [10, 4]})
    real = loading.pipeline_config_dir(plain, "sd15", tmp_path)
    assert json.loads((real / "unet" / "config.json").read_text())["block_out_channels"] == [320, 640, 1280, 1280]


# ------------------------------------------------------------------------------------------------ pipelines


def generate(pipe, prompt: str = "a lighthouse at dusk") -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, num_inference_steps=4, height=64, width=64,
                generator=torch.Generator().manual_seed(3), output_type="np").images


@pytest.mark.parametrize("family", sd.FAMILIES)
def test_load_pipeline_offline_equals_in_memory_kit(files, family, no_network):
    config_dir = loading.pipeline_config_dir(files[family], family, files["cache"])
    pipe = loading.load_pipeline(files[family], family, config_dir)
    assert type(pipe).__name__ == loading.PIPELINE_CLASSES[family]
    assert np.array_equal(generate(pipe), generate(sd.tiny_pipeline(family, seed=21)))


def test_load_pipeline_rejects_wrong_family_and_config(files):
    sdxl_dir = loading.pipeline_config_dir(files["sdxl"], "sdxl", files["cache"])
    with pytest.raises(CheckpointError, match="set family: sdxl"):
        loading.load_pipeline(files["sdxl"], "sd15", loading.pipeline_config_dir(files["sdxl"], "sd15", files["cache"]))
    with pytest.raises(CheckpointError, match="needs StableDiffusionPipeline"):
        loading.load_pipeline(files["sd15"], "sd15", sdxl_dir)
    with pytest.raises(CheckpointError, match="nowhere: not a directory"):
        loading.load_pipeline(files["sd15"], "sd15", files["cache"] / "nowhere")
    (files["cache"] / "empty").mkdir(exist_ok=True)
    with pytest.raises(CheckpointError, match="no model_index.json; build the config dir with .*family_config_dir"):
        loading.load_pipeline(files["sd15"], "sd15", files["cache"] / "empty")
    with pytest.raises(ValueError, match="v_prediction"):
        loading.load_pipeline(files["sdxl"], "sdxl", sdxl_dir, prediction_type="v-pred")


def test_vae_override_and_prediction_type(files, tmp_path):
    config_dir = loading.pipeline_config_dir(files["sd15"], "sd15", files["cache"])
    vae_file = sd.write_tiny_vae(tmp_path / "other.vae.safetensors", "sd15", seed=99)
    pipe = loading.load_pipeline(files["sd15"], "sd15", config_dir, vae=vae_file, prediction_type="v_prediction")
    expected = sd.tiny_state_dicts("sd15", seed=99)["vae"]
    loaded = pipe.vae.state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    not_vae = header_file(tmp_path, "not-vae", {"foo.weight": [2, 2]})
    with pytest.raises(CheckpointError, match="not a VAE"):
        loading.load_pipeline(files["sd15"], "sd15", config_dir, vae=not_vae)


def test_checkpoint_without_vae_needs_one(files, tmp_path):
    from safetensors.torch import load_file

    tensors = {k: v for k, v in load_file(str(files["sd15"])).items() if not k.startswith("first_stage_model.")}
    path = tmp_path / "novae.safetensors"
    save_file(tensors, str(path))
    config_dir = loading.pipeline_config_dir(files["sd15"], "sd15", files["cache"])
    with pytest.raises(CheckpointError, match="no VAE"):
        loading.load_pipeline(path, "sd15", config_dir)
    vae_file = sd.write_tiny_vae(tmp_path / "vae.safetensors", "sd15", seed=21)
    pipe = loading.load_pipeline(path, "sd15", config_dir, vae=vae_file)
    assert np.array_equal(generate(pipe), generate(sd.tiny_pipeline("sd15", seed=21)))


def test_pickle_checkpoint_refused_by_default_and_loaded_weights_only_on_request(files, tmp_path):
    from safetensors.torch import load_file

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(files["sd15"])), "global_step": 1234}, ckpt)
    config_dir = loading.pipeline_config_dir(files["sd15"], "sd15", files["cache"])
    with pytest.raises(CheckpointError, match="allow_pickle") as info:
        loading.load_pipeline(ckpt, "sd15", config_dir)
    assert str(ckpt) in str(info.value) and "arbitrary code" in str(info.value)
    pipe = loading.load_pipeline(ckpt, "sd15", config_dir, allow_pickle=True)
    assert np.array_equal(generate(pipe), generate(sd.tiny_pipeline("sd15", seed=21)))


class Payload:
    """Unpickling this object would create the marker file (the classic malicious-checkpoint trick)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_never_runs(files, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)},
                "payload": Payload(marker)}, evil)
    config_dir = loading.pipeline_config_dir(files["sd15"], "sd15", files["cache"])
    with pytest.raises(CheckpointError, match="allow_pickle"):
        loading.load_pipeline(evil, "sd15", config_dir)
    with pytest.raises(CheckpointError, match="weights_only"):
        loading.load_pipeline(evil, "sd15", config_dir, allow_pickle=True)
    with pytest.raises(CheckpointError, match="weights_only"):
        loading.convert_pickle_checkpoint(evil, tmp_path / "out.safetensors")
    with pytest.raises(CheckpointError, match="weights_only"):
        loading.detect_family(evil, allow_pickle=True)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the control: the payload is real and does run when allowed
    assert marker.exists()
