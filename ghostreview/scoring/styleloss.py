"""StyleLoss (Gatys, Ecker & Bethge 2015, "A Neural Algorithm of Artistic Style") against reference images.

Definition used here:
- Features: VGG19 ``features`` (torchvision layout), activations relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
  (indices 1, 6, 11, 20, 29). Input: RGB in [0, 1] normalized with ImageNet mean/std (taken from torchvision's
  VGG19_Weights metadata, the weights' own preprocessing).
- Gram: F [N, M] (N channels, M = H*W positions), G = F F^T / M.
- Per layer: E = sum((G - A)^2) / (4 N^2)  (Gatys' 1/(4 N^2 M^2) with the 1/M folded into G); loss = mean of the
  five layers' E. Per-layer values are returned too.
- Against R references: the mean of the per-reference losses. Since mean_r |G - A_r|^2 = |G - A_mean|^2 + s with
  spread s = mean_r |A_r - A_mean|^2, only the mean Gram and the spread per layer are stored (:class:`RefStats`).
- Image preparation, the same for generated and reference images (:func:`resize_shorter`): alpha composited on
  WHITE (a transparent reference's background is meant as paper, and the RGB under alpha=0 is arbitrary, often
  black); grayscale replicated to RGB; 16-bit PNGs scaled by 1/65535; then the shorter side resized to ``size``
  keeping the aspect ratio, NO crop (style is a property of the whole image; G is normalized by M, so images of
  different aspect ratios compare directly). Bicubic with antialiasing, clamped to [0, 1].
Statistics are accumulated in float64.
LoRA loss is the same function against a LoRA's header image(s).
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from ghostreview.errors import UserError
from ghostreview.protocol import IMAGE_SUFFIXES  # the reference files the benchmark allows
from ghostreview.scoring.batching import padded
from ghostreview.scoring.metric import MetricInfo
from ghostreview.scoring.weights import read_state_dict, sha256_file

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

# torch and torchvision are imported by the functions that compute (torchvision alone costs about a second): the
# registry, standardize and the report read ``INFO`` without them (tests/test_imports.py).

INFO = MetricInfo(
    name="styleloss",
    version="1",
    higher_is_better=False,
    unit="Gram MSE / (4 N^2), mean of 5 VGG19 layers",
    grouped_by="style",
    description="Gatys Gram-matrix style loss (VGG19 relu1_1..relu5_1) against the style's reference images",
    label="StyleLoss",
    axis_label="StyleLoss",
)
LORA_INFO = MetricInfo(
    name="loraloss",
    version="1",
    higher_is_better=False,
    unit="Gram MSE / (4 N^2), mean of 5 VGG19 layers",
    grouped_by="lora",
    description="Gatys Gram-matrix style loss (VGG19 relu1_1..relu5_1) against the LoRA's header image(s)",
    label="LoRALoss",
    axis_label="LoRALoss",
)

LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
LAYER_INDICES: tuple[int, ...] = (1, 6, 11, 20, 29)
# VGG configuration "E" (Simonyan & Zisserman 2014) as torchvision lays it out: conv(3x3)+ReLU per number, "M" a
# 2x2 max-pool. Widths below are the reference ones; the loader reads the actual widths from the file.
VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                    512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


@functools.cache
def imagenet_mean_std() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """VGG19's input normalization (mean, std), from torchvision's ``VGG19_Weights`` metadata."""
    from torchvision.models import VGG19_Weights

    meta = VGG19_Weights.IMAGENET1K_V1.transforms()
    return tuple(meta.mean), tuple(meta.std)


def __getattr__(name: str) -> tuple[float, ...]:
    """``IMAGENET_MEAN`` and ``IMAGENET_STD``, read from torchvision when first asked for (PEP 562)."""
    if name in ("IMAGENET_MEAN", "IMAGENET_STD"):
        return imagenet_mean_std()[name == "IMAGENET_STD"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# Limits of every image GhostReview opens from the user (reference images, LoRA header images, A1111 PNGs for
# import-infotext), checked from the file's header before any pixel is decoded (:func:`open_checked_image`).
# 50 MP (e.g. 8660x5773) passes every A1111 output (a 4x upscale of SDXL's 1024x1024 is 16.8 MP) and 45 MP camera
# files; decoding one costs at most 200 MB as RGBA bytes, 600 MB as the float32 tensor StyleLoss makes of it.
# Pillow's own limit (a warning at 89 MP, DecompressionBombError at 179 MP) is higher and not an error below that.
MAX_IMAGE_PIXELS = 50_000_000
# Longer side / shorter side. StyleLoss resizes the shorter side to scoring.style.image_size keeping the ratio, so at
# 512 a 4:1 image becomes 512x2048 (the work of a 1024x1024 one), while a 6000x1 strip of a few hundred bytes would
# become 512x3,072,000 (gigabytes of VGG activations). Panoramas and tall scrolls beyond 4:1: crop them.
MAX_ASPECT_RATIO = 4


class ImageLimitError(UserError, ValueError):
    """An image over :data:`MAX_IMAGE_PIXELS` or :data:`MAX_ASPECT_RATIO`; the message names the file, its size and
    the limit."""


# ---------------------------------------------------------------------------------------------------------- VGG
def conv_indices() -> list[int]:
    """torchvision indices of the 16 convs of VGG19 features: [0, 2, 5, 7, 10, ...]."""
    out, i = [], 0
    for v in VGG19_CFG:
        if v != "M":
            out.append(i)
        i += 1 if v == "M" else 2
    return out


def vgg19_features_from_state(state: Mapping[str, Tensor], source: str = "state dict") -> nn.Sequential:
    """Build VGG19 ``features`` with channel widths read from the state dict's shapes, and load it (eval mode)."""
    from torch import nn

    layers: list[nn.Module] = []
    in_ch = 3
    convs = iter(conv_indices())
    for v in VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        key = f"{next(convs)}.weight"
        if key not in state:
            raise ValueError(f"{source}: missing key {key!r}; expected torchvision vgg19 'features' keys (0.weight...)")
        out_ch, got_in, kh, kw = state[key].shape
        if (got_in, kh, kw) != (in_ch, 3, 3):
            raise ValueError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected [*, {in_ch}, 3, 3]")
        layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        in_ch = out_ch
    features = nn.Sequential(*layers)
    features.load_state_dict(dict(state), strict=True)
    return features.eval()


def load_vgg19_features(path: Path) -> nn.Sequential:
    """Load VGG19 ``features`` from a file: keys "0.weight", ... or a full torchvision vgg19 state dict
    ("features.0.weight", ...; the classifier is ignored). Widths come from the file, so narrow stand-ins load too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG19 weights file not found: {path}")
    state = read_state_dict(path)
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return vgg19_features_from_state({k: v.float() for k, v in state.items()}, str(path))


# ------------------------------------------------------------------------------------------------------- images
def to_rgb_tensor(image: Image.Image) -> Tensor:
    """PIL image of any common mode -> [3, H, W] float32 in [0, 1] (alpha on white, gray to RGB, 16-bit scaled)."""
    import torch

    if image.mode in ("I;16", "I;16L", "I;16B", "I"):
        gray = torch.from_numpy(np.asarray(image, dtype=np.float32) / 65535.0).clamp(0, 1)
        return gray[None].expand(3, -1, -1).contiguous()
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    arr = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    if has_alpha:
        x = x[:3] * x[3:] + (1.0 - x[3:])
    return x.contiguous()


def resize_shorter(image: Image.Image, size: int) -> Tensor:
    """The one image preparation for StyleLoss: RGB [3, H, W] float32 in [0, 1] with min(H, W) == size."""
    import torch.nn.functional as F

    x = to_rgb_tensor(image)
    h, w = x.shape[1:]
    scale = size / min(h, w)
    new = (size, max(1, round(w * scale))) if h <= w else (max(1, round(h * scale)), size)
    out = F.interpolate(x[None], size=new, mode="bicubic", align_corners=False, antialias=True)
    return out[0].clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------------- grams
def gram(features: Tensor) -> Tensor:
    """[B, N, H, W] -> [B, N, N] Gram matrices F F^T / (H W)."""
    b, n, h, w = features.shape
    f = features.reshape(b, n, h * w)
    return f @ f.transpose(1, 2) / (h * w)


def style_grams(vgg: nn.Sequential, images: Tensor) -> list[Tensor]:
    """Gram matrices at relu1_1..relu5_1: images [B, 3, H, W] in [0, 1] -> five [B, N_l, N_l] float64.

    Images are moved to the VGG's device. Runs the layers one by one and takes each Gram right after its ReLU, so
    torchvision's in-place ReLUs cannot overwrite a captured activation; layers after relu5_1 are not run.
    """
    import torch

    images = images.to(next(vgg.parameters()).device)
    imagenet_mean, imagenet_std = imagenet_mean_std()
    mean = torch.tensor(imagenet_mean, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.tensor(imagenet_std, dtype=images.dtype, device=images.device)[:, None, None]
    grams = []
    with torch.no_grad():
        x = (images - mean) / std
        for i, layer in enumerate(vgg):
            x = layer(x)
            if i in LAYER_INDICES:
                grams.append(gram(x).double())  # float32 matmul (fast on GPUs), float64 after
            if i == LAYER_INDICES[-1]:
                break
    if len(grams) != len(LAYERS):
        raise ValueError(f"VGG module has {len(vgg)} layers; need at least {LAYER_INDICES[-1] + 1} (relu5_1)")
    return grams


# ----------------------------------------------------------------------------------------------------- RefStats
@dataclass(frozen=True)
class RefStats:
    """Statistics of one reference set: per layer mean Gram [N_l, N_l] and spread mean_r |A_r - mean|^2 (float64).

    count: number of references; sha256s: their file hashes in order (empty when built from in-memory images);
    size: the shorter side the references were resized to (generated images must use the same).
    """

    means: tuple[Tensor, ...]
    spreads: Tensor
    count: int
    sha256s: tuple[str, ...]
    size: int

    def __post_init__(self) -> None:
        if len(self.means) != len(LAYERS) or self.spreads.shape != (len(LAYERS),):
            raise ValueError(f"RefStats needs {len(LAYERS)} layers, got {len(self.means)} means, {self.spreads.shape}")
        if self.count < 1 or (self.sha256s and len(self.sha256s) != self.count):
            raise ValueError(f"RefStats count {self.count} vs {len(self.sha256s)} sha256s")

    def to(self, device: torch.device | str) -> RefStats:
        """The same statistics with their tensors on ``device`` (the VGG's, so comparisons stay there)."""
        return replace(self, means=tuple(m.to(device) for m in self.means), spreads=self.spreads.to(device))


def stats_from_grams(grams: Iterable[Sequence[Tensor]], size: int, sha256s: Sequence[str] = ()) -> RefStats:
    """RefStats (on CPU) from the per-reference Gram lists (each five [N_l, N_l] or [1, N_l, N_l]), streamed.

    Mean and spread use Welford's update (delta = A - mean_old; mean += delta / k; M2 += <delta, A - mean_new>),
    exact without keeping every reference and without the cancellation of E|A|^2 - |E A|^2.
    """
    import torch

    means: list[Tensor] = []
    m2 = torch.zeros(len(LAYERS), dtype=torch.float64)
    k = 0
    for k, layers in enumerate(grams, start=1):
        layers = [g.reshape(g.shape[-2:]).double().cpu() for g in layers]
        if k == 1:
            means = [torch.zeros_like(g) for g in layers]
        for i, g in enumerate(layers):
            delta = g - means[i]
            means[i] = means[i] + delta / k
            m2[i] += (delta * (g - means[i])).sum()
    if k == 0:
        raise ValueError("no reference images: a reference set needs at least one image")
    return RefStats(tuple(means), m2 / k, k, tuple(sha256s), size)


def ref_stats(vgg: nn.Sequential, images: Iterable[Image.Image], size: int, sha256s: Sequence[str] = ()) -> RefStats:
    """RefStats of reference images (each resized by :func:`resize_shorter` to ``size``), one image at a time."""
    return stats_from_grams((style_grams(vgg, resize_shorter(im, size)[None]) for im in images), size, sha256s)


def style_loss(grams: list[Tensor], refs: RefStats) -> tuple[Tensor, Tensor]:
    """Mean StyleLoss over the references: five [B, N_l, N_l] Grams -> ([B] loss, [B, 5] per layer), float64."""
    import torch

    per_layer = []
    for g, mean, spread in zip(grams, refs.means, refs.spreads, strict=True):
        n = mean.shape[-1]
        if g.shape[-2:] != mean.shape:
            raise ValueError(f"Gram {tuple(g.shape)} does not match reference Gram {tuple(mean.shape)}: other VGG?")
        sq = ((g.double() - mean.to(g.device)) ** 2).sum(dim=(1, 2)) + spread.to(g.device)
        per_layer.append(sq / (4 * n * n))
    per_layer_t = torch.stack(per_layer, dim=1)
    return per_layer_t.mean(dim=1), per_layer_t


def image_grams(vgg: nn.Sequential, images: Iterable[Image.Image], size: int,
                batch_size: int = 1) -> Iterator[list[Tensor]]:
    """Each image's five Gram matrices ([N_l, N_l] float64, on the VGG's device), in input order.

    Images are resized by :func:`resize_shorter`; consecutive images of one shape share a forward of exactly
    ``batch_size`` images (the last one padded with black images), so an image's Grams never depend on its
    batch-mates (``ghostreview.scoring.batching``).
    """
    import torch

    pending: list[Tensor] = []

    def flush() -> Iterator[list[Tensor]]:
        grams = style_grams(vgg, padded(torch.stack(pending), batch_size))
        for i in range(len(pending)):
            yield [g[i] for g in grams]
        pending.clear()

    for im in images:
        x = resize_shorter(im, size)
        if pending and (x.shape != pending[0].shape or len(pending) == batch_size):
            yield from flush()
        pending.append(x)
    if pending:
        yield from flush()


def image_style_losses(vgg: nn.Sequential, images: Iterable[Image.Image], refs: RefStats,
                       batch_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """StyleLoss of each image against ``refs``, resized to ``refs.size``: ([N] loss, [N, 5] per layer) float64."""
    losses, layers = [np.zeros(0)], [np.zeros((0, len(LAYERS)))]
    for grams in image_grams(vgg, images, refs.size, batch_size):
        loss, per_layer = style_loss([g[None] for g in grams], refs)
        losses.append(loss.cpu().numpy())
        layers.append(per_layer.cpu().numpy())
    return np.concatenate(losses), np.concatenate(layers)


def save_ref_stats(stats: RefStats, path: Path) -> Path:
    """Write RefStats as safetensors: tensors "<layer>.mean" and "spreads"; JSON metadata in the header."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.mean": m.contiguous() for name, m in zip(LAYERS, stats.means)}
    tensors["spreads"] = stats.spreads.contiguous()
    meta = {"layers": list(LAYERS), "count": stats.count, "sha256s": list(stats.sha256s), "size": stats.size,
            "metric_version": INFO.version}
    save_file(tensors, str(path), metadata={"refstats": json.dumps(meta)})
    return path


def read_ref_stats_meta(path: Path) -> dict:
    """The JSON metadata of a RefStats file (header only, no tensor data read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = (f.metadata() or {}).get("refstats")
    if meta is None:
        raise ValueError(f"{path} is not a RefStats file (no 'refstats' metadata)")
    return json.loads(meta)


def load_ref_stats(path: Path) -> RefStats:
    """Read a file written by :func:`save_ref_stats`."""
    from safetensors.torch import load_file

    meta = read_ref_stats_meta(path)
    if tuple(meta["layers"]) != LAYERS:
        raise ValueError(f"{path}: layers {meta['layers']} differ from {list(LAYERS)}")
    t = load_file(str(path))
    means = tuple(t[f"{name}.mean"] for name in LAYERS)
    return RefStats(means, t["spreads"], int(meta["count"]), tuple(meta["sha256s"]), int(meta["size"]))


# ----------------------------------------------------------------------------------------- reference directories
def validate_reference_dir(directory: Path) -> list[Path]:
    """Image files of a reference directory, sorted by name, each fully decoded once; run before heavy work.

    Hidden files (".gitignore"...) and subdirectories are skipped. Fails naming the file for anything else that is
    not a readable image (wrong suffix, corrupt or truncated data), and for a missing or empty directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Reference directory not found: {directory}")
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    for p in files:
        check_image_file(p)
    if not files:
        raise ValueError(f"Reference directory {directory} holds no images")
    return files


def check_image_size(path: Path, size: tuple[int, int]) -> None:
    """Raise :class:`ImageLimitError` when an image of ``size`` (width, height) is over the limits above."""
    w, h = size
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageLimitError(f"{path}: {w}x{h} ({w * h:,} pixels) is over the limit of {MAX_IMAGE_PIXELS:,} pixels "
                              f"for an image GhostReview reads. Downscale it (e.g. to 4096 pixels on its longer side).")
    if max(w, h) > MAX_ASPECT_RATIO * max(1, min(w, h)):
        raise ImageLimitError(f"{path}: {w}x{h} has an aspect ratio of {max(w, h) / max(1, min(w, h)):,.1f}:1, over "
                              f"the limit of {MAX_ASPECT_RATIO}:1 (StyleLoss resizes the shorter side to "
                              f"scoring.style.image_size and the longer one with it). Crop it.")


def open_checked_image(path: Path) -> Image.Image:
    """``Image.open(path)`` once its header passed :func:`check_image_size`; no pixel is decoded yet.

    Raises:
        ImageLimitError: too many pixels or too extreme an aspect ratio (also for the files Pillow itself refuses
            to open as decompression bombs).
        OSError: Pillow cannot identify or read the file (``UnidentifiedImageError`` is one).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit is checked next
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as exc:  # over 2x Pillow's limit: it gives only the pixel count
            found = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = f"{int(found.group(1)):,} pixels" if found else str(exc)
            raise ImageLimitError(f"{path}: {pixels}, over the limit of {MAX_IMAGE_PIXELS:,} pixels for an image "
                                  f"GhostReview reads (a decompression bomb?). Use another image.") from None
    try:
        check_image_size(path, im.size)
    except ImageLimitError:
        im.close()
        raise
    return im


def check_image_file(path: Path) -> None:
    """Fail with a message naming ``path`` unless it is an image file within the limits that decodes completely."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"Not an image file: {path} (allowed suffixes: {', '.join(IMAGE_SUFFIXES)})")
    try:
        with open_checked_image(path) as im:
            im.load()
    except ImageLimitError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"Corrupt or unreadable image {path}: {e}") from e


def open_images(paths: Sequence[Path]) -> Iterator[Image.Image]:
    """Decode images one at a time, each checked against the limits first (Pillow closes a single-frame file once
    it is loaded)."""
    for p in paths:
        im = open_checked_image(p)
        im.load()
        yield im


def ref_stats_from_dir(vgg: nn.Sequential, directory: Path, size: int) -> RefStats:
    """Validate a reference directory, hash its files, then compute its RefStats."""
    files = validate_reference_dir(directory)
    return ref_stats(vgg, open_images(files), size, [sha256_file(p) for p in files])
