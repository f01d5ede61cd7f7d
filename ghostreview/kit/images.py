"""Procedural, deterministic reference images for tests and the offline demo (style references, LoRA headers).

Each style is drawn by one of a few visibly different painters (flat polygon facets, ink hatching, pixel blocks,
soft watercolour blobs, halftone dots, concentric bands), picked by keywords in the style name (Low_Poly ->
polygons, Line_Art -> hatching, Pixel_Art -> pixels, Watercolor -> blobs, ...) or, for other names, by a stable
hash of the name. Colours and layout come from a numpy generator seeded by (seed, name hash, image index), so the
same arguments always give the same pixels. Shorter side = ``size``; every second reference is 5:4 landscape, so
consumers see non-square images too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ghostreview.util.names import slug

Painter = Callable[[np.random.Generator, int, int], Image.Image]


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big")


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """n colours [n, 3] uint8 of one random hue family."""
    base = rng.uniform(0, 255, size=3)
    return np.clip(base + rng.normal(0, 60, size=(n, 3)), 0, 255).astype(np.uint8)


def paint_polygons(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Low-poly: a jittered grid split into triangles, each filled with one flat colour."""
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    pal = _palette(rng, 6)
    step = max(8, min(w, h) // 5)
    xs, ys = np.arange(-step, w + 2 * step, step), np.arange(-step, h + 2 * step, step)  # margin: jitter leaves no gap
    pts = np.stack(np.meshgrid(xs, ys), -1).astype(float) + rng.uniform(-step / 3, step / 3, (len(ys), len(xs), 2))
    for r in range(len(ys) - 1):
        for c in range(len(xs) - 1):
            a, b, d, e = pts[r, c], pts[r, c + 1], pts[r + 1, c], pts[r + 1, c + 1]
            for tri in ((a, b, d), (b, e, d)):
                draw.polygon([tuple(p) for p in tri], fill=tuple(int(v) for v in pal[rng.integers(len(pal))]))
    return img


def paint_hatching(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Line art: dark ink hatching at a few angles over white paper."""
    img = Image.new("RGB", (w, h), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    for _ in range(3):
        angle = rng.uniform(0, np.pi)
        dx, dy = np.cos(angle), np.sin(angle)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        spacing = rng.uniform(3, 6)
        for k in range(-12, 13):
            ox, oy = cx - dy * k * spacing, cy + dx * k * spacing
            half = rng.uniform(w / 6, w / 2)
            draw.line([(ox - dx * half, oy - dy * half), (ox + dx * half, oy + dy * half)], fill=ink, width=1)
    return img


def paint_pixels(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Pixel art: a coarse grid of a few palette colours from quantized smooth noise, upscaled without smoothing."""
    block = max(4, min(w, h) // 12)
    gw, gh = -(-w // block), -(-h // block)
    noise = rng.uniform(0, 1, (gh, gw))
    noise = (noise + np.roll(noise, 1, 0) + np.roll(noise, 1, 1)) / 3
    pal = _palette(rng, 5)
    levels = np.minimum((noise * len(pal)).astype(int), len(pal) - 1)
    small = Image.fromarray(pal[levels])
    return small.resize((gw * block, gh * block), Image.Resampling.NEAREST).crop((0, 0, w, h))


def paint_blobs(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Watercolour: overlapping soft Gaussian blobs of pastel pigment multiplied onto paper, with grain."""
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    canvas = np.full((h, w, 3), 0.97)
    for _ in range(6):
        cx, cy, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(min(w, h) / 8, min(w, h) / 3)
        alpha = 0.7 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))[..., None]
        pigment = rng.uniform(0.4, 0.95, 3)
        canvas *= 1 - alpha * (1 - pigment)
    canvas += rng.normal(0, 0.015, canvas.shape)
    return Image.fromarray((np.clip(canvas, 0, 1) * 255).round().astype(np.uint8))


def paint_halftone(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Pop-art halftone: a grid of dots whose radius follows a gradient, on a saturated background."""
    pal = _palette(rng, 2)
    img = Image.new("RGB", (w, h), tuple(int(v) for v in pal[0]))
    draw = ImageDraw.Draw(img)
    step = int(rng.integers(5, 9))
    angle = rng.uniform(0, 2 * np.pi)
    for y in range(0, h + step, step):
        for x in range(0, w + step, step):
            t = 0.5 + 0.5 * np.sin((x * np.cos(angle) + y * np.sin(angle)) / (0.35 * min(w, h)))
            r = 0.5 * step * t
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in pal[1]))
    return img


def paint_bands(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Concentric colour bands around a random centre (smooth sinusoidal ramps between two colours)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    cx, cy, period = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(6, 20)
    t = 0.5 + 0.5 * np.sin(np.hypot(xx - cx, yy - cy) * 2 * np.pi / period)
    pal = _palette(rng, 2).astype(float)
    return Image.fromarray((pal[0] * t[..., None] + pal[1] * (1 - t[..., None])).round().astype(np.uint8))


PAINTERS: dict[str, Painter] = {
    "poly": paint_polygons,
    "line": paint_hatching,
    "pixel": paint_pixels,
    "water": paint_blobs,
    "pop": paint_halftone,
    "band": paint_bands,
}
_KEYWORDS = {"poly": ("poly",), "line": ("line", "sketch", "ink", "pencil"), "pixel": ("pixel", "8bit", "8-bit"),
             "water": ("water", "paint", "pastel"), "pop": ("pop", "comic", "halftone", "manga"), "band": ()}


def painter_for(name: str) -> Painter:
    """The painter of a style or LoRA name: first keyword match (case-insensitive), else a stable hash pick."""
    low = name.lower()
    for key, words in _KEYWORDS.items():
        if any(w in low for w in words):
            return PAINTERS[key]
    return list(PAINTERS.values())[_name_hash(name) % len(PAINTERS)]


def _slug(name: str) -> str:
    """A file-name stem for style ``name``: its case and dots kept (style names are ``[A-Za-z0-9_]+`` already)."""
    return slug(name, keep="_.-", lower=False, default="style")


def write_style_references(dir: Path, style: str, n: int, seed: int, size: int = 96) -> list[Path]:
    """Write ``n`` reference PNGs for ``style`` into ``dir`` (``<slug>_000.png``...); return their paths."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    paint = painter_for(style)
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, _name_hash(style), i])
        w = size * 5 // 4 if i % 2 else size
        path = dir / f"{_slug(style)}_{i:03d}.png"
        paint(rng, w, size).save(path, format="PNG")
        paths.append(path)
    return paths


def write_lora_header(path: Path, name: str, seed: int, size: int = 96) -> Path:
    """Write one square header PNG for the LoRA ``name`` (its own painter and colours); return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, _name_hash("lora:" + name)])
    painter_for(name)(rng, size, size).save(path, format="PNG")
    return path
