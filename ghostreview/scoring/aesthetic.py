"""Aesthetic score: LAION improved aesthetic predictor v2 on OpenAI CLIP ViT-L/14 image embeddings.

Definition (christophschuhmann/improved-aesthetic-predictor, weights ``sac+logos+ava1-l14-linearMSE.pth``): an MLP
Linear(768,1024) Dropout(.2) Linear(1024,128) Dropout(.2) Linear(128,64) Dropout(.1) Linear(64,16) Linear(16,1)
with NO activations (so it is affine overall) and dropouts inactive at inference, stored under the keys
``layers.{0,2,4,6,7}.{weight,bias}``. Its input is the L2-normalized image embedding; unnormalized input gives
scores around 20-30. Written here from that description, not copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ghostreview.scoring.batching import map_rows
from ghostreview.scoring.metric import MetricInfo
from ghostreview.scoring.weights import read_state_dict

if TYPE_CHECKING:
    from torch import Tensor
# torch is imported where the head runs: the registry reads INFO without it (tests/test_imports.py).

INFO = MetricInfo(
    name="aesthetic",
    version="1",
    higher_is_better=True,
    unit="LAION aesthetic score (about 1-10)",
    grouped_by="prompt",
    description="LAION improved aesthetic predictor v2 on L2-normalized OpenAI CLIP ViT-L/14 image embeddings",
    label="Aesthetic",
    axis_label="LAION aesthetic",
)

# Linear layers of the original nn.Sequential (indices 1, 3, 5 are Dropouts) and their (out, in) shapes.
LAYERS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("layers.0", (1024, 768)),
    ("layers.2", (128, 1024)),
    ("layers.4", (64, 128)),
    ("layers.6", (16, 64)),
    ("layers.7", (1, 16)),
)


def laion_head(x: Tensor, state: Mapping[str, Tensor]) -> Tensor:
    """Apply the head: x [N, 768] L2-normalized embeddings -> [N] scores (same dtype as the weights)."""
    for name, _ in LAYERS:
        x = x @ state[f"{name}.weight"].T + state[f"{name}.bias"]
    return x[:, 0]


def check_head(state: Mapping[str, Tensor], source: str = "head state") -> None:
    """Fail naming the key if ``state`` lacks a key or has a wrong shape."""
    expected = {f"{n}.weight": shape for n, shape in LAYERS} | {f"{n}.bias": shape[:1] for n, shape in LAYERS}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{source}: not a LAION aesthetic v2 head (missing keys {missing}, unexpected keys {extra})")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected {shape}")


def load_head(path: Path) -> dict[str, Tensor]:
    """Load the head's state dict (torch pickle via weights_only=True, or .safetensors) as float32 tensors."""
    path = Path(path)
    state = read_state_dict(path)
    check_head(state, str(path))
    return {k: v.float() for k, v in state.items()}


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, [N, D] float64; a zero row fails naming its index."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {emb.shape}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(f"embedding rows {zero.tolist()[:5]} have zero norm; cannot normalize")
    return emb / norms


# Rows per forward of the head: a constant, so that a score never depends on how many images its model has
# (``ghostreview.scoring.batching``). The head is tiny; a fixed 256 costs nothing measurable.
HEAD_BATCH = 256


def aesthetic_scores(embeddings: np.ndarray, head_state: Mapping[str, Tensor]) -> np.ndarray:
    """Aesthetic score per image: [N, 768] unnormalized CLIP image embeddings -> [N] float32 (normalized here)."""
    import torch

    x = torch.from_numpy(l2_normalize(embeddings)).float()
    with torch.inference_mode():
        scores = map_rows(lambda rows: laion_head(rows, head_state), x, HEAD_BATCH)
    return scores.numpy().astype(np.float32)
