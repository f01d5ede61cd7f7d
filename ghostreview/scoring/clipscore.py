"""CLIPScore: 100 * max(cos(image embedding, text embedding), 0), one value per image.

Conventions fixed for GhostReview: OpenAI CLIP ViT-L/14 (the aesthetic metric's CLIP, embeddings shared); no
"A photo depicts" prefix; weight 100 (torchmetrics' scale, not Hessel et al.'s 2.5); the clamp at 0 is applied per
image (torchmetrics clamps after averaging); the text is the prompt with A1111 syntax removed; text longer than 77
tokens is truncated keeping EOT as the last token and flagged (see ``ghostreview.scoring.clip.tokenize``).
"""

from __future__ import annotations

import numpy as np

from ghostreview.scoring.aesthetic import l2_normalize
from ghostreview.scoring.metric import MetricInfo

INFO = MetricInfo(
    name="clipscore",
    version="1",
    higher_is_better=True,
    unit="100*max(cos,0), range [0, 100]",
    grouped_by="prompt",
    description="CLIPScore on OpenAI CLIP ViT-L/14: 100*max(cos(image, prompt text), 0) per image",
    label="CLIPScore",
    axis_label="CLIPScore",
)


def clip_scores(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Row-wise pairs: image_emb [N, D], text_emb [N, D] (any norm) -> [N] float32 in [0, 100]."""
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb {image_emb.shape} and text_emb {text_emb.shape} must pair row by row")
    cos = np.sum(l2_normalize(image_emb) * l2_normalize(text_emb), axis=1)
    return (100.0 * np.maximum(cos, 0.0)).astype(np.float32)
