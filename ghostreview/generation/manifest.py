"""The image manifest of one model (``data/images/<model>/manifest.csv``): its columns and its reader.

Kept apart from ``ghostreview.generation.generate`` so that the scoring stages, which only read manifests, do not import
diffusers (seconds per stage process).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from ghostreview.errors import UserError

MANIFEST_COLUMNS = (
    "model", "family", "task", "item", "seed", "image", "image_hash", "prompt", "negative_prompt", "loras",
    "lora_status", "width", "height", "flags", "infotext",
)



class ManifestError(UserError):
    """A model's generate output (``manifest.csv``, ``model.json``) is missing or not what this version writes."""


def manifest_file(directory: Path) -> Path:
    """``<directory>/manifest.csv``; a ManifestError naming the file, the model and the fix when it is missing."""
    path = Path(directory) / "manifest.csv"
    if not path.is_file():
        model = Path(directory).name
        raise ManifestError(f"{path}: no such file: the images of model {model!r} are not generated yet; run "
                            f"`dvc repro generate@{model}` (or fix the images directory given to this stage).")
    return path


def check_columns(path: Path, columns: Iterable[str]) -> None:
    """Every column of MANIFEST_COLUMNS is among ``columns``; else a ManifestError naming the first missing one."""
    have = set(columns)
    missing = [c for c in MANIFEST_COLUMNS if c not in have]
    if missing:
        raise ManifestError(f"{path}: no column {missing[0]!r} (missing: {', '.join(missing)}): not a manifest this "
                            f"version's generate stage writes; run `dvc repro -f generate@{path.parent.name}`.")


def read_manifest(directory: Path) -> list[dict]:
    """The manifest rows of one model's image directory, its columns checked."""
    path = manifest_file(directory)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        check_columns(path, reader.fieldnames or ())
        return list(reader)
