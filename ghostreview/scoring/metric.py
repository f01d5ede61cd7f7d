"""What every metric declares next to its code: ``MetricInfo``. Standardize and the report read directions, labels
and units from it; nothing retypes them."""

from __future__ import annotations

from dataclasses import dataclass

GROUPINGS = ("prompt", "style", "lora")


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of one metric.

    name: registry key and the ``metric`` column of score rows.
    version: bump when the definition or preprocessing changes (scores of different versions are not comparable).
    higher_is_better: direction used by standardize/ranking; a wrong value silently inverts a ranking.
    unit: human-readable unit or range.
    grouped_by: the benchmark item a score is compared within: "prompt", "style" or "lora".
    description: one line for the report.
    """

    name: str
    version: str
    higher_is_better: bool
    unit: str
    grouped_by: str
    description: str

    def __post_init__(self) -> None:
        if self.grouped_by not in GROUPINGS:
            raise ValueError(f"MetricInfo {self.name!r}: grouped_by={self.grouped_by!r}, expected one of {GROUPINGS}")
