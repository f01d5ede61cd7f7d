"""The planner (ghostreview.analysis.planning): variance components and predicted interval half-widths, checked
against the intervals standardize itself reports on simulated reviews of the predicted size.

Simulation as in tests/test_interval_coverage.py: value = prompt (sd 1) + model effect + model x prompt (sd 0.5) +
image noise (sd 1), 4 models, plus a seed effect every model shares (sd 1: the same seed starts every model from the
same noise; in the demo's random-weight models it is nearly all the seed variance). A planner that took it for
model-specific noise over-predicted pool-mode half-widths. The planner reads one review of 30 prompts x 8 seeds and
predicts the half-width of a model's interval at 12 prompts x 2 seeds; 40 reviews of that size (fixed seed, 300
resamples each) give the measured mean half-width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from ghostreview.analysis.planning import (
    Components,
    components,
    difference_half_width,
    half_width,
    items_needed,
    plan_table,
    power,
)
from ghostreview.analysis.reference import freeze
from ghostreview.analysis.standardize import estimates, image_table, standardize


@dataclass(frozen=True)
class Info:
    """Stand-in for ghostreview.scoring.metric.MetricInfo (only what standardize reads: MetricLike)."""

    higher_is_better: bool
    grouped_by: str


METRICS = {"aesthetic": Info(True, "prompt")}
MU = np.array([0.0, 0.0, 0.25, 0.5])
MODELS = pd.DataFrame({"model": ["A", "B", "C", "D"], "family": "sd15", "sha256": ["a", "b", "c", "d"]})
CI = 0.95
SHARED_SD = 1.0  # a seed's effect shared by every model (the same start noise): cancels between models


def scores(rng: np.random.Generator, prompts: int, seeds: int, tag: str = "") -> pd.DataFrame:
    x = (rng.normal(size=(prompts, 1, 1)) + MU[None, :, None] + rng.normal(0, 0.5, (prompts, 4, 1))
         + rng.normal(0, SHARED_SD, (prompts, 1, seeds)) + rng.normal(size=(prompts, 4, seeds)))
    i, m, s = (a.ravel() for a in np.meshgrid(*map(np.arange, x.shape), indexing="ij"))
    names = MODELS["model"].to_numpy()
    return pd.DataFrame({"model": names[m], "task": "general", "item": [f"{tag}p{v}" for v in i], "seed": s,
                         "image_hash": [f"{tag}{a}{b}{c}" for a, b, c in zip(m, i, s)], "metric": "aesthetic",
                         "value": x.ravel(), "flags": ""})


def measured(rng, prompts, seeds, reference=None) -> tuple[float, float]:
    """Mean half-width over 40 simulated reviews: of a model's interval, and of a difference's (A - D)."""
    widths, diffs = [], []
    for r in range(40):
        images, _ = image_table(scores(rng, prompts, seeds), MODELS, METRICS, reference)
        (e, *_), _ = estimates(images, list(MODELS["model"]), METRICS, {}, n_boot=300, seed=r,
                               lora_metric="loraloss")
        lo, hi = np.percentile(e.boot, [2.5, 97.5], axis=0)
        widths.append(np.mean((hi - lo) / 2))
        d = np.percentile(e.boot[:, 3] - e.boot[:, 0], [2.5, 97.5])
        diffs.append((d[1] - d[0]) / 2)
    return float(np.mean(widths)), float(np.mean(diffs))


@pytest.mark.parametrize("mode", ["pool", "reference"])
def test_predicted_half_width_matches_simulated_reviews_within_20_percent(mode):
    rng = np.random.default_rng(2026)
    reference = None
    if mode == "reference":
        anchors = standardize(scores(rng, 30, 8), MODELS, METRICS, {}, n_boot=10, n_splits=1, drift=False)
        anchors.meta["benchmark"] = {"name": "b", "version": "1", "digest": "x"}
        reference = freeze(anchors, MODELS, "anchors").groups
    pilot, _ = image_table(scores(rng, 30, 8), MODELS, METRICS, reference)
    c = components(pilot, "aesthetic", "general", centered=mode == "pool")
    assert c.n_items == 30 and c.n_seeds == 8 and c.n_models == 4
    # the simulation's truth, on the z scale: interaction 0.25, seed 1 and shared seed 1 (in the same units)
    assert c.seed == pytest.approx(c.interaction * 4, rel=0.5) and c.shared_seed == pytest.approx(c.seed, rel=0.5)
    predicted, predicted_diff = half_width(c, 12, 2, CI), difference_half_width(c, 12, 2, CI)
    width, diff = measured(rng, 12, 2, reference)
    print(f"{mode}: half-width predicted {predicted:.4f}, measured {width:.4f}; difference {predicted_diff:.4f} vs "
          f"{diff:.4f}")
    assert predicted == pytest.approx(width, rel=0.2)
    assert predicted_diff == pytest.approx(diff, rel=0.2)


def test_components_of_a_plain_table():
    # 2 items x 2 models x 2 seeds: cell means and within-cell variance by hand
    z = {("p0", "A"): [0.0, 2.0], ("p0", "B"): [1.0, 1.0], ("p1", "A"): [3.0, 3.0], ("p1", "B"): [0.0, 4.0]}
    rows = pd.DataFrame([dict(model=m, item=i, seed=s, z=v, metric="x", status="ok")
                         for (i, m), vs in z.items() for s, v in enumerate(vs)])
    c = components(rows, "x", "general", centered=False)
    # per item a 2 x 2 models x seeds table: residual of the additive fit, one df per item
    tables = [np.array([z[(i, "A")], z[(i, "B")]]) for i in ("p0", "p1")]
    resid = [t - t.mean(axis=0) - t.mean(axis=1, keepdims=True) + t.mean() for t in tables]
    seed = sum((r ** 2).sum() for r in resid) / 2
    shared = max(0.0, (2 * sum(((t.mean(axis=0) - t.mean()) ** 2).sum() for t in tables) / 2 - seed) / 2)
    assert c.shared_seed == pytest.approx(shared)
    d = np.array([[1.0, 1.0], [3.0, 2.0]])
    resid = d - d.mean(axis=1, keepdims=True) - d.mean(axis=0, keepdims=True) + d.mean()
    ms_int, ms_item = (resid ** 2).sum(), 2 * ((d.mean(axis=1) - d.mean()) ** 2).sum()
    assert c.seed == pytest.approx(seed)
    assert c.interaction == pytest.approx(max(0.0, ms_int - seed / 2))
    assert c.prompt == pytest.approx(max(0.0, (ms_item - ms_int) / 2 - shared / 2))


def test_plan_meets_its_targets_and_more_seeds_stop_helping():
    c = Components("aesthetic", "general", 0.0, 0.05, 0.5, 30, 8, 10, True)
    plan = plan_table([c], target_half_width=0.05, difference=0.2, target_power=0.8, ci=CI, seeds=(1, 4, 64),
                      seconds_per_image=2.0).set_index("seeds")
    assert (plan["half_width"] <= 0.05 + 1e-12).all() and (plan["power"] >= 0.8 - 1e-12).all()
    assert (plan["items"] == plan[["items_for_half_width", "items_for_power"]].max(axis=1)).all()
    n1 = plan.loc[1, "items_for_half_width"]
    assert half_width(c, n1 - 1, 1, CI) > 0.05  # the smallest such n
    assert plan.loc[64, "items"] < plan.loc[4, "items"] < plan.loc[1, "items"]
    # the floor: with infinitely many seeds the interaction still needs this many items
    floor = items_needed(c.interaction * (1 - 1 / 10), 0.05 / 1.959963984540054)
    assert plan.loc[64, "items_for_half_width"] >= floor
    assert plan.loc[4, "images"] == plan.loc[4, "items"] * 4 * 10
    assert plan.loc[4, "gpu_hours"] == pytest.approx(plan.loc[4, "images"] * 2.0 / 3600)
    assert power(c, 10_000, 8, 0.2, CI) == pytest.approx(1.0) and power(c, 2, 1, 0.0, CI) < 0.05


def test_one_seed_per_item_leaves_the_seed_component_unmeasured_and_plans_conservatively():
    rng = np.random.default_rng(5)
    images, _ = image_table(scores(rng, 30, 1), MODELS, METRICS)
    c = components(images, "aesthetic", "general", centered=True)
    assert np.isnan(c.seed) and c.n_seeds == 1 and c.interaction > 0
    # the interaction then holds the one seed's noise: more seeds predict no gain (never an optimistic plan)
    assert half_width(c, 30, 8, CI) == half_width(c, 30, 1, CI) > 0
