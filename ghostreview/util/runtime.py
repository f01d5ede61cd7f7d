"""Small runtime helpers shared by the stage scripts: offline mode, device and dtype choice, library versions, the
stages' progress display and the silencing of the libraries underneath."""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import Any, Generic, TextIO, TypeVar

from ghostreview.errors import UserError

# Copied from ghostreview.config.DEVICE, which checks params when they are read (a leaf: it may not import this
# module); pick_device refuses any other name too. tests/test_config.py keeps the two equal.
DEVICE = re.compile(r"auto|cpu|mps|cuda(?::([0-9]{1,2}))?")

T = TypeVar("T")

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



# --------------------------------------------------------------------------------------------------------------------
# Progress and quiet: one bar per stage, nothing from the libraries underneath

# Seconds between two plain progress lines when stderr is not a terminal (a DVC log, a CI job): a line at the start,
# then at most one per interval, and one at the end.
PLAIN_INTERVAL = 30.0


def _duration(seconds: float) -> str:
    """``4s``, ``2m05s``, ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class PlainProgress(Generic[T]):
    """Progress as whole lines (``embed tiny: 12/40 images (30%), 0m21s, ETA 0m49s``) for a stderr that is no
    terminal: a line when it starts, at most one per ``interval`` seconds, and a last one when it closes. The subset
    of tqdm's interface the stages use: iteration, ``update(n)``, ``close()``, a context manager."""

    def __init__(self, iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", interval: float = PLAIN_INTERVAL, file: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.interval, self.file, self.clock = interval, file, clock
        self.n = 0
        self.start = self.last = clock()
        self.closed = False
        self.write()

    def line(self) -> str:
        elapsed = self.clock() - self.start
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        text = f"{self.desc}: {count} {self.unit}"
        if self.total:
            text += f" ({100 * self.n // self.total}%)"
        text += f", {_duration(elapsed)}"
        if self.total and 0 < self.n < self.total:
            text += f", ETA {_duration(elapsed / self.n * (self.total - self.n))}"
        return text

    def write(self) -> None:
        print(self.line(), file=self.file or sys.stderr, flush=True)
        self.last = self.clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.interval:
            self.write()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.write()

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("PlainProgress made with total= only: call update(n)")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> PlainProgress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str, unit: str = "it",
                 file: TextIO | None = None, disable: bool = False) -> Any:
    """The one progress display of a stage, on stderr (stdout keeps the stage's result line): a tqdm bar with
    counts, rate and ETA on a terminal, :class:`PlainProgress` lines otherwise (DVC logs; ``\\r`` redraws would
    fill them); nothing with ``disable``. Use as tqdm: wrap an iterable, or
    ``with progress_bar(total=n, ...) as bar: bar.update(k)``."""
    from tqdm import tqdm

    stream = file or sys.stderr
    if disable or stream.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, disable=disable)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, file=stream)


# Known-harmless messages of the libraries underneath, each dropped by its logger and exact text, nothing broader.
# diffusers' ModelMixin.to(dtype) warns whenever a dtype is passed, even when no module must stay in float32 (the
# list is empty for every UNet and VAE we load): https://github.com/huggingface/diffusers, models/modeling_utils.py.
HARMLESS_LOG_MESSAGES: dict[str, re.Pattern[str]] = {
    "diffusers.models.modeling_utils": re.compile(
        r"There are modules in \w+ that should be kept in float32: \[\]\. Casting directly with `to\(\)` can lead to "
        r"inconsistent results; set `torch_dtype` in `from_pretrained\(\)` instead to keep these modules in float32\."
    ),
}


class _DropMessage(logging.Filter):
    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.fullmatch(record.getMessage()) is None

# torchsde's Brownian interval warns when queried outside [t0, t1]; DPM++ SDE's tree spans the schedule's own
# sigma_min..sigma_max and is queried at those sigmas, which arrive as float32 while the tree keeps the ends it was
# built with: the "outside" is the last digits (ta=0.0291675366 against t0=0.029168, ComfyUI issue 1230). Matched
# by the message's start, in torchsde's module only.
HARMLESS_WARNINGS = (r"Should have (ta|tb)>=t0 but got ", r"Should have (ta|tb)<=t1 but got ")


def quiet_third_party() -> None:
    """No progress bars but the stage's own, and none of the known-harmless messages above.

    Turns off the bars of huggingface_hub (``HF_HUB_DISABLE_PROGRESS_BARS``, also read when it is imported later)
    and, where they are already imported (never imported here: a scoring stage must not pay for diffusers), those
    of diffusers (``Loading pipeline components...``) and transformers. A pipeline's own per-step bars are its
    own setting: ``pipe.set_progress_bar_config(disable=True)`` where the pipeline is made. Idempotent.
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module=r"torchsde\.")
    for name, pattern in HARMLESS_LOG_MESSAGES.items():
        log = logging.getLogger(name)  # the logger the library gets by the same name, imported or not
        if not any(isinstance(f, _DropMessage) and f.pattern is pattern for f in log.filters):
            log.addFilter(_DropMessage(pattern))
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    for library in ("diffusers", "transformers"):
        if library in sys.modules:
            importlib.import_module(f"{library}.utils.logging").disable_progress_bar()
