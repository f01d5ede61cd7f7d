"""PickScore v1: a CLIP ViT-H-14 (Hugging Face ``CLIPModel``) fine-tuned on Pick-a-Pic preference pairs.

Definition (yuvalkirstain/PickScore, model card of ``yuvalkirstain/PickScore_v1``; written here from it, not
copied): image and prompt embeddings from ``get_image_features`` / ``get_text_features``, each L2-normalized;
score = ``logit_scale.exp() * cos`` (logit_scale is the model's own parameter, exp about 100, so real images score
about 18-23). Higher is better; compare within one prompt.
- processor: the one of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (PickScore's reference code loads it separately
  from the model), from a local folder: resize the shortest side to 224 (bicubic), center crop 224, OpenAI
  mean/std, all read from its ``preprocessor_config.json``. PickScore was published with transformers 4's PIL
  image processor; transformers 5's default ``CLIPImageProcessor`` resizes with torchvision instead (scores differ
  by about 1e-3 on images that need resizing), so the PIL backend (``CLIPImageProcessorPil``) is used here.
- text: truncated to 77 tokens (BOS + 75 + EOS, as the reference's ``truncation=True, max_length=77``) and flagged
  ``text_truncated``; padded to 77 so that every text forward has one shape (CLIP's causal mask makes padding
  after EOS irrelevant to the pooled embedding).
Both folders are read with ``local_files_only=True``; nothing downloads.

Provenance: a score depends on the weights and on the files that configure the model and its processor (the model's
``config.json`` names e.g. the activation; the processor's files the resize, crop, mean/std and tokenizer), so a
loaded judge's ``weights_sha256`` is :func:`judge_sha256` over all of them, not the weights file's sha256 alone
(which is what ``expected_sha256`` and params pin, as published).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ghostreview.scoring.batching import padded, paired_batches
from ghostreview.scoring.metric import MetricInfo
from ghostreview.scoring.weights import OnDevice, WeightsError, check_state_dict_file, sha256_file, verify_weights
from ghostreview.util.runtime import pick_device

if TYPE_CHECKING:
    import torch
# torch and transformers are imported where a model is built or run: the registry reads INFO without them.

INFO = MetricInfo(
    name="pickscore",
    version="1",
    higher_is_better=True,
    unit="logit_scale.exp() * cos(image, prompt), about 18-23 for real images",
    grouped_by="prompt",
    description="PickScore v1: CLIP ViT-H-14 fine-tuned on Pick-a-Pic, logit_scale.exp() * cos(image, prompt)",
    label="PickScore",
    axis_label="PickScore",
)

MODEL_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
# As published (Hugging Face LFS pointers of yuvalkirstain/PickScore_v1): model.safetensors, 3.94 GB.
PUBLISHED_SHA256 = "ef31ef6fc5ff4d9bb90dd232df4e145887ba62c5a03aa2841415f8c25f18d52e"
MAX_TOKENS = 77
# The processor folder's files that transformers reads for PickScore (the published folder also holds weights files,
# which are not read and not hashed).
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer_config.json", "tokenizer.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json")
FIX = (f"download {MODEL_REPO} (config.json + one weights file) and the processor files of {PROCESSOR_REPO} into "
       "local folders; see docs/judges.md")


@dataclass
class PickModel(OnDevice):
    """A loaded PickScore judge: eval-mode ``CLIPModel``, its image processor and tokenizer, and provenance
    (``weights_sha256``: :func:`judge_sha256` of the weights, the model config and the processor files)."""

    model: Any
    image_processor: Any
    tokenizer: Any
    weights_sha256: str


def weights_file(model_dir: Path) -> Path:
    """The weights file of a Hugging Face model folder: ``model.safetensors`` when present (the published repo holds
    both it and ``pytorch_model.bin``; safetensors holds no code), else ``pytorch_model.bin``."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise WeightsError(f"{model_dir}: no config.json, not a Hugging Face model folder; {FIX}")
    for name in WEIGHTS_NAMES:
        if (model_dir / name).is_file():
            return model_dir / name
    names = sorted(p.name for p in model_dir.iterdir())
    raise WeightsError(f"{model_dir}: none of {list(WEIGHTS_NAMES)} found (have {names}; a sharded folder cannot be "
                       f"pinned by one sha256: merge it into one model.safetensors); {FIX}")


def judge_sha256(weights_sha256: str, model_dir: Path, processor_dir: Path) -> str:
    """The provenance hash of a PickScore judge: sha256 of the text lines ``"<name> <sha256>\\n"`` for the weights
    file (its given sha256), ``model/config.json`` and each of :data:`PROCESSOR_FILES` present in the processor folder
    (as ``processor/<name>``), in that order. A file added, removed or edited changes it."""
    lines = [f"weights {weights_sha256}\n", f"model/config.json {sha256_file(Path(model_dir) / 'config.json')}\n"]
    lines += [f"processor/{name} {sha256_file(Path(processor_dir) / name)}\n" for name in PROCESSOR_FILES
              if (Path(processor_dir) / name).is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def check_processor_dir(processor_dir: Path) -> None:
    """The processor folder holds ``preprocessor_config.json`` and a tokenizer (``tokenizer.json``, or ``vocab.json``
    with ``merges.txt``); reads no file, so validation can call it before any library loads.

    Raises:
        WeightsError: naming the folder, the missing files and the fix.
    """
    processor_dir = Path(processor_dir)
    if not (processor_dir / "preprocessor_config.json").is_file():
        raise WeightsError(f"{processor_dir}: no preprocessor_config.json, not the processor folder of "
                           f"{PROCESSOR_REPO}; {FIX}")
    has = {name for name in ("tokenizer.json", "vocab.json", "merges.txt") if (processor_dir / name).is_file()}
    if "tokenizer.json" not in has and not {"vocab.json", "merges.txt"} <= has:
        raise WeightsError(f"{processor_dir}: no tokenizer (tokenizer.json, or vocab.json with merges.txt; have "
                           f"{sorted(has)}) in the processor folder of {PROCESSOR_REPO}; {FIX}")


def load_processor(processor_dir: Path) -> tuple[Any, Any]:
    """(PIL image processor, tokenizer) from the local processor folder; a missing file names the folder."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil

    check_processor_dir(processor_dir)
    try:
        images = CLIPImageProcessorPil.from_pretrained(str(processor_dir), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(processor_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{processor_dir}: not a loadable CLIP processor folder ({str(exc)[:300]}); {FIX}") from None
    return images, tokenizer


def load_pickscore(model_dir: Path, processor_dir: Path, device: str = "cpu",
                   expected_sha256: str | None = None, hash_cache: Path | None = None) -> PickModel:
    """Load PickScore from local folders, offline.

    model_dir: ``config.json`` + one weights file (sha256-verified when ``expected_sha256`` is given; a pickle is
        read with weights_only=True, so a whole-model pickle is refused before transformers sees it).
    processor_dir: the processor files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (tokenizer + preprocessor config).
    hash_cache: see ``clip.load_clip``.
    """
    from transformers import CLIPModel

    path = weights_file(model_dir)
    sha = verify_weights(path, expected_sha256, f"https://huggingface.co/{MODEL_REPO} (see docs/judges.md)",
                         cache_file=hash_cache)
    check_state_dict_file(path)
    images, tokenizer = load_processor(processor_dir)
    provenance = judge_sha256(sha, model_dir, processor_dir)
    # transformers types from_pretrained through a decorator that mypy reads as taking the model instance
    loader: Any = CLIPModel.from_pretrained
    model = loader(str(model_dir), local_files_only=True, use_safetensors=path.suffix == ".safetensors")
    return PickModel(model.to(device).eval(), images, tokenizer, provenance)


@dataclass(frozen=True)
class PickSpec:
    """Which PickScore to load, and where: the local model folder (config.json + one weights file), the local
    processor folder of laion/CLIP-ViT-H-14-laion2B-s32B-b79K, the sha256 the weights file must have (None: not
    checked) and a device name (``runtime.pick_device`` refuses an unusable one before any weights are read)."""

    model_dir: Path
    processor_dir: Path
    sha256: str | None = None
    device: str = "cpu"

    def load(self, hash_cache: Path | None = None) -> PickModel:
        device = pick_device(self.device)
        return load_pickscore(self.model_dir, self.processor_dir, device=device, expected_sha256=self.sha256,
                              hash_cache=hash_cache)


def text_ids(tokenizer: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """(input_ids [T, 77], attention_mask [T, 77], truncation flags): BOS + tokens + EOS cut to 77, padded to 77."""
    full = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]  # verbose: no "too long" warning
    flags = [len(ids) > MAX_TOKENS for ids in full]
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], flags


def paired_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """PickScore of row pairs: [N, D], [N, D] embeddings (any norm), the model's logit_scale (log) -> [N]."""
    import torch.nn.functional as F

    cos = (F.normalize(image_embeds, dim=-1) * F.normalize(text_embeds, dim=-1)).sum(dim=-1)
    return logit_scale.exp() * cos


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns an output object from ``get_*_features`` (its ``pooler_output`` is the projected
    embedding); transformers 4 returned the tensor itself."""
    return output if hasattr(output, "shape") else output.pooler_output


def prompt_embeds(judge: PickModel, prompts: Sequence[str], batch_size: int) -> tuple[dict[str, torch.Tensor],
                                                                                     dict[str, bool]]:
    """Text embedding and truncation flag per distinct prompt (each encoded once, forwards of ``batch_size``)."""
    import torch

    distinct = list(dict.fromkeys(prompts))
    ids, mask, flags = text_ids(judge.tokenizer, distinct)
    rows = []
    with torch.inference_mode():
        for start in range(0, len(distinct), batch_size):
            n = len(ids[start : start + batch_size])
            batch_ids = padded(ids[start : start + batch_size], batch_size).to(judge.device)
            # padding rows get a full mask (their outputs are dropped; an all-zero mask row is never formed)
            batch_mask = torch.cat([mask[start : start + n], torch.ones_like(mask[:1]).expand(batch_size - n, -1)])
            out = judge.model.get_text_features(input_ids=batch_ids, attention_mask=batch_mask.to(judge.device))
            rows.append(_features(out)[:n].float())
    table = torch.cat(rows) if rows else torch.zeros(0)
    return {p: table[i] for i, p in enumerate(distinct)}, dict(zip(distinct, flags, strict=True))


def pickscore_scores(judge: PickModel, images: Iterable[Image.Image], prompts: Sequence[str], batch_size: int = 16,
                     progress: Callable[[int], object] = lambda n: None) -> tuple[np.ndarray, list[bool]]:
    """PickScore of each (image, prompt) pair -> ([N] float32, [N] text_truncated flags).

    prompts are plain text, one per image; images are read lazily. Image forwards hold exactly ``batch_size``
    images (padded), so a score never depends on the other images of its batch.
    """
    import torch

    text, flags = prompt_embeds(judge, prompts, batch_size)
    scale = judge.model.logit_scale.detach().float()
    scores = [np.zeros(0, np.float32)]
    with torch.inference_mode():
        for batch, batch_prompts in paired_batches(images, prompts, batch_size):
            pixels = judge.image_processor([im.convert("RGB") for im in batch], return_tensors="pt")["pixel_values"]
            out = judge.model.get_image_features(pixel_values=padded(pixels, batch_size).to(judge.device))
            txt = torch.stack([text[p] for p in batch_prompts])
            scores.append(paired_logits(_features(out)[: len(batch)].float(), txt, scale).cpu().numpy())
            progress(len(batch))
    return np.concatenate(scores).astype(np.float32), [flags[p] for p in prompts]
