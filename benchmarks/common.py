"""Timing helpers shared by the benchmarks: interleaved repetitions, medians, machine description.

Every ratio a benchmark prints comes from one process: each path is warmed up once, then the paths are timed in
turn (A B, B A, A B, ... so that neither always runs first while the machine warms or another job starts), and the
median of the repeats is reported. The machine is shared: the 1-minute load average is printed with the figures.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "torchvision", "diffusers", "transformers", "open_clip_torch", "dvc", "numpy")


@dataclass
class Timings:
    """Seconds per repeat for each path, plus the last value each path returned (for correctness checks)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, slow: str, fast: str) -> float:
        """median(slow) / median(fast): how many times faster ``fast`` is."""
        return self.median(slow) / self.median(fast)

    def spread(self, name: str) -> str:
        """'min..max' of the repeats, for the printout."""
        return f"{min(self.seconds[name]):.3f}..{max(self.seconds[name]):.3f}"


def interleaved(paths: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None) -> Timings:
    """Time each zero-argument callable ``repeats`` times, interleaved, after ``warmup`` untimed calls each.

    Odd repeats run the paths in reverse order. ``sync`` runs before each clock read (e.g. cuda.synchronize).
    """
    out = Timings({name: [] for name in paths})
    names = list(paths)
    for name in names:
        for _ in range(warmup):
            out.results[name] = paths[name]()
    sync()
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            out.results[name] = paths[name]()
            sync()
            out.seconds[name].append(time.perf_counter() - start)
    return out


def timed(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def machine_line() -> str:
    """One line: CPU model, cores, torch threads, load average."""
    import torch

    return (f"CPU {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"load avg {load_average()}, python {platform.python_version()}")


def header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)
    print(machine_line(), flush=True)


def row(label: str, value: str) -> None:
    print(f"  {label:<52} {value}", flush=True)


def sh(args: list[str], cwd: Path, env: dict | None = None) -> str:
    """Run a command; its stdout, or a RuntimeError with the ends of its output."""
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd} ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout


def stage_env(*pythonpath: Path) -> dict:
    """The stages' environment in a benchmark workspace: this venv first on PATH, ``pythonpath`` first, offline."""
    return dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(map(str, pythonpath)),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
