"""Seed diversity: how different a model's images of one prompt are from each other, from their CLIP embeddings.

Definition: for the images of one general prompt (all its seeds), the mean over the pairs i < j of the cosine
distance ``1 - cos(e_i, e_j)`` of their CLIP ViT-L/14 image embeddings (the aesthetic metric's, read from the score
store: no new forward pass). 0 = the same image on every seed; higher = more varied. It catches the "same face on
every seed" of over-merged checkpoints. One value per (model, prompt), which standardize compares across models per
prompt like every other metric; a prompt drawn with fewer than two seeds has none. Flagged images (NaN, black) are
left out of the set, as they are of every other metric.
"""

from __future__ import annotations

import numpy as np

from ghostreview.scoring.aesthetic import l2_normalize
from ghostreview.scoring.metric import MetricInfo

INFO = MetricInfo(
    name="diversity",
    version="1",
    higher_is_better=True,
    unit="mean pairwise cosine distance of the seeds' CLIP image embeddings, range [0, 2]",
    grouped_by="prompt",
    description="seed diversity: mean pairwise cosine distance between the CLIP image embeddings of a prompt's seeds",
    label="Diversity",
    axis_label="seed diversity",
)


def seed_diversity(embeddings: np.ndarray) -> float:
    """Mean pairwise cosine distance of the rows of ``embeddings`` [n >= 2, D] (any norm), in float64."""
    if len(embeddings) < 2:
        raise ValueError(f"diversity needs at least 2 images, got {len(embeddings)}")
    e = l2_normalize(np.asarray(embeddings, np.float64))
    cos = e @ e.T
    upper = np.triu_indices(len(e), k=1)
    return float(np.mean(1.0 - cos[upper]))
