"""``reports/metrics.json``, what ``dvc metrics show/diff`` and ``dvc exp show/diff`` compare between experiments.

z-scores and ranks are relative: when a setting improves every model's images, every z stays where it was (the
combined scores of the demo's models summed to about the same under every sampler). So the file leads with absolute
figures, which do move, and keeps to a few numbers per model so that ``dvc exp show`` stays readable; everything else
is in the leaderboard. Layout (two levels; DVC shows ``_all.aesthetic_mean``, ``<model>.rank``, ...)::

    {"_all": {"aesthetic_mean", "aesthetic_std", "aesthetic_good_rate", "clipscore_mean", "styleloss_mean",
              "loraloss_mean", "flagged_images"},
     "<model>": {"combined", "rank", "aesthetic_mean", "clipscore_mean", "styleloss_mean", "loraloss_mean"}, ...}

- ``_all``: over every reviewed model's images together. ``<metric>_mean`` (and the raw metric's ``_std``, ddof=0,
  and ``_good_rate``, the share >= the good-image threshold) are raw values over the images standardize counts
  (``standardize.usable_raw``: the metric's own task, unflagged, finite). ``flagged_images``: distinct images
  carrying any flag (the sum of the leaderboard's "Flagged images", ``tables.flagged_images``).
- ``<model>``: ``combined`` (the combined z-score, higher is better, over ``meta["combined_over"]``), ``rank`` (its
  rank, 1 = best) and the model's raw ``<metric>_mean`` (standardize's ``raw`` table). Models in params order.

One key per registered metric scored (the registry's names); no NoTM, interval or per-metric z columns (the
leaderboard has them). A value that does not exist (a model with no usable image of a metric, no combined rank) is
null, which DVC shows as "-". Sorting rows by rank would move columns between experiments; params order does not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ghostreview.analysis.report.tables import flagged_images
from ghostreview.analysis.standardize import COMBINED, Standardized, raw_stats, usable_raw
from ghostreview.util.atomic import write_text_atomic

ALL = "_all"  # the overall group's key: starts with "_" so that no model slug can take it


def number(value: object) -> float | int | None:
    """A JSON number: numpy scalars as Python ones, integral counts as int, NaN/inf/NA as None (null)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"metrics.json takes numbers, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def raw_metrics(result: Standardized) -> list[str]:
    """The registered metrics scored, in standardize's order (its ``raw`` table has a row per metric and model)."""
    if "metric" not in result.raw.columns:
        raise ValueError("standardize's raw table has no metric column: written by an older standardize; rerun it "
                         "(dvc repro standardize)")
    return [str(m) for m in dict.fromkeys(result.raw["metric"])]


def overall(result: Standardized, metrics: Sequence[str]) -> dict[str, float | int | None]:
    """The ``_all`` group: raw figures over every model's usable images and the flagged-image count."""
    raw_metric, threshold = result.meta.get("raw_metric"), float(result.meta.get("good_threshold", math.nan))
    out: dict[str, float | int | None] = {}
    for metric in metrics:
        stats = raw_stats(usable_raw(result.images, metric)["value"], threshold)
        out[f"{metric}_mean"] = number(stats["mean"])
        if metric == raw_metric:
            out[f"{metric}_std"], out[f"{metric}_good_rate"] = number(stats["std"]), number(stats["good_rate"])
    out["flagged_images"] = len(flagged_images(result))
    return out


def per_model(result: Standardized, models: Sequence[str],
              metrics: Sequence[str]) -> dict[str, dict[str, float | int | None]]:
    """``{model: {"combined", "rank", "<metric>_mean"...}}`` in ``models`` order."""
    combined = result.scores[result.scores["metric"] == COMBINED].set_index("model")
    raw = result.raw.set_index(["model", "metric"])["mean"]
    out = {}
    for model in models:
        entry: dict[str, float | int | None] = {
            "combined": number(combined.loc[model, "score"]),
            "rank": number(combined.loc[model, "rank"]),
        }
        if entry["rank"] is not None:
            entry["rank"] = int(entry["rank"])
        for metric in metrics:
            entry[f"{metric}_mean"] = number(raw.get((model, metric), math.nan))
        out[model] = entry
    return out


def metrics_json(result: Standardized, models: Sequence[str]) -> dict[str, dict[str, float | int | None]]:
    """The document (layout in the module docstring); ``models``: the model keys in params order."""
    names = [str(m) for m in models]
    if ALL in names:
        raise ValueError(f"a model is named {ALL!r}, the key metrics.json keeps for the overall figures: rename it")
    unknown = sorted(set(names) - set(result.scores["model"].astype(str)))
    if unknown:
        raise ValueError(f"models {unknown} have no scores in the standardize output: rerun dvc repro standardize")
    metrics = raw_metrics(result)
    return {ALL: overall(result, metrics), **per_model(result, names, metrics)}


def write_metrics_json(result: Standardized, models: Sequence[str], path: str | Path) -> Path:
    """Write ``metrics_json`` to ``path`` (JSON, 2-space indent, no NaN); returns the path."""
    text = json.dumps(metrics_json(result, models), indent=2, allow_nan=False) + "\n"
    return write_text_atomic(Path(path), text)
