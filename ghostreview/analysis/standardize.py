"""Standardize per-image scores across models, rank the models, and bootstrap the uncertainty.

Conventions (each one tested in tests/test_standardize.py):

- Rows. Only metrics present in ``metrics`` (the registry) are standardized; other rows (per-layer StyleLoss such as
  ``styleloss.relu1_1``) are kept in the image table with status ``detail``. A metric is standardized over the images of
  the task its ``grouped_by`` names (``prompt`` -> task ``general``, ``style`` -> ``style``, ``lora`` -> ``lora``);
  its rows from other tasks get status ``other_task``.
- Exclusion. A row whose ``flags`` contain one of ``EXCLUDING_FLAGS`` or whose value is not finite gets status
  ``flagged``: no z, counted per model and metric in ``n_excluded``.
- Groups. z = (x - mean) / std within the group (metric, task, item, pool) over all usable images of all models, with
  the POPULATION std (ddof=0, like sklearn's StandardScaler): inside a group the z then have mean 0 and mean square 1
  exactly. ``pool`` is the model family for LoRA-grouped metrics (an SD1 LoRA is compared among SD1 models only) and
  ``"all"`` otherwise. A group with fewer than 2 usable values, zero spread (max == min, tested exactly so that a
  constant group never yields 1e-17 / 1e-17) or the images of one model only is listed in ``degenerate`` and its
  rows get status ``degenerate``.
- Scores. A model's score on a metric = mean of its z, in the metric's natural sign (lower is better for losses, as
  the GhostReview article shows). Oriented score = score for higher-is-better metrics, -score otherwise; ranks (1 =
  best) order oriented scores. ``combined`` = mean of a model's oriented scores over ``meta["combined_over"]``: the
  registered metrics that every ranked model has a score on (the NoTM variant is never part of it), higher is better.
  A combined score over different metric sets would not be comparable (in the demo the lone SDXL model has no LoRA
  score, its one-model pool being degenerate, and ranked first on 3 metrics against 4 for the others), so a metric
  some model lacks is left out of everyone's combined score and keeps its own column. The LoRA metric is one metric
  whatever the family pools: a model has it when its pool gives it a score. A model with no score on any metric (every
  image flagged) is unranked and does not count. With no metric every model has, ``combined`` is NaN for all (no
  combined rank) and ``combined_over`` is empty. ``<lora metric>_notm`` = the LoRA metric's
  score without, for each model, the LoRA items whose ``made_with`` lists that model (same z as the full data).
- Bootstrap. The resampled unit is a benchmark item (a prompt, a style, a LoRA) with all its seeds: units are (task,
  pool, item), strata (task, pool). A model that does better on some prompts than others does so on every seed of
  them, so the seeds of one prompt are not independent evidence; resampling (item, seed) units as if they were made
  a 95% interval of a model difference cover 76-81% of the time in simulations with a model-by-prompt interaction
  (issue 11; tests/test_interval_coverage.py, where resampling items gives 94%). An interval is therefore about the
  population of items of this kind: it covers the score a model would get over infinitely many prompts (styles,
  LoRAs) like the benchmark's, each drawn with the benchmark's seeds. Each resample draws, within each stratum of n
  items, n - 1 items with replacement, each weighing n / (n - 1) (Rao & Wu's rescaled bootstrap, ``unit_weights``:
  n plain draws would be (n - 1) / n too narrow in variance); a stratum of one item cannot vary and keeps weight 1.
  The same draw serves every model and every metric (paired design), so ``P(A beats B)`` and the combined rank see
  correlated noise cancel. Items are drawn whole, so every z group (metric, task, item, pool) stays intact and the z
  computed once on the full data are exactly the z of each resample: a resample is a pure reweighting, score_b =
  (w_b . S) / (w_b . C), one matrix product for all resamples and models. Intervals are percentile intervals; rank
  intervals are the (1-ci)/2 and (1+ci)/2 percentiles of the resampled ranks, rounded outward to integers. With few
  items a percentile interval still falls short of its level (normal theory: about 94% at 30 prompts, 93% at 16
  LoRAs, 91% at 9 styles).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from ghostreview.scoring.table import VALUE_COLUMNS  # what standardize reads of a score row (not its provenance)

EXCLUDING_FLAGS = frozenset({"nan", "black", "lora_unsupported", "lora_incompatible", "lora_partial", "error"})
MODEL_COLUMNS = ("model", "family")
GROUPING_TASK = {"prompt": "general", "style": "style", "lora": "lora"}
ALL_POOL = "all"
COMBINED = "combined"
STD_DDOF = 0


class MetricLike(Protocol):
    """What standardize reads from ``ghostreview.scoring.metric.MetricInfo`` (the registry's records).

    Read-only properties, so a frozen dataclass such as ``MetricInfo`` satisfies it.
    """

    @property
    def higher_is_better(self) -> bool: ...

    @property
    def grouped_by(self) -> str: ...


@dataclass(frozen=True)
class Standardized:
    """Everything standardize computes; ``write``/``read`` round-trip it through CSV + JSON files in one directory.

    images: one row per score row: VALUE_COLUMNS + family, pool, status (ok|flagged|degenerate|other_task|detail), z.
    scores: one row per model x scored metric: model, metric, higher_is_better, score, lo, hi, rank, rank_lo,
        rank_hi, n_images, n_excluded, n_degenerate. Metrics: the registered ones, ``<lora>_notm``, ``combined``.
    pairwise: metric, model_a, model_b, p_a_beats_b (share of resamples where A's oriented score > B's), n_boot.
    degenerate: metric, task, item, pool, n_values, reason.
    raw: one row per registered metric scored x model: model, metric, n_images, mean, std (ddof=0) of the raw values
        (``usable_raw``); good_rate (share >= threshold) and threshold for the raw metric (aesthetic) only, else NaN.
    meta: n_boot, seed, ci, std_ddof, excluding_flags, directions {metric: higher_is_better}, combined_over (the
        registered metrics the combined score averages: those every ranked model has), metric_tasks, n_units
        (the resampled (task, pool, item) units), ...
    """

    images: pd.DataFrame
    scores: pd.DataFrame
    pairwise: pd.DataFrame
    degenerate: pd.DataFrame
    raw: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> None:
        """Write ``<table>.csv`` for each table and ``meta.json`` into ``out_dir`` (created if missing)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in TABLES:
            getattr(self, name).to_csv(out / f"{name}.csv", index=False)
        (out / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, in_dir: str | Path) -> Standardized:
        """Read what ``write`` wrote; string columns stay strings (an item named "007" is not the number 7)."""
        src = Path(in_dir)
        missing = [f"{n}.csv" for n in TABLES if not (src / f"{n}.csv").is_file()]
        if missing or not (src / "meta.json").is_file():
            raise FileNotFoundError(f"{src}: missing {missing or ['meta.json']}; run the standardize stage first")
        tables = {n: read_table(src / f"{n}.csv") for n in TABLES}
        return cls(**tables, meta=json.loads((src / "meta.json").read_text()))


TABLES = ("images", "scores", "pairwise", "degenerate", "raw")
STRING_COLUMNS = ("model", "model_a", "model_b", "task", "item", "image_hash", "metric", "flags", "family", "pool",
                  "status", "reason", "metric_version", "weights_sha256")


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV written by ``Standardized.write``: string columns verbatim (empty = ""), numbers with NaN."""
    header = pd.read_csv(path, nrows=0).columns
    strings = [c for c in header if c in STRING_COLUMNS]
    numbers = {c: [""] for c in header if c not in STRING_COLUMNS}
    return pd.read_csv(path, dtype={c: str for c in strings}, keep_default_na=False, na_values=numbers)


# ---------------------------------------------------------------------------------------------------------------
# Per-image table and z-scores


def check_columns(df: pd.DataFrame, required: Sequence[str], what: str) -> None:
    """Fail with the missing column names of ``what`` (e.g. "score table")."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it has {list(df.columns)}")


def parse_flags(cell: object) -> frozenset[str]:
    """``"black;prompt_truncated"`` -> {"black", "prompt_truncated"}; empty/NaN -> empty set."""
    if not isinstance(cell, str):
        return frozenset()
    return frozenset(f.strip() for f in cell.split(";") if f.strip())


def excluded_mask(flags: pd.Series, values: pd.Series) -> np.ndarray:
    """Boolean array [n]: True where a row carries an excluding flag or a non-finite value."""
    flagged = np.array([bool(parse_flags(c) & EXCLUDING_FLAGS) for c in flags], dtype=bool)
    finite = np.isfinite(pd.to_numeric(values, errors="coerce").to_numpy(dtype=float))
    return flagged | ~finite


def metric_task(name: str, info: MetricLike) -> str:
    """The manifest task whose images metric ``name`` is standardized over, from its ``grouped_by``."""
    if info.grouped_by not in GROUPING_TASK:
        raise ValueError(f"metric {name!r}: grouped_by={info.grouped_by!r}, expected one of {sorted(GROUPING_TASK)}")
    return GROUPING_TASK[info.grouped_by]


def attach_family(scores: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``scores`` with a ``family`` column from ``models``; every scored model must be listed there."""
    check_columns(scores, VALUE_COLUMNS, "score table")
    check_columns(models, MODEL_COLUMNS, "models table")
    family = dict(zip(models["model"].astype(str), models["family"].astype(str)))
    unknown = sorted(set(scores["model"].astype(str)) - set(family))
    if unknown:
        raise ValueError(f"score rows for models {unknown} that the models table lacks (it has {sorted(family)})")
    silent = sorted(set(family) - set(scores["model"].astype(str)))
    if silent:
        raise ValueError(f"models {silent} are in the models table but have no score rows: score them or drop them")
    blank = [c for c in ("model", "task", "item", "seed", "metric") if scores[c].isna().any()]
    if blank:
        raise ValueError(f"score table has empty cells in key columns {blank}; every row needs them")
    out = scores.loc[:, list(VALUE_COLUMNS)].copy()
    out["model"] = out["model"].astype(str)
    out["item"] = out["item"].astype(str)
    out["flags"] = out["flags"].fillna("").astype(str)
    out["value"] = pd.to_numeric(out["value"], errors="coerce").astype(float)
    out["family"] = out["model"].map(family)
    return out


def row_status(rows: pd.DataFrame, metrics: Mapping[str, MetricLike]) -> tuple[np.ndarray, np.ndarray]:
    """(status [n] of detail|other_task|flagged|ok, pool [n]) before degenerate groups are known."""
    tasks = {m: metric_task(m, info) for m, info in metrics.items()}
    registered = rows["metric"].isin(list(tasks)).to_numpy()
    own_task = (rows["task"] == rows["metric"].map(tasks)).to_numpy()
    flagged = excluded_mask(rows["flags"], rows["value"])
    status = np.select([~registered, ~own_task, flagged], ["detail", "other_task", "flagged"], "ok")
    lora = rows["metric"].isin([m for m, info in metrics.items() if info.grouped_by == "lora"]).to_numpy()
    pool = np.where(lora, rows["family"].to_numpy(dtype=object), ALL_POOL)
    return status.astype(object), pool


GROUP_KEYS = ["metric", "task", "item", "pool"]


def zscore_groups(ok: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """z of usable rows within GROUP_KEYS (population std) and the table of degenerate groups.

    A group is degenerate with fewer than 2 usable values, zero spread, or images of one model only: a z-score
    compares models, and one model's z within its own images averages to 0 up to rounding (it was ranked on
    1e-15 noise in the rehearsal, where each family's LoRA pool held one model with several seeds).

    ok: rows with status ok. Returns (z indexed like ``ok``, NaN in degenerate groups; degenerate table).
    """
    grouped = ok.groupby(GROUP_KEYS, sort=True)
    g = grouped["value"]
    mean, std = g.transform("mean"), g.transform("std", ddof=STD_DDOF)
    n, spread = g.transform("size"), g.transform("max") - g.transform("min")
    n_models = grouped["model"].transform("nunique")
    bad = (n < 2) | (spread == 0) | (n_models < 2)
    z = (ok["value"] - mean) / std.where(~bad)  # NaN denominators: degenerate groups are never divided
    stats = g.agg(n_values="size", low="min", high="max").reset_index()
    stats["n_models"] = grouped["model"].nunique().to_numpy()
    stats = stats[(stats["n_values"] < 2) | (stats["high"] == stats["low"]) | (stats["n_models"] < 2)].copy()
    stats["reason"] = [degenerate_reason(n, m, v)
                       for n, m, v in zip(stats["n_values"], stats["n_models"], stats["low"])]
    return z, stats.drop(columns=["low", "high", "n_models"]).reset_index(drop=True)


def degenerate_reason(n_values: int, n_models: int, low: float) -> str:
    if n_values < 2:
        return "fewer than 2 usable values"
    if n_models < 2:
        return "one model only: nothing to compare with"
    return f"zero spread: every value equals {low:.6g}"


def image_table(scores: pd.DataFrame, models: pd.DataFrame,
                metrics: Mapping[str, MetricLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-row status and z (see module docstring) and the degenerate groups table."""
    rows = attach_family(scores, models)
    status, pool = row_status(rows, metrics)
    rows["pool"], rows["status"], rows["z"] = pool, status, np.nan
    ok = rows["status"] == "ok"
    z, degenerate = zscore_groups(rows.loc[ok])
    rows.loc[ok, "z"] = z
    rows.loc[ok & rows["z"].isna(), "status"] = "degenerate"
    return rows.reset_index(drop=True), degenerate


# ---------------------------------------------------------------------------------------------------------------
# Scores as matrix products over benchmark units


@dataclass(frozen=True)
class Design:
    """Index of the usable rows: model code and unit code per row, unit strata, model names."""

    models: list[str]
    row_model: np.ndarray  # [n_ok] int
    row_unit: np.ndarray  # [n_ok] int: the row's (task, pool, item)
    unit_stratum: np.ndarray  # [U] int


def make_design(ok: pd.DataFrame, models: Sequence[str]) -> Design:
    """Units = distinct (task, pool, item) of the usable rows, each with its seeds, sorted; strata = (task, pool)."""
    unit = ok.groupby(["task", "pool", "item"], sort=True).ngroup().to_numpy()
    first = pd.DataFrame({"unit": unit, "task": ok["task"].to_numpy(), "pool": ok["pool"].to_numpy()})
    first = first.drop_duplicates("unit").sort_values("unit")
    stratum = first.groupby(["task", "pool"], sort=True).ngroup().to_numpy()
    code = {m: i for i, m in enumerate(models)}
    return Design(list(models), ok["model"].map(code).to_numpy(int), unit, stratum)


def sum_matrices(design: Design, z: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, C), each [n_models, U]: sum and count of the kept rows' z per model and unit."""
    shape = (len(design.models), len(design.unit_stratum))
    s, c = np.zeros(shape), np.zeros(shape)
    np.add.at(s, (design.row_model[keep], design.row_unit[keep]), z[keep])
    np.add.at(c, (design.row_model[keep], design.row_unit[keep]), 1.0)
    return s, c


def unit_weights(unit_stratum: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, U] weights: in each stratum of n >= 2 units, n - 1 draws with replacement, each weighing n / (n - 1).

    This is Rao & Wu's (1988, JASA 83:231) rescaled bootstrap with m = n - 1 draws: a stratum keeps its total weight n
    and a mean's resampled variance is the ddof=1 variance of its unit means / n, where drawing n units gives only
    (n - 1) / n of it (intervals 1.7% too narrow at 30 prompts, 18% at 3). A stratum of one unit keeps weight 1 (no
    variance to draw from). Strata draw in ascending order, each an [n_boot, n - 1] ``rng.integers`` call.
    """
    w = np.ones((n_boot, len(unit_stratum)))
    for s in np.unique(unit_stratum):
        cols = np.flatnonzero(unit_stratum == s)
        n = len(cols)
        if n < 2:
            continue
        flat = rng.integers(0, n, size=(n_boot, n - 1)) + np.arange(n_boot)[:, None] * n
        w[:, cols] = np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n) * (n / (n - 1))
    return w


def weighted_means(w: np.ndarray, s: np.ndarray, c: np.ndarray) -> np.ndarray:
    """[n_weights, n_models] = (w @ s.T) / (w @ c.T); NaN where a model has no drawn image."""
    num, den = w @ s.T, w @ c.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def rank_desc(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, 1 = largest, ties share the smallest rank ("min"); NaN stays NaN (unranked)."""
    beaten_by = (x[..., None, :] > x[..., :, None]).sum(axis=-1)
    return np.where(np.isnan(x), np.nan, 1.0 + beaten_by)


def beats_share(boot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From oriented resampled scores [B, M]: P[a, b] = share of resamples (both finite) where a > b, and counts."""
    valid = np.isfinite(boot)
    both = (valid[:, :, None] & valid[:, None, :]).sum(axis=0)
    wins = (boot[:, :, None] > boot[:, None, :]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(both > 0, wins / np.maximum(both, 1), np.nan), both


@dataclass(frozen=True)
class MetricEstimate:
    """Point [M] and resampled [B, M] scores of one metric, natural sign, plus its direction and counts [M]."""

    name: str
    higher_is_better: bool
    point: np.ndarray
    boot: np.ndarray
    n_images: np.ndarray
    n_excluded: np.ndarray
    n_degenerate: np.ndarray

    def oriented(self, x: np.ndarray) -> np.ndarray:
        """Flip the sign of lower-is-better scores so that larger is always better."""
        return x if self.higher_is_better else -x


def estimate(name: str, higher: bool, images: pd.DataFrame, design: Design, w: np.ndarray,
             keep: np.ndarray, base_metric: str) -> MetricEstimate:
    """Scores of ``name`` from the usable rows selected by ``keep`` [n_ok]; counts from ``base_metric``'s rows."""
    ok = images[images["status"] == "ok"]
    s, c = sum_matrices(design, ok["z"].to_numpy(float), keep)
    point = weighted_means(np.ones((1, s.shape[1])), s, c)[0]
    rows = images[images["metric"] == base_metric]

    def count(status: str) -> pd.Series:
        return rows[rows["status"] == status].groupby("model").size().reindex(design.models).fillna(0)

    return MetricEstimate(name, higher, point, weighted_means(w, s, c), c.sum(axis=1).astype(int),
                          count("flagged").to_numpy(int), count("degenerate").to_numpy(int))


def notm_keep(ok: pd.DataFrame, lora_metric: str, made_with: Mapping[str, Sequence[str]]) -> np.ndarray:
    """[n_ok] bool: rows of ``lora_metric`` except those whose item's made_with lists the row's own model."""
    banned = {(str(item), str(m)) for item, names in made_with.items() for m in names}
    pairs = zip(ok["item"].astype(str), ok["model"].astype(str))
    own = np.array([p in banned for p in pairs], dtype=bool)
    return (ok["metric"] == lora_metric).to_numpy() & ~own


def shared_metrics(estimates: Sequence[MetricEstimate]) -> list[MetricEstimate]:
    """The estimates whose point score is finite for every model that has any finite score (module docstring)."""
    finite = np.stack([np.isfinite(e.point) for e in estimates])
    ranked = finite.any(axis=0)
    return [e for e, f in zip(estimates, finite) if f[ranked].all() and ranked.any()]


def combine(estimates: Sequence[MetricEstimate], n_models: int, n_boot: int) -> MetricEstimate:
    """Mean of oriented scores over ``estimates`` (NaN-skipping), point and per resample; higher is better.

    No estimates (no metric every model has): NaN scores for all ``n_models`` over ``n_boot`` resamples."""
    if not estimates:
        nan, zero = np.full(n_models, np.nan), np.zeros(n_models, dtype=int)
        return MetricEstimate(COMBINED, True, nan, np.full((n_boot, n_models), np.nan), zero, zero, zero)
    point = np.stack([e.oriented(e.point) for e in estimates])
    boot = np.stack([e.oriented(e.boot) for e in estimates])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN, wanted
        p, b = np.nanmean(point, axis=0), np.nanmean(boot, axis=0)

    def total(attr: str) -> np.ndarray:
        return np.sum([getattr(e, attr) for e in estimates], axis=0)

    return MetricEstimate(COMBINED, True, p, b, total("n_images"), total("n_excluded"), total("n_degenerate"))


# ---------------------------------------------------------------------------------------------------------------
# Output tables


def estimate_rows(e: MetricEstimate, models: Sequence[str], ci: float) -> pd.DataFrame:
    """One row per model: score, percentile interval, rank and rank interval (integers, rounded outward)."""
    lo_q, hi_q = 50 * (1 - ci), 50 * (1 + ci)
    ranks = rank_desc(e.oriented(e.boot))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a model with no data: all-NaN column -> NaN
        lo, hi = np.nanpercentile(e.boot, [lo_q, hi_q], axis=0)
        rank_lo = np.nanpercentile(ranks, lo_q, axis=0, method="lower")
        rank_hi = np.nanpercentile(ranks, hi_q, axis=0, method="higher")
    return pd.DataFrame({
        "model": list(models), "metric": e.name, "higher_is_better": e.higher_is_better, "score": e.point,
        "lo": lo, "hi": hi, "rank": rank_desc(e.oriented(e.point)), "rank_lo": rank_lo, "rank_hi": rank_hi,
        "n_images": e.n_images, "n_excluded": e.n_excluded, "n_degenerate": e.n_degenerate,
    })


def pairwise_rows(e: MetricEstimate, models: Sequence[str]) -> pd.DataFrame:
    """One row per ordered pair (a != b): P(a's oriented score > b's) over the resamples where both have data."""
    p, n = beats_share(e.oriented(e.boot))
    a, b = np.nonzero(~np.eye(len(models), dtype=bool))
    names = np.asarray(models, dtype=object)
    return pd.DataFrame({"metric": e.name, "model_a": names[a], "model_b": names[b],
                         "p_a_beats_b": p[a, b], "n_boot": n[a, b]})


def usable_raw(images: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows of ``metric`` whose raw value counts (``image_table``'s output): on the metric's own task, unflagged
    and finite (status ok, or degenerate: a group with no spread still has raw values)."""
    return images[(images["metric"] == metric) & images["status"].isin(["ok", "degenerate"])]


def raw_stats(values: pd.Series, threshold: float) -> dict[str, float]:
    """n_images, mean, std (ddof=0) and good rate (share >= ``threshold``; NaN threshold: NaN rate) of raw values."""
    v = values.to_numpy(dtype=float)
    if not len(v):
        return {"n_images": 0, "mean": np.nan, "std": np.nan, "good_rate": np.nan}
    good = float((v >= threshold).mean()) if np.isfinite(threshold) else np.nan
    return {"n_images": len(v), "mean": float(v.mean()), "std": float(v.std(ddof=STD_DDOF)), "good_rate": good}


def raw_table(images: pd.DataFrame, models: Sequence[str], metrics: Sequence[str], raw_metric: str,
              threshold: float) -> pd.DataFrame:
    """Raw values per metric and model over ``usable_raw``: n, mean, std (ddof=0); the good rate (share >=
    ``threshold``) and the threshold for ``raw_metric`` only (NaN for the others)."""
    rows = []
    for metric in metrics:
        cut = threshold if metric == raw_metric else float("nan")
        by_model = dict(tuple(usable_raw(images, metric).groupby("model")["value"]))
        for model in models:
            stats = raw_stats(by_model.get(model, pd.Series(dtype=float)), cut)
            rows.append({"model": model, "metric": metric, **stats, "threshold": cut})
    columns = ["model", "metric", "n_images", "mean", "std", "good_rate", "threshold"]
    return pd.DataFrame(rows, columns=columns).astype({"n_images": int})


def estimates(images: pd.DataFrame, names: Sequence[str], metrics: Mapping[str, MetricLike],
              made_with: Mapping[str, Sequence[str]], *, n_boot: int, seed: int,
              lora_metric: str) -> tuple[list[MetricEstimate], int]:
    """Point and resampled scores of each registered metric present in ``images`` (``image_table``'s first output),
    then ``<lora_metric>_notm`` (if scored) and ``combined`` over ``shared_metrics``, all from one draw; and the
    number of resampled units."""
    ok = images[images["status"] == "ok"]
    design = make_design(ok, names)
    w = unit_weights(design.unit_stratum, n_boot, np.random.default_rng(seed))
    present = [m for m in metrics if m in set(images["metric"])]
    if not present:
        have = sorted(set(images["metric"]))
        raise ValueError(f"no registered metric {sorted(metrics)} in the score table (it has {have})")
    ests = [estimate(m, bool(metrics[m].higher_is_better), images, design, w, (ok["metric"] == m).to_numpy(), m)
            for m in present]
    if lora_metric in present:
        ests.append(estimate(f"{lora_metric}_notm", bool(metrics[lora_metric].higher_is_better), images, design, w,
                             notm_keep(ok, lora_metric, made_with), lora_metric))
    combined = combine(shared_metrics(ests[:len(present)]), len(names), n_boot)
    return ests + [combined], int(len(design.unit_stratum))


def standardize(scores: pd.DataFrame, models: pd.DataFrame, metrics: Mapping[str, MetricLike],
                made_with: Mapping[str, Sequence[str]], *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                good_threshold: float = 6.0, raw_metric: str = "aesthetic",
                lora_metric: str = "loraloss") -> Standardized:
    """Standardize, score, rank and bootstrap (conventions in the module docstring).

    scores: tidy score rows (VALUE_COLUMNS at least). models: ``model, family`` (+ anything). metrics: registry,
    name -> MetricInfo. made_with: LoRA item -> models that made its reference images (for ``<lora_metric>_notm``).
    n_boot: resamples B. seed: for np.random.default_rng. ci: interval level. good_threshold: raw ``raw_metric``
    value counted as a good image (LAION-Aesthetics' "6+" subset by default).
    """
    if n_boot < 1 or not 0 < ci < 1:
        raise ValueError(f"n_boot={n_boot} must be >= 1 and ci={ci} in (0, 1)")
    images, degenerate = image_table(scores, models, metrics)
    names = [str(m) for m in models["model"]]
    all_ests, n_units = estimates(images, names, metrics, made_with, n_boot=n_boot, seed=seed,
                                  lora_metric=lora_metric)
    present = [e for e in all_ests if e.name in metrics]
    combined_over = [e.name for e in shared_metrics(present)]
    meta = {
        "n_boot": n_boot, "seed": seed, "ci": ci, "std_ddof": STD_DDOF, "excluding_flags": sorted(EXCLUDING_FLAGS),
        "directions": {e.name: e.higher_is_better for e in all_ests}, "combined_over": combined_over,
        "metric_tasks": {e.name: metric_task(e.name, metrics[e.name]) for e in present}, "lora_metric": lora_metric,
        "raw_metric": raw_metric, "good_threshold": good_threshold, "n_units": n_units,
    }
    return Standardized(
        images=images,
        scores=pd.concat([estimate_rows(e, names, ci) for e in all_ests], ignore_index=True),
        pairwise=pd.concat([pairwise_rows(e, names) for e in all_ests], ignore_index=True),
        degenerate=degenerate, raw=raw_table(images, names, [e.name for e in present], raw_metric, good_threshold),
        meta=meta)
