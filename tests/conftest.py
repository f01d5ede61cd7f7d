"""Shared test setup: offline hub, one torch thread (tiny models gain nothing from two and lose much under load)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)


import importlib.util  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from ghostreview.protocol import cut_benchmark  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def denormals_flushed() -> bool:
    """Whether the processor flushes subnormal floats to zero (torch.set_flush_denormal(True): process-wide)."""
    return 5e-324 * 1.0 == 0.0


@pytest.fixture(autouse=True)
def _denormals_as_before():
    """A test that runs a model command in this process (the CLI's kit or convert-clip, a stage's main) calls
    stage_runtime(), which flushes denormals for the whole process; later tests would inherit it (hypothesis refuses
    to draw floats then). Each test leaves the setting as the suite started: off."""
    yield
    if denormals_flushed():
        torch.set_flush_denormal(False)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test (an AssertionError, which no library's offline
    fallback catches as it would an OSError)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def small_benchmark(dest: Path, general: int = 2, styles: int = 2, loras: int = 2) -> Path:
    """The v1 benchmark cut to a few items per task (same files, same schema), for fast pipeline tests."""
    cut_benchmark(ROOT / "data" / "benchmark" / "v1", dest, general, styles, loras)
    return dest


def placeholder_params(model: str, checkpoint: str, **overrides) -> dict:
    """Params of a small test workspace: a cut benchmark in ``bench``, scorer files under ``scorers/`` (placeholders
    where a test stops before any scorer loads), LoRAs, references and headers in their usual folders."""
    params = {
        "benchmark": {"dir": "bench", "images_per_item": {"general": 1, "style": 1, "lora": 1}},
        "paths": {"loras": {"sd15": "loras/sd15", "sdxl": "loras/sdxl"}, "style_refs": "refs",
                  "lora_headers": {"sd15": "headers/sd15", "sdxl": "headers/sdxl"},
                  "image_store": "store", "cache": "cache"},
        "generation": {"sampler": "Euler a", "steps": 2, "width": 64, "height": 64, "hires": {"enabled": False}},
        "scoring": {"clip": {"arch": "tiny", "weights": "scorers/clip.safetensors",
                             "model_config": "scorers/clip.json"},
                    "aesthetic": {"weights": "scorers/head.pth", "sha256": None},
                    "style": {"vgg_weights": "scorers/vgg.safetensors"}},
        "models": {model: {"checkpoint": checkpoint}},
    }
    return params | overrides


def stage_script(name: str):
    """A stage script (``stages/<name>.py``) as a module: its tables and functions, its ``main`` not run."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
