"""How far the judges agree: Kendall's tau between their model rankings, Spearman's rho between their per-image
z-scores, and each model's best and worst rank over the judges.

Plain arrays and tables in, tables out; ``standardize.standardize`` calls these with its estimates, so a tau's
interval comes from the very resamples the scores' intervals come from (one draw of benchmark items for everything).

- Rankings. Judge j's ranking of the models is the order of its oriented scores (larger = better). Kendall's tau-b
  (Kendall 1945, "The treatment of ties in ranking problems", Biometrika 33:239) over the models both judges score:
  tau_b = sum_{i<k} s_x s_y / sqrt(sum s_x^2 * sum s_y^2), s = sign of a pair's difference, the sums over the pairs
  both judges score; ties (s = 0) count in neither denominator, as in ``scipy.stats.kendalltau``'s default. NaN with
  fewer than 2 such models, or when one judge ties every pair.
- Intervals: the (1-ci)/2 and (1+ci)/2 percentiles of tau over the resamples where it is defined (``n_boot``).
- Images: Spearman's rho (Pearson's r of average ranks) between two judges' oriented z-scores over the images both
  score with a usable z. z, not raw values: the ranking is built from z within each benchmark item, so this asks
  whether the judges prefer the same images of one prompt, and a prompt that every judge scores low (a shared item
  level) cannot make two judges look alike. Judges of different tasks (a style loss, a prompt judge) share no image:
  n_images 0, rho NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

IMAGE_KEYS = ["model", "task", "item", "seed", "image_hash"]  # one image of one model
PAIR_BUDGET = 4_000_000  # model pairs x resamples held at once per judge (float64: 32 MB)
AGREEMENT_COLUMNS = ["judge_a", "judge_b", "n_models", "kendall_tau", "tau_lo", "tau_hi", "n_boot", "n_images",
                     "spearman"]
RANK_COLUMNS = ["model", "n_judges", "best_rank", "worst_rank", "best_by", "worst_by"]


def pair_signs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sign, valid), each [..., P] float: over the P = M(M-1)/2 model pairs i < k of ``x`` [..., M], the sign of
    x_i - x_k (0 where tied or either is NaN) and 1.0 where both are finite."""
    i, k = np.triu_indices(x.shape[-1], 1)
    diff = x[..., i] - x[..., k]
    valid = np.isfinite(diff)
    return np.where(valid, np.sign(diff), 0.0), valid.astype(float)


def judge_taus(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tau [J, J, R], n_models [J, J, R]): Kendall's tau-b between every two judges' rankings in each of R
    rankings, from oriented scores [J, R, M] (R: the point scores and the resamples; NaN: a model the judge does not
    score). The diagonal is 1 where a judge ranks 2 models apart. Pairs of models are signed a chunk of rankings at a
    time (``PAIR_BUDGET``), and each chunk's sums for all judge pairs are two batched matrix products."""
    n_judges, n_rankings, n_models = scores.shape
    pairs = n_models * (n_models - 1) // 2
    tau = np.full((n_judges, n_judges, n_rankings), np.nan)
    both = np.zeros((n_judges, n_judges, n_rankings))
    step = max(1, PAIR_BUDGET // max(pairs, 1))
    for start in range(0, n_rankings, step):
        sign, valid = pair_signs(scores[:, start:start + step].transpose(1, 0, 2))  # [r, J, P]
        concordant = sign @ sign.transpose(0, 2, 1)  # [r, J, J]: sum s_x s_y over pairs both score
        untied = (sign * sign) @ valid.transpose(0, 2, 1)  # [r, J, J]: pairs x does not tie, among those y scores
        with np.errstate(invalid="ignore", divide="ignore"):
            t = concordant / np.sqrt(untied * untied.transpose(0, 2, 1))
        tau[:, :, start:start + step] = np.where(untied * untied.transpose(0, 2, 1) > 0, t, np.nan).transpose(1, 2, 0)
        both[:, :, start:start + step] = (valid @ valid.transpose(0, 2, 1)).transpose(1, 2, 0)
    # models scored by both: n(n-1)/2 = pairs both score, solved for n (exact on integers)
    return tau, np.rint((1 + np.sqrt(1 + 8 * both)) / 2) * (both > 0)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho of two equal-length arrays (no NaN): Pearson's r of their average ranks; NaN below 3 values or
    when either is constant."""
    if len(x) < 3:
        return float("nan")
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def image_z(images: pd.DataFrame, judges: Sequence[str], higher: Sequence[bool]) -> pd.DataFrame:
    """Oriented z of usable rows (status ok), one row per image (``IMAGE_KEYS``), one column per judge (NaN: the
    judge has no usable z for that image)."""
    ok = images[(images["status"] == "ok").to_numpy() & images["metric"].isin(list(judges)).to_numpy()]
    sign = ok["metric"].map(dict(zip(judges, [1.0 if h else -1.0 for h in higher])))
    wide = ok.assign(z=ok["z"].to_numpy(float) * sign.to_numpy(float)).set_index(IMAGE_KEYS + ["metric"])["z"]
    return wide.unstack("metric").reindex(columns=list(judges))


def agreement_table(judges: Sequence[str], higher: Sequence[bool], point: np.ndarray, boot: np.ndarray,
                    images: pd.DataFrame, ci: float) -> pd.DataFrame:
    """One row per pair of judges (a before b in ``judges`` order): ``AGREEMENT_COLUMNS``.

    point [J, M] and boot [J, B, M]: each judge's oriented scores, point and per resample (the same resamples for
    every judge). images: standardize's image table (status, z)."""
    tau, n_models = judge_taus(np.concatenate([point[:, None], boot], axis=1))
    wide = image_z(images, judges, higher)
    rows = []
    for a, b in zip(*(ix.tolist() for ix in np.triu_indices(len(judges), 1))):
        resampled = tau[a, b, 1:][np.isfinite(tau[a, b, 1:])]
        lo, hi = (np.percentile(resampled, [50 * (1 - ci), 50 * (1 + ci)]) if len(resampled)
                  else (np.nan, np.nan))
        shared = wide[[judges[a], judges[b]]].dropna().to_numpy()
        rows.append({"judge_a": judges[a], "judge_b": judges[b], "n_models": int(n_models[a, b, 0]),
                     "kendall_tau": tau[a, b, 0], "tau_lo": lo, "tau_hi": hi, "n_boot": len(resampled),
                     "n_images": len(shared), "spearman": spearman(shared[:, 0], shared[:, 1])})
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS).astype({"n_models": int, "n_boot": int, "n_images": int})


def rank_spread(ranks: pd.DataFrame, judges: Sequence[str]) -> pd.DataFrame:
    """Each model's best and worst rank over the judges that rank it: ``RANK_COLUMNS`` (best_by / worst_by: those
    judges, ";"-joined in ``judges`` order). ranks: standardize's score rows (model, metric, rank), models in their
    order; a model no judge ranks has n_judges 0 and NaN ranks."""
    mine = ranks[ranks["metric"].isin(list(judges))]
    rows = []
    for model, own in mine.groupby("model", sort=False):
        by = dict(zip(own["metric"], own["rank"]))
        ranked = {j: by[j] for j in judges if j in by and np.isfinite(by[j])}
        best, worst = (min(ranked.values()), max(ranked.values())) if ranked else (np.nan, np.nan)
        rows.append({"model": model, "n_judges": len(ranked), "best_rank": best, "worst_rank": worst,
                     "best_by": ";".join(j for j, r in ranked.items() if r == best),
                     "worst_by": ";".join(j for j, r in ranked.items() if r == worst)})
    return pd.DataFrame(rows, columns=RANK_COLUMNS).astype({"n_judges": int})
