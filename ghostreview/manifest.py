"""The image manifest of one model (``data/images/<model>/manifest.csv``): its columns and its reader.

Kept apart from ``ghostreview.generate`` so that the scoring stages, which only read manifests, do not import
diffusers (seconds per stage process).
"""

from __future__ import annotations

import csv
from pathlib import Path

MANIFEST_COLUMNS = (
    "model", "family", "task", "item", "seed", "image", "image_hash", "prompt", "negative_prompt", "loras",
    "lora_status", "width", "height", "flags", "infotext",
)


def read_manifest(directory: Path) -> list[dict]:
    """The manifest rows of one model's image directory."""
    with open(Path(directory) / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
