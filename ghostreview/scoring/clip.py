"""CLIP image and text embeddings (open_clip), shared by the aesthetic and CLIPScore metrics.

The project's CLIP is OpenAI ViT-L/14, i.e. open_clip arch ``ViT-L-14-quickgelu`` (QuickGELU matters: plain
``ViT-L-14`` uses GELU and shifts the embeddings). Preprocessing is open_clip's own inference transform for the
arch; nothing here retypes its constants. Nothing downloads: the arch must be a registered config (built in, or a
JSON passed as ``model_config``) and the weights a local file.

Embeddings artifact (``data/embeddings/<model>.npz``): arrays ``image_hash`` [N] (str), ``embedding`` [N, D]
float32 **unnormalized** (raw ``encode_image`` output; each consumer L2-normalizes), ``arch`` and
``weights_sha256`` (0-d str) for provenance.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from ghostreview.scoring.batching import chunks, padded
from ghostreview.scoring.weights import OnDevice, check_state_dict_file, verify_weights, write_state_dict

if TYPE_CHECKING:
    import torch

# open_clip (with torchvision, timm and transformers under it: about 1.5 s) is imported only where a CLIP model is
# built or a config registered, so that the aesthetic stage, which reads stored embeddings, never pays for it; torch
# only where tensors are made, so that the embeddings artifact (and the report, through scoring.run) reads without it.

# Keys of OpenAI's TorchScript state dict that are not parameters of open_clip's CLIP.
_OPENAI_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


class VisionTower(Protocol):
    """What is read of an open_clip vision tower: the width of its embeddings."""

    output_dim: int


class ClipNetwork(Protocol):
    """What is used of an open_clip model (``open_clip.CLIP``, ``CustomTextCLIP``...): open_clip ships no type
    information, and ``nn.Module``'s attribute lookup would type ``visual`` and ``encode_*`` as ``Tensor | Module``."""

    visual: VisionTower

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...


@dataclass
class ClipModel(OnDevice):
    """A loaded CLIP: eval-mode model, open_clip's inference transform, its tokenizer, and provenance."""

    model: ClipNetwork
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Any
    arch: str
    weights_sha256: str

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)


def register_model_config(arch: str, model_config: Path) -> None:
    """Register a JSON model config with open_clip under ``arch`` (open_clip names configs by file stem)."""
    import open_clip

    model_config = Path(model_config)
    if not model_config.is_file():
        raise FileNotFoundError(f"CLIP model config not found: {model_config}")
    if model_config.stem != arch:
        raise ValueError(
            f"CLIP model config {model_config} registers arch {model_config.stem!r}, but arch={arch!r} was asked: "
            f"open_clip names a config by its file stem; rename the file to {arch}.json"
        )
    wanted = json.loads(model_config.read_text())
    if open_clip.get_model_config(arch) != wanted:
        open_clip.add_model_config(model_config)


def load_clip(
    arch: str,
    weights: Path,
    model_config: Path | None = None,
    device: str = "cpu",
    expected_sha256: str | None = None,
    hash_cache: Path | None = None,
) -> ClipModel:
    """Load an open_clip model from a local state-dict file, offline.

    arch: a registered open_clip config name (e.g. "ViT-L-14-quickgelu"), never a hub name.
    weights: local state dict (.safetensors, .bin, .pt) in open_clip's layout; see :func:`convert_openai_clip`.
    model_config: JSON config registered first (tiny stand-in archs), its stem must equal ``arch``.
    expected_sha256: verify the weights file before loading when given.
    hash_cache: the hash cache (``util.hashing.file_sha256``): a file hashed since its last change is not read again.
    """
    import open_clip

    if ":" in arch:
        raise ValueError(f"CLIP arch {arch!r} has a schema prefix; only local registered configs are allowed")
    if model_config is not None:
        register_model_config(arch, model_config)
    if open_clip.get_model_config(arch) is None:
        raise ValueError(
            f"Unknown CLIP arch {arch!r}: pass its JSON as model_config. Available: {open_clip.list_models()}"
        )
    # An absolute path to an existing file can never be mistaken by open_clip for a pretrained tag (which downloads).
    weights = Path(weights).resolve()
    sha = verify_weights(weights, expected_sha256, cache_file=hash_cache)
    check_state_dict_file(weights)  # a refused pickle is a WeightsError naming the file, before open_clip reads it
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(weights), device=device)
    model.eval()
    return ClipModel(model, preprocess, open_clip.get_tokenizer(arch), arch, sha)


def image_embeddings(clip: ClipModel, images: Iterable[Image.Image], batch_size: int = 16,
                     progress: Callable[[int], object] = lambda n: None) -> np.ndarray:
    """Unnormalized CLIP image embeddings, [N, D] float32, in input order (images are preprocessed by open_clip).

    Every forward holds exactly ``batch_size`` images (the last one padded: ``ghostreview.scoring.batching``), so an
    image's embedding depends on ``batch_size`` but never on the other images. ``progress(n)`` is called after each
    forward with the number of images it embedded.
    """
    import torch

    out = [np.zeros((0, clip.embed_dim), np.float32)]
    with torch.inference_mode():
        for batch in chunks(images, batch_size):
            pixels = padded(torch.stack([clip.preprocess(im) for im in batch]), batch_size).to(clip.device)
            out.append(clip.model.encode_image(pixels)[: len(batch)].float().cpu().numpy())
            progress(len(batch))
    return np.concatenate(out).astype(np.float32)


def tokenize(tokenizer: Any, texts: Sequence[str]) -> tuple[torch.Tensor, list[bool]]:
    """Token ids [T, context_length] and per-text truncation flags.

    Each text becomes SOT + tokens + EOT, zero-padded. A text that does not fit is cut and its last slot set to EOT
    (the model pools at the EOT position, so it must be kept) and flagged. Same ids as open_clip's tokenizer call.
    """
    import torch

    ctx = tokenizer.context_length
    ids = torch.zeros(len(texts), ctx, dtype=torch.long)
    flags = []
    for i, text in enumerate(texts):
        tokens = [tokenizer.sot_token_id, *tokenizer.encode(text), tokenizer.eot_token_id]
        flags.append(len(tokens) > ctx)
        if flags[-1]:
            tokens = tokens[: ctx - 1] + [tokenizer.eot_token_id]
        ids[i, : len(tokens)] = torch.tensor(tokens)
    return ids, flags


def text_embeddings(clip: ClipModel, texts: Sequence[str], batch_size: int = 16,
                    progress: Callable[[int], object] = lambda n: None) -> tuple[np.ndarray, list[bool]]:
    """Unnormalized CLIP text embeddings [T, D] float32 aligned with ``texts``, and truncation flags.

    Each distinct text is encoded once; duplicates reuse its row. Texts are plain (A1111 syntax already removed).
    Forwards hold exactly ``batch_size`` texts (padded with all-zero token rows), as for images. ``progress(n)``
    is called after each forward with the number of distinct texts it encoded.
    """
    import torch

    distinct = list(dict.fromkeys(texts))
    ids, flags = tokenize(clip.tokenizer, distinct)
    rows = [np.zeros((0, clip.embed_dim), np.float32)]
    with torch.inference_mode():
        for start in range(0, len(distinct), batch_size):
            chunk = ids[start : start + batch_size]
            emb = clip.model.encode_text(padded(chunk, batch_size).to(clip.device))[: len(chunk)]
            rows.append(emb.float().cpu().numpy())
            progress(len(chunk))
    table = np.concatenate(rows)
    index = {text: i for i, text in enumerate(distinct)}
    order = [index[t] for t in texts]
    return table[order].astype(np.float32), [flags[i] for i in order]


def convert_openai_clip(src: Path, dst: Path) -> Path:
    """Convert OpenAI's TorchScript CLIP file (e.g. ViT-L-14.pt) into a plain state dict that open_clip loads.

    Drops the non-parameter entries input_resolution/context_length/vocab_size; keeps dtypes (OpenAI ships fp16,
    open_clip casts into its fp32 model on load). ``dst`` ending in .safetensors is written with safetensors,
    anything else with torch.save.
    """
    import torch

    with warnings.catch_warnings():  # torch marks torch.jit deprecated; OpenAI's files are TorchScript regardless
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.load.*")
        state = torch.jit.load(str(src), map_location="cpu").state_dict()
    state = {k: v.detach().contiguous().clone() for k, v in state.items() if k not in _OPENAI_JIT_EXTRA_KEYS}
    return write_state_dict(state, dst)
