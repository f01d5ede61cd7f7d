"""Split-half stability: would the model order come out the same from other prompts?

Each split cuts every stratum's benchmark items (the bootstrap's units: a prompt, a style or a LoRA with all its
seeds, strata (task, pool)) at random into two halves of equal size; a stratum of one item, or the odd item out of an
odd count, sits out of both halves. Each half scores every model (the mean of its z over the half's images, the same
z as the full review: items are whole, so a half is a 0/1 reweighting of the units, as a bootstrap resample is a
reweighting) and ranks them; Kendall's tau-b between the two halves' rankings says how reproducible the order is from
a benchmark of half the size. Repeated over ``n_splits`` random splits: the median and the (1-ci)/2, (1+ci)/2
percentiles of the split taus. That interval is the spread over splits (how much the answer depends on which half
one drew), not a confidence interval of the expected tau.

A half holds half the items, so its tau understates the full benchmark's reproducibility: the full benchmark's own
order is more stable than this. Near 1: the order is reproducible; near 0: the order is noise (the models do not
differ detectably). The combined rank is split the same way: each half's combined score is the mean of the oriented
half scores over the metrics the combined score averages.

This module takes arrays only (``standardize`` passes each metric's per-model, per-unit sums and counts); it draws
from its own generator, so the bootstrap's draw does not change when the number of splits does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ghostreview.analysis.agreement import kendall_tau_b

STABILITY_COLUMNS = ("metric", "tau_median", "tau_lo", "tau_hi", "n_splits", "n_models", "items_per_half")


def half_weights(unit_stratum: np.ndarray, n_splits: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(A, B), each [n_splits, U] of 0/1: in each stratum of n >= 2 units, a random floor(n/2) units in A and as many
    others in B (the odd one out in neither); a stratum of one unit in neither."""
    a = np.zeros((n_splits, len(unit_stratum)))
    b = np.zeros_like(a)
    for s in np.unique(unit_stratum):
        cols = np.flatnonzero(unit_stratum == s)
        half = len(cols) // 2
        if half == 0:
            continue
        order = np.argsort(rng.random((n_splits, len(cols))), axis=1)  # one random permutation per split
        rows = np.arange(n_splits)[:, None]
        a[rows, cols[order[:, :half]]] = 1.0
        b[rows, cols[order[:, half:2 * half]]] = 1.0
    return a, b


def half_scores(w: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[n_splits, M] mean z per model over the units weighted by w [n_splits, U]; sums, counts [M, U]; NaN where a
    model has no image in the half."""
    num, den = w @ sums.T, w @ counts.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def split_taus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n_splits] Kendall tau-b between the rows of oriented half scores a and b [n_splits, M] (NaN: no 2 models)."""
    tau, n = kendall_tau_b(a, b)
    return np.where(n >= 2, tau, np.nan)


def units_per_half(a: np.ndarray, used: np.ndarray) -> int:
    """Units of the first split's half A among the units ``used`` [U] (every split's halves are the same size)."""
    return int(a[0, used].sum()) if len(a) else 0


def summary_row(metric: str, taus: np.ndarray, n_models: int, per_half: int, ci: float) -> dict[str, object]:
    """One STABILITY_COLUMNS row: median and percentile interval of the finite split taus."""
    finite = taus[np.isfinite(taus)]
    if not len(finite):
        med = lo = hi = float("nan")
    else:
        med = float(np.median(finite))
        lo, hi = (float(v) for v in np.percentile(finite, [50 * (1 - ci), 50 * (1 + ci)]))
    return {"metric": metric, "tau_median": med, "tau_lo": lo, "tau_hi": hi, "n_splits": int(len(finite)),
            "n_models": n_models, "items_per_half": per_half}


def split_half_table(names: Sequence[str], oriented: Sequence[bool], sums: Sequence[np.ndarray],
                     counts: Sequence[np.ndarray], unit_stratum: np.ndarray, combined_over: Sequence[str], *,
                     n_splits: int, seed: int | Sequence[int], ci: float, combined_name: str) -> pd.DataFrame:
    """STABILITY_COLUMNS rows: one per metric (``names`` [K]; ``oriented`` [K]: higher is better; ``sums``,
    ``counts``: [M, U] each) and one for ``combined_name`` over the metrics ``combined_over`` (none: no such row).

    All metrics see the same splits (one ``np.random.default_rng(seed)``); ``items_per_half``: units per half, over
    the strata where the metric has images."""
    a, b = half_weights(unit_stratum, n_splits, np.random.default_rng(seed))
    rows, halves, used = [], {}, {}
    for name, higher, s, c in zip(names, oriented, sums, counts):
        sign = 1.0 if higher else -1.0
        ha, hb = sign * half_scores(a, s, c), sign * half_scores(b, s, c)
        halves[name], used[name] = (ha, hb), c.sum(axis=0) > 0
        n_models = int((c.sum(axis=1) > 0).sum())
        rows.append(summary_row(name, split_taus(ha, hb), n_models, units_per_half(a, used[name]), ci))
    over = [m for m in combined_over if m in halves]
    if over:
        ha = np.mean([halves[m][0] for m in over], axis=0)
        hb = np.mean([halves[m][1] for m in over], axis=0)
        n_models = int(np.isfinite(ha).any(axis=0).sum())
        units = np.any([used[m] for m in over], axis=0)
        rows.append(summary_row(combined_name, split_taus(ha, hb), n_models, units_per_half(a, units), ci))
    return pd.DataFrame(rows, columns=list(STABILITY_COLUMNS))
