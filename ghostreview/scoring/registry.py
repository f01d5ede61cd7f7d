"""The registered metrics: one line per metric module's ``INFO``.

Standardize and the report read every metric's direction and metadata from ``REGISTRY``. Only registered names are
standardized; per-layer StyleLoss rows (``styleloss.relu3_1``...) are diagnostics and are not registered. A new
judge is a new module in this folder with its ``INFO`` and one line here. A registered metric that a review does
not compute (``scoring.judges`` leaves it out) has no score rows; standardize and the report show only the metrics
that have rows (tests/test_clipscore.py).
"""

from __future__ import annotations

from ghostreview.scoring import aesthetic, clipscore, diversity, hpsv21, pickscore, styleloss
from ghostreview.scoring.metric import MetricInfo
from ghostreview.util.names import did_you_mean

REGISTRY: dict[str, MetricInfo] = {
    info.name: info for info in (aesthetic.INFO, clipscore.INFO, styleloss.INFO, styleloss.LORA_INFO, hpsv21.INFO,
                                 pickscore.INFO, diversity.INFO)
}


def get_metric(name: str) -> MetricInfo:
    """Return the registered metric ``name``; unknown names fail with the valid names and a close match."""
    if name in REGISTRY:
        return REGISTRY[name]
    hint = did_you_mean(name, REGISTRY, quote="'")
    raise ValueError(f"Unknown metric {name!r}.{hint} Available: {sorted(REGISTRY)}")
