"""HPSv2.1: Human Preference Score v2.1, an open_clip ViT-H-14 fine-tuned on human choices (HPDv2).

Definition (tgxs002/HPSv2, ``hpsv2/img_score.py`` with weights ``HPS_v2.1_compressed.pt``; written here from that
description, not copied):
- model: open_clip ``ViT-H-14`` (GELU, not QuickGELU), its state dict stored under the key ``"state_dict"`` of the
  ``.pt`` file, loaded strictly into a freshly built model. Read here with ``torch.load(weights_only=True)``: a
  pickle holding anything but tensors and plain containers is refused.
- score per image = cosine of the L2-normalized image and prompt embeddings, i.e. the diagonal of
  ``image_features @ text_features.T`` WITHOUT ``logit_scale`` (the scorer's raw output, about 0.2-0.35 for real
  images; the HPSv2 benchmark tables print 100 x the mean). Higher is better; compare within one prompt.
- preprocessing: HPSv2's ``preprocess_val`` (``light_augmentation=True``): RGB, to a [0, 1] float tensor FIRST,
  then a bicubic tensor resize of the longest side to the model's image size (``round(side * scale)``, skipped when
  the longest side already fits), zero padding to a square (left/top get the floor of half the gap), normalization.
  Size, mean, std and interpolation come from the open_clip model's own ``preprocess_cfg`` (OpenAI mean/std for
  ViT-H-14); nothing here retypes them. HPSv2 leaves torchvision's antialias default, which is True since
  torchvision 0.17, so antialias is on here (hpsv2 installed with an older torchvision scores resized images
  slightly differently).
- text: open_clip's tokenizer for the arch (77 tokens); a longer prompt is cut keeping EOT last and flagged
  ``text_truncated`` (``ghostreview.scoring.clip.tokenize``, the same ids open_clip's tokenizer gives).
HPSv2's scorer runs under CUDA autocast (fp16) on a GPU; here the forwards run in the model's dtype (float32).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ghostreview.scoring.batching import padded, paired_batches
from ghostreview.scoring.clip import ClipNetwork, register_model_config, tokenize
from ghostreview.scoring.metric import MetricInfo
from ghostreview.scoring.weights import OnDevice, WeightsError, read_state_dict, verify_weights
from ghostreview.util.runtime import pick_device

if TYPE_CHECKING:
    import torch
# torch and open_clip are imported where a model is built or run: the registry reads INFO without them.

INFO = MetricInfo(
    name="hpsv21",
    version="1",
    higher_is_better=True,
    unit="cosine of image and prompt embeddings (HPSv2 scorer's raw output, about 0.2-0.35)",
    grouped_by="prompt",
    description="HPSv2.1 human preference score: open_clip ViT-H-14 fine-tuned on HPDv2, cos(image, prompt)",
    label="HPSv2.1",
    axis_label="HPSv2.1 score",
)

ARCH = "ViT-H-14"
WEIGHTS_FILE = "HPS_v2.1_compressed.pt"
# As published (Hugging Face LFS pointer, xswu/HPSv2 commit 697403c): 1,972,490,005 bytes (fp16 tensors).
PUBLISHED_SHA256 = "c57a38fb4a2f7e7c15bf00da2ea377cdf165448b4dd1052a484c215a998c9837"
SOURCE = f"https://huggingface.co/xswu/HPSv2/resolve/main/{WEIGHTS_FILE} (see docs/judges.md)"
FIX = (f"use the published {WEIGHTS_FILE} (a dict holding the model's tensors under 'state_dict'); see "
       "docs/judges.md")


@dataclass
class HpsModel(OnDevice):
    """A loaded HPSv2.1 judge: eval-mode open_clip model, its preprocessing settings, tokenizer and provenance."""

    model: ClipNetwork
    preprocess_cfg: Mapping[str, Any]
    tokenizer: Any
    arch: str
    weights_sha256: str


def unwrap_state_dict(raw: Mapping, source: str) -> dict:
    """The model tensors of an HPSv2 file: ``raw["state_dict"]`` (the published .pt), or ``raw`` itself when it is
    already a flat dict of tensors (a .safetensors conversion). Anything else fails naming ``source``."""
    import torch

    state = raw.get("state_dict", raw)
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(f"{source}: 'state_dict' holds {type(state).__name__}, not a dict of tensors; {FIX}")
    odd = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if odd:
        raise WeightsError(f"{source}: not an HPSv2 state dict (non-tensor entries {odd[:5]}, top-level keys "
                           f"{sorted(raw)[:5]}); {FIX}")
    return dict(state)


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], arch: str, source: str) -> None:
    """``model.load_state_dict(state, strict=True)``; missing/unexpected keys and shape mismatches name the file."""
    result = model.state_dict()
    missing = sorted(set(result) - set(state))
    extra = sorted(set(state) - set(result))
    if missing or extra:
        raise WeightsError(f"{source}: not an open_clip {arch} state dict (missing {len(missing)} keys, first "
                           f"{missing[:3]}; unexpected {len(extra)}, first {extra[:3]}); {FIX}")
    wrong = [(k, tuple(v.shape), tuple(result[k].shape)) for k, v in state.items() if v.shape != result[k].shape]
    if wrong:
        key, got, want = wrong[0]
        raise WeightsError(f"{source}: {key} has shape {got}, {arch} expects {want} ({len(wrong)} tensors differ): "
                           f"weights of another architecture; {FIX}")
    model.load_state_dict(state, strict=True)


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Hide open_clip's "No pretrained weights loaded ... initialized randomly" warning: the weights are loaded
    right after, from the verified file, and the message would say the opposite of what happens."""
    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def load_hpsv21(weights: Path, arch: str = ARCH, model_config: Path | None = None, device: str = "cpu",
                expected_sha256: str | None = None, hash_cache: Path | None = None) -> HpsModel:
    """Load the HPSv2.1 judge from a local weights file, offline.

    weights: ``HPS_v2.1_compressed.pt`` (or a .safetensors holding the same flat state dict).
    arch: a registered open_clip config ("ViT-H-14"; tiny stand-ins pass their JSON as ``model_config``).
    expected_sha256: verified before anything is read when given (``hash_cache``: see ``clip.load_clip``).
    Raises WeightsError naming the file: wrong hash, pickled objects (a whole-model pickle), wrong keys or shapes.
    """
    import open_clip

    weights = Path(weights)
    sha = verify_weights(weights, expected_sha256, SOURCE, cache_file=hash_cache)
    if model_config is not None:
        register_model_config(arch, model_config)
    if open_clip.get_model_config(arch) is None:
        raise ValueError(f"Unknown open_clip arch {arch!r}: pass its JSON as model_config. "
                         f"Available: {open_clip.list_models()}")
    state = unwrap_state_dict(read_state_dict(weights), str(weights))
    with _quiet_random_init():
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
    load_into(model, state, arch, str(weights))
    model = model.to(device).eval()
    return HpsModel(model, dict(model.visual.preprocess_cfg), open_clip.get_tokenizer(arch), arch, sha)


@dataclass(frozen=True)
class HpsSpec:
    """Which HPSv2.1 to load, and where: the local weights file, the open_clip arch (``model_config``: its JSON, for
    archs open_clip lacks, such as the kit's stand-in), the sha256 the file must have (None: not checked) and a
    device name ("auto", "cpu", "cuda:1", ...; ``runtime.pick_device`` refuses an unusable one before any weights
    are read)."""

    weights: Path
    arch: str = ARCH
    model_config: Path | None = None
    sha256: str | None = None
    device: str = "cpu"

    def load(self, hash_cache: Path | None = None) -> HpsModel:
        device = pick_device(self.device)
        return load_hpsv21(self.weights, self.arch, model_config=self.model_config, device=device,
                           expected_sha256=self.sha256, hash_cache=hash_cache)


def hps_preprocess(image: Image.Image, cfg: Mapping[str, Any]) -> torch.Tensor:
    """HPSv2's inference transform of one image -> [3, S, S] float32 (see the module docstring for the steps).

    cfg: open_clip's preprocess_cfg (``size``, ``mean``, ``std``, ``interpolation``, ``fill_color``).
    """
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    size = cfg["size"] if isinstance(cfg["size"], int) else int(cfg["size"][0])
    x = tvf.to_tensor(image.convert("RGB"))
    height, width = x.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_h, new_w = round(height * scale), round(width * scale)
        x = tvf.resize(x, [new_h, new_w], InterpolationMode(cfg["interpolation"]), antialias=True)
        pad_h, pad_w = size - new_h, size - new_w
        x = tvf.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=cfg["fill_color"])
    return tvf.normalize(x, list(cfg["mean"]), list(cfg["std"])).to(torch.float32)


def paired_cosine(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine: [N, D] and [N, D] embeddings (any norm) -> [N]; HPSv2's diagonal of img @ txt.T."""
    import torch.nn.functional as F

    return (F.normalize(image_features, dim=-1) * F.normalize(text_features, dim=-1)).sum(dim=-1)


def prompt_features(judge: HpsModel, prompts: Sequence[str], batch_size: int) -> tuple[dict[str, torch.Tensor],
                                                                                      dict[str, bool]]:
    """Normalized text features and truncation flags per distinct prompt (each encoded once, fixed-shape forwards)."""
    import torch

    distinct = list(dict.fromkeys(prompts))
    ids, flags = tokenize(judge.tokenizer, distinct)
    feats = []
    with torch.inference_mode():
        for start in range(0, len(distinct), batch_size):
            chunk = ids[start : start + batch_size]
            out = judge.model.encode_text(padded(chunk, batch_size).to(judge.device), normalize=True)
            feats.append(out[: len(chunk)].float())
    table = torch.cat(feats) if feats else torch.zeros(0)
    return {p: table[i] for i, p in enumerate(distinct)}, dict(zip(distinct, flags, strict=True))


def hpsv21_scores(judge: HpsModel, images: Iterable[Image.Image], prompts: Sequence[str], batch_size: int = 16,
                  progress: Callable[[int], object] = lambda n: None) -> tuple[np.ndarray, list[bool]]:
    """HPSv2.1 score of each (image, prompt) pair -> ([N] float32 cosines, [N] text_truncated flags).

    prompts are plain text (A1111 syntax removed), one per image; images are read lazily. Image forwards hold
    exactly ``batch_size`` images (``ghostreview.scoring.batching``), so a score never depends on the other images.
    """
    import torch

    text, flags = prompt_features(judge, prompts, batch_size)
    scores = [np.zeros(0, np.float32)]
    with torch.inference_mode():
        for batch, batch_prompts in paired_batches(images, prompts, batch_size):
            pixels = padded(torch.stack([hps_preprocess(im, judge.preprocess_cfg) for im in batch]), batch_size)
            feats = judge.model.encode_image(pixels.to(judge.device), normalize=True)[: len(batch)].float()
            txt = torch.stack([text[p] for p in batch_prompts])
            scores.append(paired_cosine(feats, txt).cpu().numpy().astype(np.float32))
            progress(len(batch))
    return np.concatenate(scores), [flags[p] for p in prompts]
