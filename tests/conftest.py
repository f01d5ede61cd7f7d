"""Shared test setup: offline hub, one torch thread (tiny models gain nothing from two and lose much under load)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)


from pathlib import Path  # noqa: E402

from ghostreview.benchmark import cut_benchmark  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def small_benchmark(dest: Path, general: int = 2, styles: int = 2, loras: int = 2) -> Path:
    """The v1 benchmark cut to a few items per task (same files, same schema), for fast pipeline tests."""
    cut_benchmark(ROOT / "data" / "benchmark" / "v1", dest, general, styles, loras)
    return dest
