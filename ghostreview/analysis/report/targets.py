"""The targets a grid of the report shows next to the generated images: each style's reference images, each LoRA's
header images, and the family whose LoRA table a LoRA item belongs to (SD1.5 and SDXL LoRAs get sections apart).

Built from the benchmark and its reference sets as ``scoring.run.reference_sets`` lists and validates them (the one
owner of which files form a set), passed in by the report stage so that the report imports no scoring code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ghostreview.generation.families import table_family
from ghostreview.protocol import Benchmark


@dataclass(frozen=True)
class Targets:
    """images: (task, item) -> the target image files shown with that item's grid ("style", style name: its
    reference images; "lora", LoRA name: its header images). lora_families: LoRA item -> family of its table."""

    images: Mapping[tuple[str, str], tuple[Path, ...]] = field(default_factory=dict)
    lora_families: Mapping[str, str] = field(default_factory=dict)


def benchmark_targets(bench: Benchmark, sets: Mapping[str, Sequence[Path]]) -> Targets:
    """The targets of ``bench``'s styles and LoRAs.

    sets: what ``scoring.run.reference_sets`` returns, ``{"styles/<style>": files, "loras/<family>/<name>": files}``
    (its set names, which are also the refstats file names). A style or LoRA without a set (a task or a family left
    out of the review) gets no target images; every LoRA of the benchmark's tables gets its family.
    """
    images: dict[tuple[str, str], tuple[Path, ...]] = {}
    for style in bench.styles:
        if f"styles/{style.name}" in sets:
            images[("style", style.name)] = tuple(sets[f"styles/{style.name}"])
    families: dict[str, str] = {}
    for table, entries in bench.loras.items():
        family = table_family(table)  # a base's table (Pony, Illustrious) keeps its files in its family's folders
        for entry in entries:
            families[entry.name] = family
            if f"loras/{family}/{entry.name}" in sets:
                images[("lora", entry.name)] = tuple(sets[f"loras/{family}/{entry.name}"])
    return Targets(images, families)
