"""CLIP image tower once per image, shared by aesthetic and CLIPScore, against one tower pass per metric.

Shared (this project): ``image_embeddings`` once, then ``aesthetic_scores`` and ``clip_scores`` on the same
embeddings. Naive: embed the images for the aesthetic score, embed them again for CLIPScore. Both paths embed the
prompt text once per distinct prompt (the same work in both) and run both heads, so the timed region is the whole
scoring of a set of images. The images are one A1111 batch of the v1 protocol: 4 seeds of one prompt, 1024x1024
(what the hires fix produces); v1 has 32 images per prompt, so text is an even smaller share there.

Model: open_clip's real ``ViT-L-14-quickgelu`` config (OpenAI CLIP ViT-L/14, 428 M parameters) with seeded random
init, saved as a state dict into a temp dir and loaded through ``ghostreview.scoring.clip.load_clip`` (the cost of
a forward pass does not depend on the values). ``--quick`` uses the tiny stand-in of ``ghostreview.kit.scorers``.
The LAION head has the real shapes (``write_tiny_laion_head``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import header, interleaved, row, timed
from ghostreview.scoring.aesthetic import aesthetic_scores, load_head
from ghostreview.scoring.clip import ClipModel, image_embeddings, load_clip, text_embeddings
from ghostreview.scoring.clipscore import clip_scores

NAME = "scoring_clip"
FULL_ARCH = "ViT-L-14-quickgelu"
PROMPT = "a lighthouse on a cliff at dusk, dramatic clouds, oil painting"


def write_full_clip(dir: Path, seed: int = 0) -> Path:
    """Random-init ViT-L-14-quickgelu (open_clip's built-in config) saved as a float16 state dict; returns the path."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(FULL_ARCH)
    path = Path(dir) / "vit-l-14-quickgelu-random.bin"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)  # float16, as OpenAI ships it
    return path


def test_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """n smooth random RGB images (upsampled 16x16 noise), size x size."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        small = (torch.rand(16, 16, 3, generator=gen) * 255).to(torch.uint8).numpy()
        out.append(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
    return out


def shared_path(clip: ClipModel, head: dict, images: list[Image.Image], prompts: list[str]):
    """One image-tower pass; both metrics read the same embeddings."""
    emb = image_embeddings(clip, images)
    text, _ = text_embeddings(clip, prompts)
    return aesthetic_scores(emb, head), clip_scores(emb, text)


def naive_path(clip: ClipModel, head: dict, images: list[Image.Image], prompts: list[str]):
    """Each metric embeds the images itself."""
    aesthetic = aesthetic_scores(image_embeddings(clip, images), head)
    text, _ = text_embeddings(clip, prompts)
    return aesthetic, clip_scores(image_embeddings(clip, images), text)


def load_model(tmp: Path, quick: bool, device: str) -> tuple[ClipModel, str]:
    if quick:
        from ghostreview.kit.scorers import write_tiny_clip

        arch, weights, config = write_tiny_clip(tmp / "clip", seed=0)
        return load_clip(arch, weights, model_config=config, device=device), "tiny stand-in (kit.scorers)"
    weights = write_full_clip(tmp)
    return load_clip(FULL_ARCH, weights, device=device), f"{FULL_ARCH} (real config, random init)"


def run(quick: bool = False, device: str = "cpu") -> dict:
    from ghostreview.kit.scorers import write_tiny_laion_head

    n, repeats = (4, 5) if quick else (4, 3)
    header(f"{NAME}: CLIP image tower shared by aesthetic + CLIPScore vs recomputed per metric")
    with tempfile.TemporaryDirectory(prefix="gr-bench-clip-") as tmp:
        load_s, (clip, label) = timed(lambda: load_model(Path(tmp), quick, device))
        head = load_head(write_tiny_laion_head(Path(tmp) / "head.pth", seed=1))
    images, prompts = test_images(n, 1024), [PROMPT] * n
    row("model", f"{label}, {sum(p.numel() for p in clip.model.parameters()) / 1e6:.0f} M params, "
                 f"loaded in {load_s:.1f} s")
    row("images per repeat", f"{n} x 1024x1024 (one prompt), device {device}, {repeats} interleaved repeats")
    # Warm-up on one image (allocator, thread pool, lazy init) instead of a full untimed repeat of each path.
    shared_path(clip, head, images[:1], prompts[:1])  # the naive path runs the same functions
    t = interleaved({"shared": lambda: shared_path(clip, head, images, prompts),
                     "naive": lambda: naive_path(clip, head, images, prompts)}, repeats=repeats, warmup=0)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(t.results["shared"], t.results["naive"]))
    out = {
        "model": label,
        "images": n,
        "shared_s": t.median("shared"),
        "naive_s": t.median("naive"),
        "shared_images_per_s": n / t.median("shared"),
        "naive_images_per_s": n / t.median("naive"),
        "ratio": t.ratio("naive", "shared"),
        "max_score_difference": diff,
    }
    row("shared: median s (min..max)", f"{out['shared_s']:.2f} ({t.spread('shared')})  "
                                       f"= {out['shared_images_per_s']:.3f} images/s")
    row("naive:  median s (min..max)", f"{out['naive_s']:.2f} ({t.spread('naive')})  "
                                       f"= {out['naive_images_per_s']:.3f} images/s")
    row("throughput ratio shared/naive (target >= 1.9)", f"{out['ratio']:.2f}x")
    row("max |score difference| between the paths", f"{diff:.3g}")
    return out
