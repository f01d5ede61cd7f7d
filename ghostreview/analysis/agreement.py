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
AGREEMENT_COLUMNS = ["judge_a", "judge_b", "n_models", "kendall_tau", "tau_lo", "tau_hi", "n_boot", "n_images",
                     "spearman"]
RANK_COLUMNS = ["model", "n_judges", "best_rank", "worst_rank", "best_by", "worst_by"]


def run_pairs(new_run: np.ndarray) -> np.ndarray:
    """[R] pairs of entries within the same run, from [R, M] bools that are True where a sorted row starts a run of
    equal values (an entry k places into its run ties with the k before it)."""
    position = np.broadcast_to(np.arange(new_run.shape[1]), new_run.shape)
    start = np.maximum.accumulate(np.where(new_run, position, 0), axis=1)
    return (position - start).sum(axis=1)


def dense_ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([R, M] int64 ranks 1..M within each row, ties sharing one (dense), [R] tied pairs); NaN ranks after every
    number, each NaN a rank of its own (so NaNs tie with nothing)."""
    order = np.argsort(x, axis=1, kind="stable")
    ordered = np.take_along_axis(x, order, axis=1)
    new_run = np.ones(x.shape, dtype=bool)
    new_run[:, 1:] = ~(ordered[:, 1:] == ordered[:, :-1])  # NaN != NaN: a new rank each
    ranks = np.empty(x.shape, dtype=np.int64)
    np.put_along_axis(ranks, order, np.cumsum(new_run, axis=1), axis=1)
    return ranks, run_pairs(new_run)


def discordant(order_ranks: np.ndarray, active: np.ndarray) -> np.ndarray:
    """[R] count of pairs i < k (positions along each row) of active entries with rank_i > rank_k: the inversions of
    each row of ``order_ranks`` [R, M] (ints 1..M), counted with one Fenwick tree per row, all rows at once (M steps
    of log2(M) vectorized updates, not an M x M comparison)."""
    n_rows, n = order_ranks.shape
    width = n + 2  # slot 0 stays 0 (queries end there), slot n + 1 absorbs updates that run past n
    tree = np.zeros(n_rows * width, dtype=np.int32)
    base = np.arange(n_rows, dtype=np.int64) * width
    steps = int(n).bit_length()
    ranks, on_all = np.ascontiguousarray(order_ranks.T), np.ascontiguousarray(active.T).astype(np.int32)
    seen = np.zeros(n_rows, dtype=np.int64)
    count = np.zeros(n_rows, dtype=np.int64)
    for r, on in zip(ranks, on_all):
        at_most, idx = np.zeros(n_rows, dtype=np.int64), r.copy()
        for _ in range(steps):  # entries so far with rank <= r: r's Fenwick prefix, lowest set bit cleared each step
            at_most += tree[base + idx]
            idx &= idx - 1
        count += on * (seen - at_most)
        idx = r.copy()
        for _ in range(steps):
            tree[base + idx] += on
            idx = np.minimum(idx + (idx & -idx), n + 1)
        seen += on
    return count


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tau-b [R], models [R]) between the rows of x and y [R, M], each over the entries finite in both.

    Knight's (1966, JASA 61:436) way: order each row by (x, y); the pairs that y then puts in the opposite order
    are the discordant ones (pairs tied in x come in y's order, so none of them counts); with n valid entries,
    P = n(n-1)/2 pairs, n1 tied in x, n2 in y, n3 in both: tau_b = (P - n1 - n2 + n3 - 2 D) / sqrt((P - n1)(P - n2)).
    NaN with fewer than 2 valid entries or when either row ties every pair."""
    valid = np.isfinite(x) & np.isfinite(y)
    return tau_from_ranks(dense_ranks(np.where(valid, x, np.nan)), dense_ranks(np.where(valid, y, np.nan)), valid)


def tau_from_ranks(x: tuple[np.ndarray, np.ndarray], y: tuple[np.ndarray, np.ndarray],
                   valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``kendall_tau_b`` from each side's ``dense_ranks`` over the entries ``valid`` [R, M] in both (the others
    ranked last, each on its own)."""
    (rx, n1), (ry, n2) = x, y
    n = valid.sum(axis=1)
    pairs = n * (n - 1) / 2
    joint = rx * (rx.shape[1] + 1) + ry  # unique for the invalid entries, whose ranks are their own and last
    order = np.argsort(joint, axis=1)
    ordered = np.take_along_axis(joint, order, axis=1)
    new_run = np.ones(joint.shape, dtype=bool)
    new_run[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    n3 = run_pairs(new_run)
    d = discordant(np.take_along_axis(ry, order, axis=1), np.take_along_axis(valid, order, axis=1))
    den = (pairs - n1) * (pairs - n2)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = (pairs - n1 - n2 + n3 - 2 * d) / np.sqrt(den)
    return np.where(den > 0, tau, np.nan), n


ROW_BUDGET = 2_000_000  # rows x models per tau_from_ranks call (its Fenwick trees: 8 MB)


def pair_taus(scores: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """(judge pairs a < b, tau [pairs, R], models [pairs, R]): Kendall's tau-b between every two judges' rankings
    in each of R rankings, from oriented scores [J, R, M] (R: the point scores and the resamples; NaN: a model the
    judge does not score). Each judge's rows are ranked once (again only for a pair where it scores a model the other
    does not); the pairs go through ``tau_from_ranks`` a few at a time (``ROW_BUDGET``)."""
    n_judges, n_rankings, n_models = scores.shape
    pairs = [(a, b) for a in range(n_judges) for b in range(a + 1, n_judges)]
    finite = np.isfinite(scores)
    own = [dense_ranks(s) for s in scores]

    def ranks(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:  # a's ranks over the models both rank
        return own[a] if not (finite[a] & ~finite[b]).any() else dense_ranks(np.where(finite[b], scores[a], np.nan))

    step = max(1, ROW_BUDGET // max(n_rankings * n_models, 1))
    tau, n = np.full((len(pairs), n_rankings), np.nan), np.zeros((len(pairs), n_rankings), dtype=np.int64)
    for start in range(0, len(pairs), step):
        chunk = pairs[start:start + step]
        sides = [(ranks(a, b), ranks(b, a)) for a, b in chunk]
        x = (np.concatenate([side[0][0] for side in sides]), np.concatenate([side[0][1] for side in sides]))
        y = (np.concatenate([side[1][0] for side in sides]), np.concatenate([side[1][1] for side in sides]))
        valid = np.concatenate([finite[a] & finite[b] for a, b in chunk])
        t, c = tau_from_ranks(x, y, valid)
        tau[start:start + len(chunk)] = t.reshape(len(chunk), n_rankings)
        n[start:start + len(chunk)] = c.reshape(len(chunk), n_rankings)
    return pairs, tau, n


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho of two equal-length arrays (no NaN): Pearson's r of their average ranks; NaN below 3 values or
    when either is constant."""
    if len(x) < 3:
        return float("nan")
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def image_ids(rows: pd.DataFrame) -> np.ndarray:
    """[n] int64: the same id for rows of the same image (``IMAGE_KEYS``), by integer codes (no string groupby)."""
    ids = np.zeros(len(rows), dtype=np.int64)
    for key in IMAGE_KEYS:
        code, distinct = pd.factorize(rows[key].to_numpy())
        ids = pd.factorize(ids * len(distinct) + code)[0].astype(np.int64)  # compact again: no overflow
    return ids


def image_z(images: pd.DataFrame, judges: Sequence[str],
            higher: Sequence[bool]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{judge: (sorted image ids, oriented z)} over its usable rows (status ok); a repeated row of one image (which
    standardize does not refuse) is averaged."""
    ok = images[(images["status"] == "ok").to_numpy() & images["metric"].isin(list(judges)).to_numpy()]
    ids, metric, z = image_ids(ok), ok["metric"].to_numpy(dtype=object), ok["z"].to_numpy(float)
    out = {}
    for name, up in zip(judges, higher):
        mine = metric == name
        uniq, inverse, counts = np.unique(ids[mine], return_inverse=True, return_counts=True)
        mean = np.bincount(inverse, weights=z[mine], minlength=len(uniq)) / np.maximum(counts, 1)
        out[name] = (uniq, mean if up else -mean)
    return out


def shared_rho(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[int, float]:
    """(images both judges score, Spearman's rho over them) from two ``image_z`` entries."""
    _, ia, ib = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
    return len(ia), spearman(a[1][ia], b[1][ib])


def agreement_table(judges: Sequence[str], higher: Sequence[bool], point: np.ndarray, boot: np.ndarray,
                    images: pd.DataFrame, ci: float) -> pd.DataFrame:
    """One row per pair of judges (a before b in ``judges`` order): ``AGREEMENT_COLUMNS``.

    point [J, M] and boot [J, B, M]: each judge's oriented scores, point and per resample (the same resamples for
    every judge). images: standardize's image table (status, z)."""
    pairs, tau, n_models = pair_taus(np.concatenate([point[:, None], boot], axis=1))
    per_image = image_z(images, judges, higher)
    rows = []
    for (a, b), t, n in zip(pairs, tau, n_models):
        resampled = t[1:][np.isfinite(t[1:])]
        lo, hi = (np.percentile(resampled, [50 * (1 - ci), 50 * (1 + ci)]) if len(resampled)
                  else (np.nan, np.nan))
        n_images, rho = shared_rho(per_image[judges[a]], per_image[judges[b]])
        rows.append({"judge_a": judges[a], "judge_b": judges[b], "n_models": int(n[0]), "kendall_tau": t[0],
                     "tau_lo": lo, "tau_hi": hi, "n_boot": len(resampled), "n_images": n_images, "spearman": rho})
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
