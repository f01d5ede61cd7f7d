"""What every metric declares next to its code: ``MetricInfo``. Standardize and the report read directions, labels
and units from it; nothing retypes them."""

from __future__ import annotations

from dataclasses import dataclass

GROUPINGS = ("prompt", "style", "lora")


def better_word(higher_is_better: bool) -> str:
    """The direction word the report writes before "is better": "higher" or "lower"."""
    return "higher" if higher_is_better else "lower"


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of one metric, declared once in the metric's module (``INFO``) and registered in ``registry``.

    name: registry key and the ``metric`` column of score rows.
    version: bump when the definition or preprocessing changes (scores of different versions are not comparable).
    higher_is_better: direction used by standardize/ranking and every "higher/lower is better" the report writes; a
        wrong value silently inverts a ranking.
    unit: human-readable unit or range.
    grouped_by: the benchmark item a score is compared within: "prompt", "style" or "lora".
    description: one line for the report.
    label: display name, short enough for a table column, a sort button and a plot title ("Aesthetic"); derived
        report columns build on it (``<lora metric>_notm`` is shown as "<label> NoTM").
    axis_label: what one raw per-image value is, for plot axes and colour bars ("LAION aesthetic"); the report adds
        whether it plots raw values or means of them.
    better: (property) ``better_word(higher_is_better)``.
    """

    name: str
    version: str
    higher_is_better: bool
    unit: str
    grouped_by: str
    description: str
    label: str
    axis_label: str

    def __post_init__(self) -> None:
        if self.grouped_by not in GROUPINGS:
            raise ValueError(f"MetricInfo {self.name!r}: grouped_by={self.grouped_by!r}, expected one of {GROUPINGS}")
        if not self.label.strip() or not self.axis_label.strip():
            raise ValueError(f"MetricInfo {self.name!r}: label={self.label!r} and axis_label={self.axis_label!r} "
                             "must be non-empty (the report shows them)")

    @property
    def better(self) -> str:
        return better_word(self.higher_is_better)
