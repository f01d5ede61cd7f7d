"""GhostReview's metrics: metadata registry.

Each metric module declares its own ``INFO`` next to its code; this package collects them in ``REGISTRY`` so that
standardize and report read the direction (``higher_is_better``) from one place. Only registered names are
standardized; per-layer StyleLoss rows (``styleloss.relu3_1``...) are diagnostics and are not registered.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


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


GROUPINGS = ("prompt", "style", "lora")

# Imported after MetricInfo exists: each module does `from ghostreview.metrics import MetricInfo`.
from ghostreview.metrics import aesthetic, clipscore, styleloss  # noqa: E402

REGISTRY: dict[str, MetricInfo] = {
    info.name: info for info in (aesthetic.INFO, clipscore.INFO, styleloss.INFO, styleloss.LORA_INFO)
}


def get_metric(name: str) -> MetricInfo:
    """Return the registered metric ``name``; unknown names fail with the valid names and a close match."""
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(name, list(REGISTRY), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown metric {name!r}.{hint} Available: {sorted(REGISTRY)}")
