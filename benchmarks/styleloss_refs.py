"""StyleLoss against R = 32 reference images: reference statistics against pairwise Gram comparisons.

Statistics path (this project): ``stats_from_grams`` reduces the 32 reference Grams to a mean Gram and a spread
per layer (what ``ref_stats`` does after the VGG pass), then ``style_loss`` compares each generated image's Grams
with the mean only. Pairwise path: each generated image's Grams against each of the 32 reference Grams, per-layer
E = sum((G - A_r)^2) / (4 N^2), mean over the 5 layers, mean over the references (written out here, independently
of the library). Both give the same loss exactly in real arithmetic (mean_r |G - A_r|^2 = |G - mean|^2 + spread).

What is timed (decided here, stated in the output): the scoring of N = 32 generated images against one reference
set (N = 64 took over 6 minutes on the shared 2-core machine; the ratio grows with N, see RESULTS.md).
- "Gram comparison" (the ratio with the >= 10x target): from the Gram matrices to the N losses. The statistics
  path includes the reduction of the 32 reference Grams; both paths start from the same precomputed Grams.
- "End to end": the VGG19 passes that produce the Grams are identical code in both paths, and the stages' own:
  references one per forward (``ref_stats``, as refstats runs them), generated images in forwards of
  ``--batch-size`` (``image_grams``, as the styleloss stages run them at ``scoring.batch_size``), resize included,
  on the device the stages would use (``pick_device``). They are timed once in the same run and added to each
  path's median Gram-comparison time. This is the honest figure for a review: the VGG dominates.

VGG19: torchvision's ``vgg19().features`` (real widths, 64..512 channels) with its random init, saved to a file and
loaded with ``load_vgg19_features``; images resized to a shorter side of 128 px. ``--quick``: the tiny kit VGG
(widths / 8), 64 px, N = 16.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from benchmarks.common import header, interleaved, row, timed
from ghostreview.scoring.styleloss import (
    RefStats,
    image_grams,
    load_vgg19_features,
    resize_shorter,
    stats_from_grams,
    style_grams,
    style_loss,
)
from ghostreview.util.runtime import pick_device

NAME = "styleloss_refs"
R = 32


def write_vgg19(path: Path, seed: int = 0) -> Path:
    """torchvision VGG19 ``features`` with its own random init (real widths), torch.save'd; returns ``path``."""
    from torchvision.models import vgg19

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = vgg19(weights=None).features.state_dict()
    torch.save(state, path)
    return path


def random_images(n: int, size: int, seed: int) -> list[Image.Image]:
    """n RGB images with structure at several scales (sum of upsampled noise octaves), size x size."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = sum(torch.nn.functional.interpolate(torch.rand(1, 3, s, s, generator=gen), size=(size, size),
                                                mode="bilinear", align_corners=False) for s in (4, 16, 64))
        arr = (x[0] / 3).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
        out.append(Image.fromarray(arr))
    return out


def reference_grams(vgg: torch.nn.Module, images: list[Image.Image], size: int) -> list[list[Tensor]]:
    """Per reference, its five float64 Grams [1, N_l, N_l] on the CPU (one per forward, as ``ref_stats`` runs them)."""
    return [[g.cpu() for g in style_grams(vgg, resize_shorter(im, size)[None])] for im in images]


def generated_grams(vgg: torch.nn.Module, images: list[Image.Image], size: int, batch_size: int) -> list[Tensor]:
    """Five batched [N, N_l, N_l] float64 Grams on the CPU, computed as the styleloss stages compute them."""
    per_image = list(image_grams(vgg, images, size, batch_size))
    return [torch.stack([image[j] for image in per_image]).cpu() for j in range(len(per_image[0]))]


def stats_path(ref_grams: list[list[Tensor]], gen: list[Tensor], size: int) -> Tensor:
    """Reduce the references to RefStats, then one comparison per image and layer: [B] losses."""
    refs: RefStats = stats_from_grams(ref_grams, size)
    return style_loss(gen, refs)[0]


def pairwise_path(ref_grams: list[list[Tensor]], gen: list[Tensor]) -> Tensor:
    """Each image against each reference Gram, then averaged: [B] losses (independent of the library)."""
    total = torch.zeros(gen[0].shape[0], dtype=torch.float64)
    for ref in ref_grams:
        per_layer = []
        for g, a in zip(gen, ref, strict=True):
            n = g.shape[-1]
            per_layer.append(((g - a) ** 2).sum(dim=(1, 2)) / (4 * n * n))
        total += torch.stack(per_layer, dim=1).mean(dim=1)
    return total / len(ref_grams)


def run(quick: bool = False, device: str = "auto", batch_size: int = 16) -> dict:
    n, size, repeats = (16, 64, 5) if quick else (32, 128, 3)
    header(f"{NAME}: StyleLoss vs {R} references, reference statistics vs pairwise Grams")
    with tempfile.TemporaryDirectory(prefix="gr-bench-vgg-") as tmp:
        if quick:
            from ghostreview.kit.scorers import write_tiny_vgg19

            path, label = write_tiny_vgg19(Path(tmp) / "vgg.pth", seed=0), "tiny kit VGG19 (widths / 8)"
        else:
            path, label = write_vgg19(Path(tmp) / "vgg.pth"), "torchvision VGG19 features, real widths, random init"
        device = pick_device(device)  # what the stages do with scoring.device
        vgg = load_vgg19_features(path).to(device)
    refs_img, gens_img = random_images(R, 2 * size, seed=1), random_images(n, 2 * size, seed=2)
    row("model", f"{label}; images {2 * size}px resized to {size}px; device {device}; batch {batch_size}")
    row("workload", f"R = {R} references, N = {n} generated images, {repeats} interleaved repeats")
    reference_grams(vgg, refs_img[:2], size), generated_grams(vgg, gens_img[:2], size, batch_size)  # warm-up
    t_refs, ref_grams = timed(lambda: reference_grams(vgg, refs_img, size))
    t_gens, gen = timed(lambda: generated_grams(vgg, gens_img, size, batch_size))
    warm = [g[:2] for g in gen]  # warm-up on 2 images (allocator, thread pool), not a full untimed repeat
    stats_path(ref_grams, warm, size), pairwise_path(ref_grams, warm)
    t = interleaved({"stats": lambda: stats_path(ref_grams, gen, size),
                     "pairwise": lambda: pairwise_path(ref_grams, gen)}, repeats=repeats, warmup=0)
    a, b = t.results["stats"], t.results["pairwise"]
    rel = float(((a - b).abs() / b.abs()).max())
    vgg_s = t_refs + t_gens
    out = {
        "model": label, "size": size, "references": R, "images": n, "device": device, "batch_size": batch_size,
        "stats_s": t.median("stats"), "pairwise_s": t.median("pairwise"),
        "ratio_gram_comparison": t.ratio("pairwise", "stats"),
        "vgg_refs_s": t_refs, "vgg_images_s": t_gens,
        "ratio_end_to_end": (vgg_s + t.median("pairwise")) / (vgg_s + t.median("stats")),
        "max_relative_difference": rel,
    }
    row("Gram comparison, statistics: median s (min..max)", f"{out['stats_s']:.4f} ({t.spread('stats')})")
    row("Gram comparison, pairwise:   median s (min..max)", f"{out['pairwise_s']:.4f} ({t.spread('pairwise')})")
    row("ratio pairwise/statistics, Gram comparison (target >= 10)", f"{out['ratio_gram_comparison']:.1f}x")
    row(f"VGG Grams (same in both): {R} refs + {n} images, s", f"{t_refs:.2f} + {t_gens:.2f}")
    row("ratio end to end (VGG + comparison)", f"{out['ratio_end_to_end']:.3f}x")
    row("max relative loss difference (must be <= 1e-5)", f"{rel:.2e}")
    if rel > 1e-5:
        raise AssertionError(f"statistics and pairwise StyleLoss differ by {rel:.2e} (relative) > 1e-5")
    return out
