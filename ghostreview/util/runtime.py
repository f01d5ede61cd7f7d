"""Small runtime helpers shared by the stage scripts: offline mode, device and dtype choice, library versions."""

from __future__ import annotations

import os
import re
from importlib import metadata

from ghostreview.errors import UserError

# Copied from ghostreview.config.DEVICE, which checks params when they are read (a leaf: it may not import this
# module); pick_device refuses any other name too. tests/test_config.py keeps the two equal.
DEVICE = re.compile(r"auto|cpu|mps|cuda(?::([0-9]{1,2}))?")

DEVICE_FIX = "Use auto (the first CUDA GPU when there is one, else the CPU) or cpu in params.yaml"


class DeviceError(UserError, ValueError):
    """A device name that is not one, or names a device this machine lacks."""


def stage_runtime() -> None:
    """No stage touches the network: make any stray hub call fail at once instead of timing out.

    Also flushes denormal floats to zero on the CPU: random-weight activations decay into denormals, which x86 CPUs
    compute up to 100x slower (measured: the demo's draws took 2x longer without it).
    """
    import torch

    torch.set_flush_denormal(True)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["DVC_NO_ANALYTICS"] = "1"


def set_cpu_threads(n: int) -> None:
    """Torch's CPU thread count; 0 keeps torch's default. Small models lose badly to thread contention."""
    import torch

    if n > 0:
        torch.set_num_threads(n)


def pick_device(name: str) -> str:
    """The torch device for a params device name: ``auto`` is the first CUDA GPU when there is one, else the CPU;
    ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are checked against this machine before any model loads.

    Raises:
        DeviceError: a name of another syntax, or a GPU this machine (as torch sees it) does not have.
    """
    import torch

    match = DEVICE.fullmatch(name)
    if match is None:
        raise DeviceError(f"{name!r} is not a device: use auto, cpu, cuda, cuda:N or mps. {DEVICE_FIX}.")
    gpus = torch.cuda.device_count()  # the one question asked of CUDA (0 without a driver)
    if name == "auto":
        return "cuda" if gpus else "cpu"
    if name.startswith("cuda") and not gpus:
        raise DeviceError(f"{name}: torch finds no CUDA GPU on this machine (torch {torch.__version__}, CUDA build "
                          f"{torch.version.cuda or 'none'}). {DEVICE_FIX}.")
    if match.group(1) is not None and int(match.group(1)) >= gpus:
        have = "cuda:0" if gpus == 1 else f"cuda:0 to cuda:{gpus - 1}"
        raise DeviceError(f"{name}: this machine has {gpus} CUDA GPU{'s' if gpus > 1 else ''} ({have}). Use one of "
                          f"them, or auto, in params.yaml.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"mps: torch finds no Apple GPU (MPS) on this machine. {DEVICE_FIX}.")
    return name


def pick_dtype(name: str, device: str):
    """``auto`` is float16 on a GPU (what A1111 and ComfyUI use) and float32 on the CPU."""
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def library_versions(names: tuple[str, ...] = ("torch", "diffusers", "transformers")) -> dict[str, str]:
    """Versions of the libraries that draw or score, recorded with every image and score."""
    return {n: metadata.version(n) for n in names}

