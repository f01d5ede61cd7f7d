"""A tiny v-prediction SDXL stand-in (NoobAI-XL V-Pred's layout): the tiny SDXL checkpoint plus the ``v_pred`` and
``ztsnr`` marker keys that A1111 (PR 16567 and 16569, 1.10 dev), Forge and ComfyUI read to switch a checkpoint to
v-prediction and to the zero-terminal-SNR noise schedule.

The markers are empty tensors (``torch.tensor([])``, float32, shape [0]): their presence is the signal, as in the
files those tools read; nothing reads their values. The weights are the tiny kit's random ones (``kit.sd``), so the
stand-in proves that the right schedule is chosen, not that the images look like anything.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ghostreview.generation.bases import V_PRED_KEY, ZTSNR_KEY
from ghostreview.kit.sd import _tiny_ldm_checkpoint, kit_metadata, save_safetensors_atomic


def write_tiny_vpred_checkpoint(path: Path, seed: int, *, ztsnr: bool = True) -> Path:
    """Write the tiny SDXL checkpoint of ``seed`` with the ``v_pred`` marker (and ``ztsnr`` unless ``ztsnr`` is
    False). Byte-identical for the same arguments. Returns ``path``."""
    tensors = _tiny_ldm_checkpoint("sdxl", seed)
    tensors[V_PRED_KEY] = torch.tensor([])
    if ztsnr:
        tensors[ZTSNR_KEY] = torch.tensor([])
    return save_safetensors_atomic(tensors, path, kit_metadata("sdxl", seed))
