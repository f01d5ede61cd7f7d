"""Tiny scorer stand-ins and procedural reference images: formats, shapes, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ghostreview.kit import images as kimages
from ghostreview.kit.scorers import (
    write_tiny_clip,
    write_tiny_laion_head,
    write_tiny_scorers,
    write_tiny_vgg19,
)
from ghostreview.scoring import aesthetic, styleloss
from ghostreview.scoring.weights import sha256_file


def test_tiny_clip_files(tmp_path):
    arch, weights, config = write_tiny_clip(tmp_path / "a", seed=5)
    cfg = json.loads(config.read_text())
    assert config.stem == arch and cfg["embed_dim"] == 768 and cfg["quick_gelu"] is True
    assert cfg["text_cfg"]["vocab_size"] == 49408 and cfg["text_cfg"]["context_length"] == 77
    state = load_file(str(weights))
    assert state["token_embedding.weight"].shape == (49408, 64) and state["text_projection"].shape == (64, 768)
    assert state["visual.proj"].shape == (64, 768)
    again = write_tiny_clip(tmp_path / "b", seed=5)[1]
    other = write_tiny_clip(tmp_path / "c", seed=6)[1]
    assert sha256_file(again) == sha256_file(weights) != sha256_file(other)


def test_tiny_clip_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    write_tiny_clip(tmp_path, seed=0)
    assert torch.equal(torch.rand(3), before)


def test_tiny_head_has_real_layout(tmp_path):
    path = write_tiny_laion_head(tmp_path / "h.pth", seed=1)
    raw = torch.load(path, weights_only=True)
    assert sorted(raw) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    aesthetic.check_head(raw)
    same = torch.load(write_tiny_laion_head(tmp_path / "h2.pth", seed=1), weights_only=True)
    diff = torch.load(write_tiny_laion_head(tmp_path / "h3.pth", seed=2), weights_only=True)
    assert all(torch.equal(raw[k], same[k]) for k in raw)
    assert not torch.equal(raw["layers.0.weight"], diff["layers.0.weight"])


@pytest.mark.parametrize(("divisor", "suffix"), [(8, ".pth"), (16, ".safetensors")])
def test_tiny_vgg_loads_through_the_real_loader(tmp_path, divisor, suffix):
    path = write_tiny_vgg19(tmp_path / f"v{suffix}", seed=0, width_divisor=divisor)
    vgg = styleloss.load_vgg19_features(path)
    widths = [m.out_channels for m in vgg if isinstance(m, torch.nn.Conv2d)]
    assert widths == [v // divisor for v in styleloss.VGG19_CFG if v != "M"] and len(vgg) == 37
    grams = styleloss.style_grams(vgg, torch.rand(1, 3, 32, 32))
    assert [g.shape[-1] for g in grams] == [64 // divisor, 128 // divisor, 256 // divisor, 512 // divisor,
                                            512 // divisor]
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grams)


def test_write_tiny_scorers(tmp_path):
    paths = write_tiny_scorers(tmp_path, seed=0)
    assert set(paths) == {"clip_arch", "clip_weights", "clip_config", "aesthetic_head", "vgg19"}
    assert all(paths[k].is_file() for k in paths if k != "clip_arch")


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=float)


def test_style_references_deterministic_and_shaped(tmp_path):
    a = kimages.write_style_references(tmp_path / "a", "Low_Poly", n=3, seed=0, size=48)
    b = kimages.write_style_references(tmp_path / "b", "Low_Poly", n=3, seed=0, size=48)
    c = kimages.write_style_references(tmp_path / "c", "Low_Poly", n=3, seed=1, size=48)
    assert [p.name for p in a] == ["Low_Poly_000.png", "Low_Poly_001.png", "Low_Poly_002.png"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    assert [Image.open(p).size for p in a] == [(48, 48), (60, 48), (48, 48)]
    assert len({p.read_bytes() for p in a}) == 3


def test_styles_look_different(tmp_path):
    """Simple image statistics separate the painters: hatching is two-tone ink on mostly white paper, pixel art and
    low-poly are a handful of flat colours, watercolour has thousands of colours and the smoothest gradients."""
    for seed in (0, 1):
        stats = {}
        for style in ("Low_Poly", "Line_Art", "Pixel_Art", "Watercolor"):
            img = pixels(kimages.write_style_references(tmp_path / style, style, n=2, seed=seed, size=64)[1])
            colours = len(np.unique(img.reshape(-1, 3), axis=0))
            stats[style] = (colours, np.abs(np.diff(img, axis=1)).mean(), (img.min(axis=-1) > 200).mean())
        assert stats["Line_Art"][0] == 2 and stats["Line_Art"][2] > 0.5
        assert stats["Pixel_Art"][0] <= 5 and stats["Low_Poly"][0] <= 6
        assert stats["Watercolor"][0] > 1000
        assert stats["Watercolor"][1] < min(v[1] for k, v in stats.items() if k != "Watercolor")
    assert kimages.painter_for("Cyberpunk") is kimages.painter_for("Cyberpunk")
    assert kimages.painter_for("line_art") is kimages.paint_hatching


def test_lora_header(tmp_path):
    p = kimages.write_lora_header(tmp_path / "h" / "detail.png", "add_detail", seed=0, size=40)
    q = kimages.write_lora_header(tmp_path / "h2.png", "add_detail", seed=0, size=40)
    r = kimages.write_lora_header(tmp_path / "h3.png", "add_detail", seed=1, size=40)
    assert Image.open(p).size == (40, 40) and p.read_bytes() == q.read_bytes() != r.read_bytes()
