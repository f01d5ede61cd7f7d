"""The scoring stages' library side: from a model's manifest and images to tidy score rows.

Metric definitions live in ``ghostreview/scoring/`` (one module each); this module only wires manifests, weights
files and artifacts to them. Expensive features are computed once: CLIP image embeddings (shared by aesthetic and
CLIPScore) and the reference Gram statistics (shared by every model).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ghostreview.errors import UserError
from ghostreview.generation.prompts import plain_text
from ghostreview.protocol import Benchmark
from ghostreview.scoring import aesthetic, clipscore, styleloss
from ghostreview.scoring.clip import (
    ClipModel,
    Embeddings,
    image_embeddings,
    load_clip,
    load_embeddings,
    save_embeddings,
    text_embeddings,
)
from ghostreview.scoring.table import score_rows
from ghostreview.scoring.weights import verify_weights
from ghostreview.util.atomic import replace_dir
from ghostreview.util.runtime import pick_device, progress_bar


def counted(items: Iterable, bar) -> Iterator:
    """``items`` unchanged, ``bar.update(1)`` as each one is produced: a progress bar over a lazy stream (of Gram
    matrices: counts images scored; of reference images: counts images decoded, each scored before the next)."""
    for item in items:
        bar.update(1)
        yield item


def drawable(rows: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """Manifest rows that have an image (rows of unsupported LoRA pairs have none)."""
    return [r for r in rows if r["image"]]


def open_images(images_dir: Path, rows: Sequence[Mapping[str, str]]) -> Iterator[Image.Image]:
    """The rows' images as RGB, decoded one at a time."""
    for row in rows:
        with Image.open(images_dir / row["image"]) as im:
            yield im.convert("RGB")


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP to load, and where: an open_clip arch (``model_config``: its JSON, for archs open_clip lacks), a
    local weights file, the sha256 it must have (None: not checked) and a device name ("auto", "cpu", "cuda:1", ...,
    resolved by ``runtime.pick_device`` when it loads)."""

    arch: str
    weights: Path
    model_config: Path | None = None
    sha256: str | None = None
    device: str = "cpu"

    def load(self) -> ClipModel:
        return load_clip(self.arch, self.weights, model_config=self.model_config, device=pick_device(self.device),
                         expected_sha256=self.sha256)


def embed_images(rows: Sequence[Mapping[str, str]], images_dir: Path, clip: ClipSpec, batch_size: int,
                 out: Path) -> int:
    """CLIP image embeddings of every row's image, in forwards of ``batch_size``, saved as the embeddings artifact."""
    model = clip.load()
    with progress_bar(total=len(rows), desc="embed", unit="img") as bar:
        emb = image_embeddings(model, open_images(images_dir, rows), batch_size, progress=bar.update)
    save_embeddings(out, Embeddings([r["image_hash"] for r in rows], emb, model.arch, model.weights_sha256))
    return len(rows)


def aesthetic_rows(rows: Sequence[Mapping[str, str]], embeddings: Path, head: Path,
                   head_sha256: str | None = None) -> list[dict]:
    """LAION aesthetic v2 rows from stored embeddings and the head's weights file (checked against ``head_sha256``
    when given); ``weights_sha256`` names the head and the CLIP weights."""
    emb = load_embeddings(embeddings)
    head_sha = verify_weights(head, head_sha256)
    image_emb = emb.rows([r["image_hash"] for r in rows], str(embeddings))
    with progress_bar(total=len(rows), desc="aesthetic", unit="img") as bar:  # one call: the head is tiny
        values = aesthetic.aesthetic_scores(image_emb, aesthetic.load_head(head))
        bar.update(len(rows))
    info = aesthetic.INFO
    return score_rows(rows, info.name, values, info.version, f"{head_sha}+{emb.weights_sha256}")


def clipscore_rows(rows: Sequence[Mapping[str, str]], embeddings: Path, clip: ClipSpec, batch_size: int) -> list[dict]:
    """CLIPScore rows: stored image embeddings against each prompt's plain text (text tower once per prompt, in
    forwards of ``batch_size``)."""
    emb = load_embeddings(embeddings)
    model = clip.load()
    texts = [plain_text(r["prompt"]) for r in rows]
    with progress_bar(total=len(set(texts)), desc="clipscore", unit="prompt") as bar:
        text_emb, truncated = text_embeddings(model, texts, batch_size, progress=bar.update)
    values = clipscore.clip_scores(emb.rows([r["image_hash"] for r in rows], str(embeddings)), text_emb)
    flags = [["text_truncated"] if t else [] for t in truncated]
    info = clipscore.INFO
    return score_rows(rows, info.name, values, info.version, model.weights_sha256, flags)


# ------------------------------------------------------------------------------------------------ StyleLoss


@dataclass(frozen=True)
class VggSpec:
    """Which VGG19 to load, and where: its local weights file, the sha256 it must have (None: not checked) and a
    device name ("auto", "cpu", ..., resolved by ``runtime.pick_device`` before the weights load)."""

    weights: Path
    sha256: str | None = None
    device: str = "cpu"

    def load(self):
        """VGG19 features on the device, and the weights file's sha256."""
        sha = verify_weights(self.weights, self.sha256)
        device = pick_device(self.device)  # an unusable device stops here, before the weights load
        return styleloss.load_vgg19_features(self.weights).to(device), sha


MAX_LISTED = 12  # reference-set problems shown in one error


class ReferenceImagesError(UserError, ValueError):
    """A reference set that cannot be used; the message names the file or directory, the params key and the fix."""


def _checked(files_of: Callable[[], list[Path]], where: str, fix: str) -> list[Path]:
    """``files_of()`` (validation of one reference set); its FileNotFoundError/ValueError re-raised with context."""
    try:
        return files_of()
    except (FileNotFoundError, ValueError) as exc:
        raise ReferenceImagesError(f"{where}: {exc}. {fix}") from exc


def _header_files(directory: Path, names: Sequence[str]) -> list[Path]:
    """The named header images of one LoRA, each decoded once."""
    files = [directory / name for name in names]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"header image {f} not found")
        styleloss.check_image_file(f)
    return files


def reference_sets(bench: Benchmark, style_dir: Path | None, header_dirs: Mapping[str, Path]) -> dict[str, list[Path]]:
    """Every reference set (``styles/<Style>``, ``loras/<family>/<name>``) and its image files, validated up front.

    Every file is decoded once here, before VGG loads. Grayscale, palette, RGBA (composited on white) and 16-bit
    images are accepted (see ``styleloss.to_rgb_tensor``).

    Raises:
        ReferenceImagesError: a missing or empty directory, a file that is not an image, a corrupt or truncated
            image, or a missing header image; the message names it, the params key and the fix.
    """
    sets: dict[str, list[Path]] = {}
    problems: list[str] = []

    def take(name: str, files_of: Callable[[], list[Path]], where: str, fix: str) -> None:
        try:
            sets[name] = _checked(files_of, where, fix)
        except ReferenceImagesError as exc:
            problems.append(str(exc))

    if style_dir is not None:
        for s in bench.styles:
            directory = style_dir / s.reference_dir
            fix = (f"Put the style's reference images in {directory} (paths.style_refs in params.yaml + "
                   f"reference_dir {s.reference_dir!r} in styles.yaml; see docs/benchmark.md); move out or replace "
                   f"any file that is not a readable image.")
            take(f"styles/{s.name}", partial(styleloss.validate_reference_dir, directory), f"style {s.name!r}", fix)
    for family, directory in header_dirs.items():
        for entry in bench.loras.get(family, ()):
            fix = (f"Save the LoRA's header image(s) {list(entry.header_images)} in {directory / entry.name} "
                   f"(paths.lora_headers.{family} in params.yaml; see docs/benchmark.md), or fix header_images in "
                   f"the LoRA table.")
            take(f"loras/{family}/{entry.name}", partial(_header_files, directory / entry.name, entry.header_images),
                 f"LoRA {entry.name!r} ({family})", fix)
    if problems:  # every broken set at once, so that one round of fixes is enough
        more = len(problems) - MAX_LISTED
        raise ReferenceImagesError("\n".join(problems[:MAX_LISTED])
                                   + (f"\n... and {more} more reference sets with problems." if more > 0 else ""))
    return sets


def header_families(header_dirs: Mapping[str, Path]) -> tuple[dict[str, Path], list[str]]:
    """The LoRA header directories to compute statistics for, and a note for each family left out.

    A family whose directory is empty (or absent) is left out: a review of SD1.5 checkpoints needs no SDXL header
    images. Its models get no LoRA loss; ``ghostreview validate`` and the generate stage of such a model stop with
    an error before drawing, so nothing is drawn for a score that cannot be computed.
    """
    present = {f: d for f, d in header_dirs.items() if d.is_dir() and any(d.iterdir())}
    notes = [f"paths.lora_headers.{f} ({d}) is empty: no {f} LoRA statistics; models of that family get no LoRA loss "
             f"until its header images are there (see docs/benchmark.md)" for f, d in header_dirs.items()
             if f not in present]
    return present, notes


def write_refstats(bench: Benchmark, style_dir: Path | None, header_dirs: Mapping[str, Path], vgg_spec: VggSpec,
                   image_size: int, out: Path) -> int:
    """Gram statistics of every reference set at ``image_size`` (the longer side), written to
    ``out/<set>.safetensors`` (swapped in atomically).

    VGG loads once every set is validated and runs one reference per forward (references differ in size; a batch of
    one is a fixed shape).
    """
    sets = reference_sets(bench, style_dir, header_dirs)
    vgg, _ = vgg_spec.load()

    def build(tmp: Path) -> None:
        with progress_bar(total=sum(map(len, sets.values())), desc="refstats", unit="img") as bar:
            for name, files in sets.items():
                shas = [styleloss.sha256_file(f) for f in files]
                stats = styleloss.ref_stats(vgg, counted(styleloss.open_images(files), bar), image_size, shas)
                styleloss.save_ref_stats(stats, tmp / f"{name}.safetensors")

    replace_dir(out, build)
    return len(sets)


def refstats_path(refstats: Path, task: str, row: Mapping[str, str]) -> Path:
    sub = f"styles/{row['item']}" if task == "style" else f"loras/{row['family']}/{row['item']}"
    return refstats / f"{sub}.safetensors"


def _group_refs(rows: Sequence[Mapping[str, str]], task: str, refstats: Path,
                image_size: int) -> dict[Path, list[Mapping[str, str]]]:
    """Rows grouped by their reference statistics file, in first-appearance order; each file checked up front."""
    groups: dict[Path, list[Mapping[str, str]]] = defaultdict(list)
    for row in rows:
        groups[refstats_path(refstats, task, row)].append(row)
    for path, group in groups.items():
        if not path.is_file():
            first = group[0]
            what = (f"style {first['item']!r}" if task == "style"
                    else f"LoRA {first['item']!r} ({first['family']}): was paths.lora_headers.{first['family']} "
                         f"empty when refstats ran? Put its header images there (see docs/benchmark.md), then")
            raise FileNotFoundError(f"{path}: no reference statistics for {what} run `dvc repro` (refstats reruns).")
        size = styleloss.read_ref_stats_meta(path)["size"]
        if size != image_size:
            raise ReferenceImagesError(f"{path} was computed at size {size}, params say scoring.style.image_size = "
                                       f"{image_size}: run `dvc repro` (refstats reruns).")
    return groups


def styleloss_rows(rows: Sequence[Mapping[str, str]], task: str, images_dir: Path, refstats: Path, vgg_spec: VggSpec,
                   image_size: int, batch_size: int) -> list[dict]:
    """StyleLoss (task "style") or LoRA loss (task "lora") rows, plus per-layer rows ``<metric>.<layer>``.

    Images are resized to ``image_size`` (the size the statistics were computed at; checked) and VGG runs in forwards
    of ``batch_size`` images (across reference sets: one model's images share one size), each image then compared
    with its own set's statistics. VGG loads once every statistics file is found.
    """
    info = styleloss.INFO if task == "style" else styleloss.LORA_INFO
    groups = _group_refs(rows, task, refstats, image_size)
    vgg, vgg_sha = vgg_spec.load()
    device = next(vgg.parameters()).device
    refs = {path: styleloss.load_ref_stats(path).to(device) for path in groups}
    ordered = [(path, row) for path, group in groups.items() for row in group]
    with progress_bar(total=len(ordered), desc=info.name, unit="img") as bar:
        grams = styleloss.image_grams(vgg, open_images(images_dir, [row for _, row in ordered]), image_size, batch_size)
        per_image = [styleloss.style_loss([g[None] for g in image], refs[path])
                     for (path, _), image in zip(ordered, counted(grams, bar))]
    losses = np.array([float(loss[0]) for loss, _ in per_image])
    layers = np.array([per_layer[0].cpu().numpy() for _, per_layer in per_image]).reshape(len(ordered), -1)
    out: list[dict] = []
    start = 0
    for group in groups.values():
        part = slice(start, start + len(group))
        out += score_rows(group, info.name, losses[part], info.version, vgg_sha)
        for j, layer in enumerate(styleloss.LAYERS):
            out += score_rows(group, f"{info.name}.{layer}", layers[part, j], info.version, vgg_sha)
        start += len(group)
    return out
