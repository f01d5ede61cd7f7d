"""From votes to a human ranking, and every judge measured against it.

Bradley-Terry as LMArena defines it (the ``arena-rank`` package, ``arena_rank/models/bradley_terry.py``): model k
has a rating r_k; a vote between a and b (a shown as ``model_a``) has outcome y = 1 (a won), 0 (b won) or 1/2 (tie,
and both-bad, as LMArena's ``default_outcome_map`` counts it), and the ratings minimize the mean logistic loss
-mean(y d - log(1 + e^d)), d = r_a - r_b, from r = 0 (so sum r = 0: the loss only sees differences). Ratings are
shown as LMArena shows them: 1000 + r * 400 / ln 10 (a 400-point gap = 10:1 odds). We solve it with Newton's method
(the Hessian is M x M) where arena-rank uses L-BFGS; our one addition is a ridge of ``RIDGE`` x |r|^2 / 2, which
moves the fixture's ratings by under 0.01 points (tests/test_arena_ratings.py compares them with arena-rank's
output) and keeps a model that won (or lost) every vote finite instead of running off to infinity.

Intervals: bootstrap over voters (a cluster bootstrap: a voter's votes share their taste, so they are not
independent evidence): each resample draws as many voters as there are, with replacement, each bringing all their
votes, and refits from the point estimate. The (1-ci)/2 and (1+ci)/2 percentiles of the resampled ratings give the
rating interval; of the resampled ranks (1 = best, competition ranking), the rank interval.

Judges: for each decided vote (a winner, not a tie or both-bad) whose two images a judge scores, the judge agrees
when its oriented per-image value (losses sign-flipped) is higher for the winner's image (equal values: half).
Pairwise accuracy = the mean, with its interval over the same voter resamples. Kendall's tau-b between the judge's
model ranking (standardize's oriented scores) and the human ratings, with an interval from the human ratings'
resamples (the judge's ranking held fixed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ghostreview.analysis.agreement import kendall_tau_b

SCALE = 400 / math.log(10)  # LMArena's display scale: rating = INIT + SCALE * r
INIT = 1000.0
RIDGE = 1e-6
OUTCOME = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "both_bad": 0.5}
RATING_COLUMNS = ["model", "rating", "rating_lo", "rating_hi", "rank", "rank_lo", "rank_hi", "votes", "voters"]
PAIR_COLUMNS = ["model_a", "model_b", "votes", "a_wins", "b_wins", "ties", "both_bad"]
JUDGE_COLUMNS = ["judge", "n_votes", "accuracy", "accuracy_lo", "accuracy_hi", "n_models", "kendall_tau", "tau_lo",
                 "tau_hi"]


@dataclass(frozen=True)
class Battles:
    """Votes as arrays: ``a``, ``b`` [N] model indices, ``y`` [N] outcomes of a, ``voter`` [N] voter indices."""

    models: tuple[str, ...]
    a: np.ndarray
    b: np.ndarray
    y: np.ndarray
    voter: np.ndarray
    n_voters: int


def battles(votes: pd.DataFrame, models: Sequence[str]) -> Battles:
    """The votes between two of ``models`` (others are left out) as :class:`Battles`."""
    at = {m: i for i, m in enumerate(models)}
    mine = votes[votes["model_a"].isin(at) & votes["model_b"].isin(at)]
    voter, voters = pd.factorize(mine["voter"].to_numpy(dtype=object))
    a, b = (mine[c].map(at).to_numpy(np.int64) for c in ("model_a", "model_b"))
    return Battles(tuple(models), a, b, mine["winner"].map(OUTCOME).to_numpy(float), voter.astype(np.int64),
                   len(voters))


def loss(r: np.ndarray, a: np.ndarray, b: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """LMArena's mean logistic loss at unscaled ratings ``r`` plus the ridge."""
    d = r[a] - r[b]
    return float(-np.sum(w * (y * d - np.logaddexp(0, d))) / w.sum() + RIDGE * r @ r / 2)


def newton_step(r: np.ndarray, a: np.ndarray, b: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The Newton direction of :func:`loss` at ``r`` (its Hessian is the vote graph's weighted Laplacian plus the
    ridge: positive definite)."""
    n = len(r)
    p = 1 / (1 + np.exp(-(r[a] - r[b])))
    g_vote, h_vote = w * (p - y) / w.sum(), w * p * (1 - p) / w.sum()
    grad = np.bincount(a, g_vote, n) - np.bincount(b, g_vote, n) + RIDGE * r
    hess = np.zeros((n, n))
    np.add.at(hess, (a, a), h_vote)
    np.add.at(hess, (b, b), h_vote)
    np.add.at(hess, (a, b), -h_vote)
    np.add.at(hess, (b, a), -h_vote)
    return -np.linalg.solve(hess + RIDGE * np.eye(n), grad)


def fit(a: np.ndarray, b: np.ndarray, y: np.ndarray, w: np.ndarray, n: int, start: np.ndarray | None = None,
        tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """[n] unscaled Bradley-Terry ratings of votes a vs b with outcomes y and weights w (damped Newton from
    ``start``, zeros by default, until a step moves no rating by more than ``tol``)."""
    r = np.zeros(n) if start is None else start.copy()
    if w.sum() == 0:
        return r
    now = loss(r, a, b, y, w)
    for _ in range(max_iter):
        step, t = newton_step(r, a, b, y, w), 1.0
        while t > 1e-8 and loss(r + t * step, a, b, y, w) > now + 1e-15:
            t /= 2  # backtrack: far from the optimum a full Newton step may overshoot
        r, now = r + t * step, loss(r + t * step, a, b, y, w)
        if np.max(np.abs(t * step)) < tol:
            break
    return r


def grouped(bt: Battles, voter_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, y, w) with votes of the same (a, b, y) summed into one weighted row (w: their voters' weights), as
    arena-rank aggregates them: the fit's cost no longer grows with the votes."""
    key = (bt.a * len(bt.models) + bt.b) * 3 + np.rint(bt.y * 2).astype(np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    w = np.bincount(inverse, voter_weights[bt.voter], len(uniq))
    ab, y2 = np.divmod(uniq, 3)
    a, b = np.divmod(ab, len(bt.models))
    return a, b, y2 / 2, w


def voter_resamples(n_voters: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_voters] how often each voter is drawn in each resample (n_voters draws with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_voters, np.full(n_voters, 1 / n_voters), size=n_boot).astype(float) \
        if n_voters else np.zeros((n_boot, 0))


def competition_ranks(r: np.ndarray) -> np.ndarray:
    """[..., M] ranks, 1 = highest rating, ties sharing the best rank (1, 1, 3)."""
    return (r[..., None, :] > r[..., :, None]).sum(axis=-1) + 1


@dataclass(frozen=True)
class Ratings:
    """Point ratings [M] and resampled ratings [B, M] (unscaled), with the voter weights of each resample."""

    battles: Battles
    point: np.ndarray
    boot: np.ndarray
    weights: np.ndarray  # [B, n_voters]


def rate(bt: Battles, n_boot: int, seed: int) -> Ratings:
    """Fit the point ratings and every voter resample."""
    n = len(bt.models)
    point = fit(*grouped(bt, np.ones(bt.n_voters)), n)
    weights = voter_resamples(bt.n_voters, n_boot, seed)
    boot = np.stack([fit(*grouped(bt, w), n, start=point) for w in weights]) if n_boot else np.zeros((0, n))
    return Ratings(bt, point, boot, weights)


def percentiles(x: np.ndarray, ci: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.percentile(x, [50 * (1 - ci), 50 * (1 + ci)], axis=axis) if x.shape[axis] else (np.nan, np.nan)
    return np.asarray(lo), np.asarray(hi)


def rating_table(r: Ratings, ci: float) -> pd.DataFrame:
    """``RATING_COLUMNS``, best first: rating and interval (LMArena's scale), rank and rank interval, votes and
    voters each model took part in."""
    bt, scaled = r.battles, INIT + SCALE * r.point
    lo, hi = percentiles(INIT + SCALE * r.boot, ci)
    rlo, rhi = percentiles(competition_ranks(r.boot), ci)
    votes = np.bincount(bt.a, minlength=len(bt.models)) + np.bincount(bt.b, minlength=len(bt.models))
    voters = [len(np.unique(bt.voter[(bt.a == k) | (bt.b == k)])) for k in range(len(bt.models))]
    table = pd.DataFrame({"model": bt.models, "rating": scaled, "rating_lo": lo, "rating_hi": hi,
                          "rank": competition_ranks(r.point), "rank_lo": np.floor(rlo), "rank_hi": np.ceil(rhi),
                          "votes": votes, "voters": voters}, columns=RATING_COLUMNS)
    return table.sort_values(["rank", "model"], kind="stable").reset_index(drop=True)


def pair_table(votes: pd.DataFrame) -> pd.DataFrame:
    """``PAIR_COLUMNS``: each model pair's votes and how they went."""
    if votes.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    counts = pd.crosstab([votes["model_a"], votes["model_b"]], votes["winner"])
    counts = counts.reindex(columns=list(OUTCOME), fill_value=0)
    out = pd.DataFrame({"votes": counts.sum(axis=1), "a_wins": counts["model_a"], "b_wins": counts["model_b"],
                        "ties": counts["tie"], "both_bad": counts["both_bad"]}).reset_index()
    return out[PAIR_COLUMNS].astype({c: int for c in PAIR_COLUMNS[2:]})


def judge_agreement(judged: np.ndarray, voter: np.ndarray, weights: np.ndarray, ci: float) -> tuple[float, ...]:
    """(accuracy, lo, hi) from per-vote agreement [N] in {0, 1/2, 1} (NaN: the judge cannot call it), voter indices
    [N] and the resamples' voter weights [B, V]."""
    ok = np.isfinite(judged)
    if not ok.any():
        return math.nan, math.nan, math.nan
    w = weights[:, voter[ok]]
    with np.errstate(invalid="ignore"):
        boot = (w * judged[ok]).sum(axis=1) / w.sum(axis=1)
    lo, hi = percentiles(boot[np.isfinite(boot)], ci)
    return float(judged[ok].mean()), float(lo), float(hi)


def judge_calls(values: Mapping[str, float], winner_images: Sequence[str], loser_images: Sequence[str]) -> np.ndarray:
    """[N] 1 where the judge's oriented value of the winner's image is higher, 0 where lower, 1/2 where equal, NaN
    where it scores either image not (or not finitely)."""
    w = np.array([values.get(h, math.nan) for h in winner_images], dtype=float)
    lose = np.array([values.get(h, math.nan) for h in loser_images], dtype=float)
    out = np.where(w > lose, 1.0, np.where(w < lose, 0.0, 0.5))
    return np.where(np.isfinite(w) & np.isfinite(lose), out, math.nan)


def tau_with_humans(judge_scores: np.ndarray, r: Ratings, ci: float) -> tuple[int, float, float, float]:
    """(models both rank, tau-b, lo, hi) between a judge's oriented model scores [M] (NaN: unranked) and the human
    ratings, its interval over the ratings' resamples."""
    rows = np.concatenate([r.point[None], r.boot])
    tau, n = kendall_tau_b(np.broadcast_to(judge_scores, rows.shape), rows)
    lo, hi = percentiles(tau[1:][np.isfinite(tau[1:])], ci)
    return int(n[0]), float(tau[0]), float(lo), float(hi)


def judge_table(votes: pd.DataFrame, r: Ratings, per_image: Mapping[str, Mapping[str, float]],
                model_scores: Mapping[str, Mapping[str, float]], ci: float) -> pd.DataFrame:
    """``JUDGE_COLUMNS``, one row per judge of ``per_image`` ({judge: {image hash: oriented value}});
    ``model_scores``: {judge: {model: oriented score}} (standardize's). ``votes``: the rated votes (those of
    ``r.battles``, same order) with resolved ``image_a``/``image_b`` ("" where the image is not this review's)."""
    decided = votes["winner"].isin(["model_a", "model_b"]).to_numpy()
    a_won = (votes["winner"] == "model_a").to_numpy()
    win = np.where(a_won, votes["image_a"], votes["image_b"])[decided]
    lose = np.where(a_won, votes["image_b"], votes["image_a"])[decided]
    rows = []
    for judge, values in per_image.items():
        acc = judge_agreement(judge_calls(values, win, lose), r.battles.voter[decided], r.weights, ci)
        own = model_scores.get(judge, {})
        n_models, tau, tlo, thi = tau_with_humans(np.array([own.get(m, math.nan) for m in r.battles.models]), r, ci)
        rows.append([judge, int(np.isfinite(judge_calls(values, win, lose)).sum()), *acc, n_models, tau, tlo, thi])
    return pd.DataFrame(rows, columns=JUDGE_COLUMNS)
