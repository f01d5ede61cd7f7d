"""The scoring stages' library side: which model to load (``ClipSpec``, ``VggSpec``), the reference statistics
(refstats stage) and the manifest helpers the score stage's scorers (``ghostreview.scoring.scorers``) share.

Metric definitions live in ``ghostreview/scoring/`` (one module each). Expensive features are computed once: the
reference Gram statistics here (shared by every model), CLIP image embeddings in the score store (shared by
aesthetic and CLIPScore).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image

from ghostreview.errors import UserError
from ghostreview.generation.families import BASE_LORA_TABLES, table_family
from ghostreview.protocol import Benchmark
from ghostreview.scoring import styleloss
from ghostreview.scoring.clip import ClipModel, load_clip
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

    def load(self, hash_cache: Path | None = None) -> ClipModel:
        return load_clip(self.arch, self.weights, model_config=self.model_config, device=pick_device(self.device),
                         expected_sha256=self.sha256, hash_cache=hash_cache)


# ------------------------------------------------------------------------------------------------ StyleLoss


@dataclass(frozen=True)
class VggSpec:
    """Which VGG19 to load, and where: its local weights file, the sha256 it must have (None: not checked) and a
    device name ("auto", "cpu", ..., resolved by ``runtime.pick_device`` before the weights load)."""

    weights: Path
    sha256: str | None = None
    device: str = "cpu"

    def load(self, hash_cache: Path | None = None):
        """VGG19 features on the device, and the weights file's sha256 (``hash_cache``: see ``clip.load_clip``)."""
        sha = verify_weights(self.weights, self.sha256, cache_file=hash_cache)
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


def reference_sets(bench: Benchmark, style_dir: Path | None, header_dirs: Mapping[str, Path],
                   tables: Iterable[str] | None = None) -> dict[str, list[Path]]:
    """Every reference set (``styles/<Style>``, ``loras/<family>/<name>``) and its image files, validated up front.

    ``header_dirs`` maps a family to its header directory; the LoRA tables read are ``tables`` (a model's: each
    must be complete), or with None every table of those families, except a base's own table (Pony, Illustrious:
    ``BASE_LORA_TABLES``) none of whose header folders is there (a review without such models needs none).

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
    for table in (list(tables) if tables is not None else _present_tables(bench, header_dirs)):
        family = table_family(table)
        if family not in header_dirs:
            continue
        directory = header_dirs[family]
        for entry in bench.loras.get(table, ()):
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


def _present_tables(bench: Benchmark, header_dirs: Mapping[str, Path]) -> list[str]:
    """The tables of ``header_dirs``' families whose header images are to be there: every family's own, and a base's
    table when one of its header folders exists."""
    return [t for t, entries in bench.loras.items() if table_family(t) in header_dirs and (
        t not in BASE_LORA_TABLES or any((header_dirs[table_family(t)] / e.name).is_dir() for e in entries))]


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


def check_refstats(path: Path, task: str, row: Mapping[str, str], image_size: int) -> None:
    """The reference statistics file of ``row`` exists and was computed at ``image_size`` (the score stage checks
    each one before VGG loads)."""
    if not path.is_file():
        what = (f"style {row['item']!r}" if task == "style"
                else f"LoRA {row['item']!r} ({row['family']}): was paths.lora_headers.{row['family']} "
                     f"empty when refstats ran? Put its header images there (see docs/benchmark.md), then")
        raise FileNotFoundError(f"{path}: no reference statistics for {what} run `dvc repro` (refstats reruns).")
    size = styleloss.read_ref_stats_meta(path)["size"]
    if size != image_size:
        raise ReferenceImagesError(f"{path} was computed at size {size}, params say scoring.style.image_size = "
                                   f"{image_size}: run `dvc repro` (refstats reruns).")
