"""How the report names and orients each scored metric: one ``Shown`` record per metric of the score table.

Registered metrics take label, axis text and direction from their ``MetricInfo`` (declared next to the metric's
code and passed in by the caller, so that importing the report never imports the scorers and torch). This module is
the one owner of the labels of the columns standardize derives: ``combined`` and ``<lora metric>_notm``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ghostreview.analysis.standardize import COMBINED, Standardized
from ghostreview.scoring.metric import MetricInfo, better_word

COMBINED_LABEL = "Combined"
# standardize names the LoRA metric's variant without the model's own LoRAs f"{lora_metric}_notm"
NOTM_SUFFIX = "_notm"
NOTM_LABEL = "NoTM"


@dataclass(frozen=True)
class Shown:
    """One scored metric as the report shows it.

    name: the ``metric`` value of the score table. label: table column, sort button, plot title. axis_label: what a
    raw value is ("" for derived metrics, which have no raw values). higher_is_better: the direction standardize
    ranked with.
    """

    name: str
    label: str
    axis_label: str
    higher_is_better: bool

    @property
    def better(self) -> str:
        """"higher" or "lower" (as in "... is better")."""
        return better_word(self.higher_is_better)

    @property
    def arrow(self) -> str:
        """"↑" (higher is better) or "↓" (lower is better): the direction mark of a column header."""
        return "↑" if self.higher_is_better else "↓"

    @property
    def heading(self) -> str:
        """The label with its direction mark, as a column header: "StyleLoss ↓"."""
        return f"{self.label} {self.arrow}"


def scored_metrics(result: Standardized) -> list[str]:
    """Metric names of the score table, in the order standardize wrote them (registered, NoTM, combined)."""
    return list(dict.fromkeys(result.scores["metric"]))


def registered(info: MetricInfo) -> Shown:
    """A registered metric, all from its ``MetricInfo``."""
    return Shown(info.name, info.label, info.axis_label, info.higher_is_better)


def derived(name: str, higher_is_better: bool, lora_metric: str, metrics: Mapping[str, MetricInfo]) -> Shown:
    """``combined`` or ``<lora_metric>_notm``; any other unregistered name fails, naming the registered ones."""
    if name == COMBINED:
        return Shown(name, COMBINED_LABEL, "", higher_is_better)
    if name == f"{lora_metric}{NOTM_SUFFIX}" and lora_metric in metrics:
        return Shown(name, f"{metrics[lora_metric].label} {NOTM_LABEL}", "", higher_is_better)
    raise ValueError(f"scored metric {name!r} is neither registered ({sorted(metrics)}) nor derived by standardize "
                     f"({COMBINED!r}, {lora_metric + NOTM_SUFFIX!r}): pass the registry the scores were made with")


def check_direction(info: MetricInfo, ranked_higher: bool) -> None:
    """The direction standardize ranked with must be ``info``'s: a registry changed since standardize ran would
    otherwise label a ranking with the wrong direction."""
    if ranked_higher != info.higher_is_better:
        raise ValueError(f"metric {info.name!r}: standardize ranked with higher_is_better={ranked_higher}, the "
                         f"registry says {info.higher_is_better}; rerun standardize (dvc repro standardize)")


def ranked_directions(result: Standardized) -> dict[str, bool]:
    """``{metric: higher_is_better}`` as standardize ranked each scored metric (its score table's column)."""
    return {str(m): bool(h) for m, h in zip(result.scores["metric"], result.scores["higher_is_better"])}


def shown_metrics(result: Standardized, metrics: Mapping[str, MetricInfo]) -> dict[str, Shown]:
    """``{name: Shown}`` for every scored metric of ``result``, in ``scored_metrics`` order.

    metrics: the registry (name -> MetricInfo). Registered metrics take label and direction from ``metrics`` (the
    direction must be the one standardize ranked with); derived ones the direction standardize gave them.
    """
    ranked = ranked_directions(result)
    lora_metric = str(result.meta.get("lora_metric", ""))
    out: dict[str, Shown] = {}
    for name in scored_metrics(result):
        if name in metrics:
            check_direction(metrics[name], ranked[name])
            out[name] = registered(metrics[name])
        else:
            out[name] = derived(name, ranked[name], lora_metric, metrics)
    return out


def losses(shown: Mapping[str, Shown], names: list[str]) -> list[Shown]:
    """The lower-is-better metrics among ``names``, in that order."""
    return [shown[m] for m in names if not shown[m].higher_is_better]
