"""How many prompts and seeds a review needs: variance components of a finished review and what they predict.

Model of a metric's z on its task (standardize's z, so the answer is on the scale the leaderboard shows)::

    z[i, m, s] = p[i] + mu[m] + g[i, m] + c[i, s] + e[i, m, s]

with item (prompt, style, LoRA) effect p (variance ``prompt``), model-by-item interaction g (``interaction``: a
model better on some prompts than on others), a seed effect every model shares c (``shared_seed``: the same seed
starts every model from the same noise; in the demo's random-weight models it is nearly all the seed variance) and
model-specific image noise e (``seed``). They are estimated by the method of moments from the review's usable images
(status ok) on the items every model has: ``seed`` and ``shared_seed`` from each item's models x seeds table
(``seed_split``), and from the two-way table of cell means d[i, m] (k = the harmonic mean of the seeds per cell)
MS_int = sum (d - d_i. - d_.m + d..)^2 / ((I-1)(M-1)) estimates interaction + seed / k (c is the same for every
model: it cancels) and MS_item = M sum (d_i. - d..)^2 / (I-1) estimates M (prompt + shared_seed / k) + interaction +
seed / k, negative estimates clipped to 0. With one seed per cell (the demo's styles and LoRAs) the seed components
cannot be measured: they are NaN, the interaction estimate then holds one seed's noise too, and plans for more seeds
are conservative (too many items).

A model's score is the mean of its z over n items of k seeds; the bootstrap resamples items, so its variance is the
variance of a model's item means over items, over n:

- reference mode: (prompt + shared_seed / k + interaction + seed / k) / n;
- pool mode: (interaction + seed / k) (1 - 1/M) / n: z are centered per item over the M models, which removes p
  and c (their estimates are 0 here) and the models' shared part of g and e.

A difference between two models: 2 (interaction + seed / k) / n in both modes (p cancels). Half-width = the normal
quantile of the interval level times the standard error (the bootstrap's Rao-Wu weights give the ddof=1 variance,
tests/test_planning.py checks the prediction against the intervals of simulated reviews). Power to separate two
models that differ by d: P(the difference's interval excludes 0 on the right side) = Phi(d / se - z), per pair (a
Holm-corrected claim among many pairs needs more). More seeds shrink only the seed term: once seed / k is small
against the interaction, only more prompts help.

Images and time: n items x k seeds per model; GPU time needs seconds per image, which the manifests do not record
(the caller passes a measured figure, e.g. from benchmarks/RESULTS.md, or gets no time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from ghostreview.analysis.standardize import Standardized

SEED_OPTIONS = (1, 2, 4, 8, 16)
PLAN_COLUMNS = ("metric", "task", "seeds", "items", "items_for_half_width", "items_for_power", "half_width",
                "difference_half_width", "power", "images_per_model", "images", "gpu_hours")


@dataclass(frozen=True)
class Components:
    """Variance components of one metric's z (module docstring) and the design they were measured on."""

    metric: str
    task: str
    prompt: float
    interaction: float
    seed: float  # model-specific image noise (e)
    n_items: int
    n_seeds: float  # harmonic mean of seeds per (item, model) cell
    n_models: int
    centered: bool  # pool mode: z centered per item over the models
    shared_seed: float = 0.0  # the part of a seed's effect every model shares (c: the same start noise)

    def item_variance(self, k: float) -> float:
        """Variance over items of one model's mean z over k seeds (what a score's variance is, times n); NaN
        without 2 models (no components)."""
        if self.n_models < 2:
            return math.nan
        within = self.interaction + self.seed_term(k)
        if self.centered:  # the shared seed effect is in every model's images of the item: centering removes it
            return within * (1 - 1 / self.n_models)
        shared = self.shared_seed / k if math.isfinite(self.shared_seed) else 0.0
        return self.prompt + shared + within

    def difference_variance(self, k: float) -> float:
        """Variance over items of the difference of two models' mean z over k seeds."""
        return 2 * (self.interaction + self.seed_term(k))

    def seed_term(self, k: float) -> float:
        """seed / k; 0 when the seed component is not measured (one seed per cell: ``interaction`` then holds the
        seed noise of one seed, so a plan for more seeds is conservative)."""
        return self.seed / k if math.isfinite(self.seed) else 0.0


def cell_table(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(cell means [I, M], seed counts [I, M], pooled within-cell variance, its degrees of freedom) over the items
    that every model of ``rows`` has (rows: model, item, z)."""
    cells = rows.groupby(["item", "model"], sort=True)["z"].agg(["mean", "count", "var"])
    means, counts = cells["mean"].unstack(), cells["count"].unstack()
    complete = means.notna().all(axis=1)
    means, counts = means[complete], counts[complete]
    kept = cells.loc[cells.index.get_level_values("item").isin(means.index)]
    df = float((kept["count"] - 1).sum())
    ss = float((kept["var"].fillna(0.0) * (kept["count"] - 1)).sum())
    return means.to_numpy(float), counts.to_numpy(float), ss / df if df > 0 else math.nan, df


def seed_split(rows: pd.DataFrame) -> tuple[float, float]:
    """(model-specific seed variance e, shared seed variance c) from the (item, seed) rows every model has (rows:
    model, item, seed, z): within each item a models x seeds table, e from its additive-fit residuals (pooled over
    items, (M-1)(k-1) df each), c from its seed means (M sum_s (z_is - z_i)^2 / (k-1) estimates M c + e). NaN, NaN
    with fewer than 2 such seeds in every item."""
    table = rows.pivot_table(index=["item", "seed"], columns="model", values="z", aggfunc="mean").dropna()
    n_models = table.shape[1]
    sizes = table.groupby(level="item").size()
    table = table[table.index.get_level_values("item").isin(sizes[sizes >= 2].index)]
    if table.empty or n_models < 2:
        return math.nan, math.nan
    item_level = table.index.get_level_values("item")
    z = table.to_numpy(float)
    seed_mean = z.mean(axis=1, keepdims=True)
    model_mean = table.groupby(level="item").transform("mean").to_numpy(float)
    item_mean = pd.Series(seed_mean[:, 0]).groupby(item_level).transform("mean").to_numpy()[:, None]
    resid = z - seed_mean - model_mean + item_mean
    k = sizes[sizes >= 2]
    e = float((resid ** 2).sum() / ((n_models - 1) * (k - 1)).sum())
    ms_c = float(n_models * ((seed_mean - item_mean) ** 2).sum() / (k - 1).sum())
    return e, max(0.0, (ms_c - e) / n_models)


def components(images: pd.DataFrame, metric: str, task: str, *, centered: bool) -> Components:
    """Variance components of ``metric`` from standardize's image table (its status ok rows); NaN components with
    fewer than 2 complete items or 2 models."""
    rows = images[(images["metric"] == metric).to_numpy() & (images["status"] == "ok").to_numpy()]
    d, k, _, _ = cell_table(rows.loc[:, ["model", "item", "z"]])
    n_items, n_models = d.shape
    if n_items < 2 or n_models < 2:
        return Components(metric, task, math.nan, math.nan, math.nan, n_items, math.nan, n_models, centered)
    seed, shared = seed_split(rows.loc[:, ["model", "item", "seed", "z"]])
    k_bar = float(len(k.ravel()) / (1 / k).sum())
    item_mean, model_mean, grand = d.mean(axis=1, keepdims=True), d.mean(axis=0, keepdims=True), d.mean()
    ms_int = float(((d - item_mean - model_mean + grand) ** 2).sum() / ((n_items - 1) * (n_models - 1)))
    ms_item = float(n_models * ((item_mean - grand) ** 2).sum() / (n_items - 1))
    noise = seed / k_bar if math.isfinite(seed) else 0.0  # the shared part cancels between models: not in ms_int
    prompt = (ms_item - ms_int) / n_models - (shared / k_bar if math.isfinite(shared) else 0.0)
    return Components(metric, task, max(0.0, prompt), max(0.0, ms_int - noise), seed, n_items, k_bar, n_models,
                      centered, shared)


def quantile(ci: float) -> float:
    """The two-sided normal quantile of interval level ``ci`` (1.96 at 0.95)."""
    return float(norm.ppf((1 + ci) / 2))


def half_width(c: Components, n: int, k: float, ci: float) -> float:
    """Predicted half-width of a model's score interval with n items of k seeds."""
    return quantile(ci) * math.sqrt(c.item_variance(k) / n)


def difference_half_width(c: Components, n: int, k: float, ci: float) -> float:
    """Predicted half-width of the interval of a difference between two models' scores."""
    return quantile(ci) * math.sqrt(c.difference_variance(k) / n)


def power(c: Components, n: int, k: float, difference: float, ci: float) -> float:
    """Chance that the interval of two models' difference, truly ``difference`` apart, excludes 0 (per pair)."""
    se = math.sqrt(c.difference_variance(k) / n)
    if not math.isfinite(se):
        return math.nan
    return float(norm.cdf(difference / se - quantile(ci))) if se > 0 else 1.0


def items_needed(variance: float, se: float) -> int:
    """Smallest n with variance / n <= se^2 (at least 2: the bootstrap needs two items); 0 when undefined."""
    if not (math.isfinite(variance) and se > 0):
        return 0
    return max(2, math.ceil(variance / se ** 2))


def plan_rows(c: Components, *, target_half_width: float, difference: float, target_power: float, ci: float,
              seeds: Sequence[int] = SEED_OPTIONS, seconds_per_image: float | None = None) -> list[dict]:
    """PLAN_COLUMNS rows of one metric: for each seed count k, the items for the target half-width of a model's
    score and for ``target_power`` to separate models ``difference`` apart, ``items`` = the larger, and the
    predicted half-widths and power, images and (given seconds per image) GPU hours at that size."""
    z_power = float(norm.ppf(target_power))
    out = []
    for k in seeds:
        for_hw = items_needed(c.item_variance(k), target_half_width / quantile(ci))
        for_power = items_needed(c.difference_variance(k), difference / (quantile(ci) + z_power))
        n = max(for_hw, for_power)
        per_model = n * k
        hours = per_model * c.n_models * seconds_per_image / 3600 if seconds_per_image and n else math.nan
        ok = n > 0
        out.append({"metric": c.metric, "task": c.task, "seeds": k, "items": n, "items_for_half_width": for_hw,
                    "items_for_power": for_power,
                    "half_width": half_width(c, n, k, ci) if ok else math.nan,
                    "difference_half_width": difference_half_width(c, n, k, ci) if ok else math.nan,
                    "power": power(c, n, k, difference, ci) if ok else math.nan,
                    "images_per_model": per_model, "images": per_model * c.n_models, "gpu_hours": hours})
    return out


def review_components(result: Standardized) -> list[Components]:
    """``components`` of every registered metric a finished review scored (its meta ``metric_tasks``), centered
    unless it was standardized against a reference set."""
    tasks = result.meta.get("metric_tasks") or {}
    centered = result.meta.get("standardization", "pool") == "pool"
    return [components(result.images, str(m), str(t), centered=centered) for m, t in dict(tasks).items()]


def plan_table(comps: Sequence[Components], *, target_half_width: float, difference: float, target_power: float,
               ci: float, seeds: Sequence[int] = SEED_OPTIONS,
               seconds_per_image: float | None = None) -> pd.DataFrame:
    """PLAN_COLUMNS rows of every metric of ``comps`` (``plan_rows``)."""
    rows = [r for c in comps for r in plan_rows(c, target_half_width=target_half_width, difference=difference,
                                                target_power=target_power, ci=ci, seeds=seeds,
                                                seconds_per_image=seconds_per_image)]
    return pd.DataFrame(rows, columns=list(PLAN_COLUMNS))


def plan_text(plan: pd.DataFrame, comps: Sequence[Components], ci: float) -> str:
    """What ``ghostreview plan`` prints: each metric's components and design, then its plan rows."""
    lines = []
    for c in comps:
        now = half_width(c, c.n_items, c.n_seeds, ci) if c.n_items >= 2 else math.nan
        lines.append(f"{c.metric} ({c.task}): variance of z by item {c.prompt:.4f}, model x item {c.interaction:.4f}, "
                     f"seed {c.seed:.4f}; now {c.n_items} items x {c.n_seeds:.3g} seeds x {c.n_models} models, "
                     f"predicted half-width {now:.3f}")
        rows = plan[plan["metric"] == c.metric]
        lines.append(rows.drop(columns=["metric", "task"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        lines.append("")
    return "\n".join(lines)
