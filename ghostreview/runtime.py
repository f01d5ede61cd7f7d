"""Small runtime helpers shared by the stage scripts: offline mode, device and dtype choice, library versions."""

from __future__ import annotations

import os
from importlib import metadata


def force_offline() -> None:
    """No stage touches the network: make any stray hub call fail at once instead of timing out."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["DVC_NO_ANALYTICS"] = "1"


def pick_device(name: str) -> str:
    """``auto`` is the first CUDA GPU when there is one, else the CPU."""
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(name: str, device: str):
    """``auto`` is float16 on a GPU (what A1111 and ComfyUI use) and float32 on the CPU."""
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def library_versions(names: tuple[str, ...] = ("torch", "diffusers", "transformers")) -> dict[str, str]:
    """Versions of the libraries that draw or score, recorded with every image and score."""
    return {n: metadata.version(n) for n in names}
