"""Standardize per-image scores across models, rank the models, and bootstrap the uncertainty.

Conventions (each one tested in tests/test_standardize.py):

- Rows. Only metrics present in ``metrics`` (the registry) are standardized, and only their rows make the image table;
  other rows (per-layer StyleLoss such as ``styleloss.relu1_1``: three in five of a v1 review's rows) stay in the
  score tables, where the report reads them (the image table would be 2.5 times as large for nothing). A metric is
  standardized over the images of the task its ``grouped_by`` names (``prompt`` -> task ``general``, ``style`` ->
  ``style``, ``lora`` -> ``lora``); its rows from other tasks get status ``other_task``.
- Exclusion. A row whose ``flags`` contain one of ``EXCLUDING_FLAGS`` or whose value is not finite gets status
  ``flagged``: no z, counted per model and metric in ``n_excluded``.
- Groups. z = (x - mean) / std within the group (metric, task, item, pool) over all usable images of all models, with
  the POPULATION std (ddof=0, like sklearn's StandardScaler): inside a group the z then have mean 0 and mean square 1
  exactly. ``pool`` is the model family for LoRA-grouped metrics (an SD1 LoRA is compared among SD1 models only) and
  ``"all"`` otherwise, when every model draws the v1 protocol. A model whose base draws other prompts or settings
  (the models table's optional ``protocol`` column, see :func:`protocol_pool`; docs/standardize.md) is z-scored
  among the models of its protocol only: pool = its protocol, and ``<family>/<protocol>`` for LoRA metrics.
  A group with fewer than 2 usable values, zero spread (max == min, tested exactly so that a constant group never
  yields 1e-17 / 1e-17) or the images of one model only is listed in ``degenerate`` and its rows get status
  ``degenerate``.
- Scores. A model's score on a metric = mean of its z, in the metric's natural sign (lower is better for losses, as
  the GhostReview article shows). Oriented score = score for higher-is-better metrics, -score otherwise; ranks (1 =
  best) order oriented scores. ``combined`` = mean of a model's oriented scores over ``meta["combined_over"]``: the
  metrics of ``combined`` (the chosen judges, ``meta["combined_chosen"]``; every registered metric by default) that
  every ranked model has a score on (the NoTM variant is never part of it), higher is better.
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
- Agreement. The judges (registered metrics scored that rank 2 models or more) are compared pairwise by
  ``ghostreview.analysis.agreement`` from the same estimates: Kendall's tau between their rankings, point and per
  resample (so its interval comes from this draw too), Spearman's rho between their per-image z, and each model's best
  and worst rank over them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from ghostreview.analysis.agreement import AGREEMENT_COLUMNS, RANK_COLUMNS, agreement_table, rank_spread
from ghostreview.analysis.stability import STABILITY_COLUMNS, split_half_table
from ghostreview.scoring.table import VALUE_COLUMNS  # what standardize reads of a score row (not its provenance)

EXCLUDING_FLAGS = frozenset({"nan", "black", "lora_unsupported", "lora_incompatible", "lora_partial", "error"})
MODEL_COLUMNS = ("model", "family")
GROUPING_TASK = {"prompt": "general", "style": "style", "lora": "lora"}
ALL_POOL = "all"
COMBINED = "combined"
STD_DDOF = 0
DRIFT_COLUMNS = ("model", "metric", "score", "score_without_last", "shift")  # Standardized.drift


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

    images: one row per score row of a registered metric: VALUE_COLUMNS + family, pool, status
        (ok|flagged|degenerate|other_task), z.
    scores: one row per model x scored metric: model, metric, higher_is_better, score, lo, hi, rank, rank_lo,
        rank_hi, n_images, n_excluded, n_degenerate. Metrics: the registered ones, ``<lora>_notm``, ``combined``.
    pairwise: metric, model_a, model_b, p_a_beats_b (share of resamples where A's oriented score > B's), n_boot.
    degenerate: metric, task, item, pool, n_values, reason.
    raw: one row per registered metric scored x model: model, metric, n_images, mean, std (ddof=0) of the raw values
        (``usable_raw``); good_rate (share >= threshold) and threshold for the raw metric (aesthetic) only, else NaN.
    agreement: one row per pair of judges (``agreement.AGREEMENT_COLUMNS``): Kendall's tau between their model
        rankings with its interval from the scores' resamples, Spearman's rho between their per-image z.
    judge_ranks: one row per model (``agreement.RANK_COLUMNS``): its best and worst rank over the judges.
    stability: one row per scored metric and combined (``stability.STABILITY_COLUMNS``): split-half Kendall tau.
    drift: one row per model but the last x metric (DRIFT_COLUMNS): its score with every model and without the last
        one (leave-one-out, ``last_model_drift``): how far adding the last model moved it.
    meta: n_boot, seed, ci, std_ddof, excluding_flags, directions {metric: higher_is_better}, combined_chosen (the
        scored metrics the combined score may average: ``standardize``'s ``combined``), combined_over (those of them
        it averages: the ones every ranked model has), agreement_judges (the judges ``agreement`` compares: those
        that rank 2 models or more), metric_tasks, n_units (the resampled (task, pool, item) units), ...
    """

    images: pd.DataFrame
    scores: pd.DataFrame
    pairwise: pd.DataFrame
    degenerate: pd.DataFrame
    raw: pd.DataFrame
    agreement: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=AGREEMENT_COLUMNS))
    judge_ranks: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RANK_COLUMNS))
    stability: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=STABILITY_COLUMNS))
    drift: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DRIFT_COLUMNS))
    meta: dict = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> None:
        """Write ``<table>.csv`` for each table and ``meta.json`` into ``out_dir`` (created if missing)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in TABLES:
            write_csv(getattr(self, name), out / f"{name}.csv")
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


TABLES = ("images", "scores", "pairwise", "degenerate", "raw", "agreement", "judge_ranks", "stability", "drift")
STRING_COLUMNS = ("model", "model_a", "model_b", "task", "item", "image_hash", "metric", "flags", "family", "pool",
                  "status", "reason", "metric_version", "weights_sha256", "judge_a", "judge_b", "best_by", "worst_by")


def float_text(values: np.ndarray) -> np.ndarray:
    """Each float as ``to_csv`` writes it (numpy's shortest round-trip text, as Python's ``repr``), "" for NaN."""
    return np.array(["" if v != v else repr(v) for v in values.tolist()], dtype=object)


def csv_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its float columns already as text: the same file bytes from ``to_csv``, in a third of the time
    on millions of rows (pandas formats floats with numpy's slower formatter)."""
    floats = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
    return frame.assign(**{c: float_text(frame[c].to_numpy()) for c in floats})


CSV_CHUNK = 200_000  # rows formatted at once by write_csv


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """``frame.to_csv(path, index=False)``'s bytes, CSV_CHUNK rows at a time: the float texts of a 500-model image
    table (millions of strings) never exist all at once."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        for start in range(0, max(len(frame), 1), CSV_CHUNK):
            csv_ready(frame.iloc[start:start + CSV_CHUNK]).to_csv(fh, index=False, header=start == 0)


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


def flag_mask(flags: pd.Series, test: Callable[[frozenset[str]], bool]) -> np.ndarray:
    """Boolean array [n]: ``test(parse_flags(cell))`` of each cell, each distinct cell parsed once (a review holds a
    handful of distinct cells over millions of rows)."""
    cell, distinct = pd.factorize(flags, use_na_sentinel=True)
    hit = np.array([bool(test(parse_flags(c))) for c in distinct] + [bool(test(frozenset()))], dtype=bool)
    return hit[np.where(cell < 0, len(distinct), cell)]  # NaN cells (code -1): no flag


def excluded_mask(flags: pd.Series, values: pd.Series) -> np.ndarray:
    """Boolean array [n]: True where a row carries an excluding flag or a non-finite value."""
    flagged = flag_mask(flags, lambda f: bool(f & EXCLUDING_FLAGS))
    finite = np.isfinite(pd.to_numeric(values, errors="coerce").to_numpy(dtype=float))
    return flagged | ~finite


def codes(values: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 codes [n], sorted distinct values): code order is the values' sorted order, as in a sorted groupby."""
    code, distinct = pd.factorize(np.asarray(values, dtype=object), sort=True)
    if (code < 0).any():
        raise ValueError("empty key cells reached a grouping; attach_family checks them first")
    return code.astype(np.int64), np.asarray(distinct, dtype=object)


def group_index(frame: pd.DataFrame, keys: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """(group code [n] of each row, the groups' key table [G]) over ``keys``, in sorted key order (groupby's order)."""
    combined = np.zeros(len(frame), dtype=np.int64)
    for key in keys:
        code, distinct = codes(frame[key])
        combined = combined * len(distinct) + code
    _, first, group = np.unique(combined, return_index=True, return_inverse=True)
    return group.reshape(-1), frame.iloc[first][list(keys)].reset_index(drop=True)


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
    scored = {str(m) for m in pd.unique(scores["model"])}
    unknown = sorted(scored - set(family))
    if unknown:
        raise ValueError(f"score rows for models {unknown} that the models table lacks (it has {sorted(family)})")
    silent = sorted(set(family) - scored)
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
    out["protocol"] = out["model"].map(model_protocols(models))  # no protocol column: every model draws v1's
    return out


def model_protocols(models: pd.DataFrame) -> dict[str, str]:
    """Each model's protocol pool (the models table's ``protocol`` column; none: ``all``), for meta["protocols"]."""
    names = models["model"].astype(str)
    given = models["protocol"].astype(str) if "protocol" in models else [ALL_POOL] * len(names)
    return dict(zip(names, given))


def protocol_pool(base: str, prediction: str, plain: bool, v_settings: bool) -> str:
    """The z pool of a model's general and style rows (issue 17): ``all`` for the plain bases (sd15, sdxl: prompts.yaml
    and params' settings, the v1 protocol every model shared before bases existed, so those reviews keep their pools
    and numbers), else the base's name, with ``-vpred`` when its v-prediction checkpoints draw with other settings.

    ``plain``: the base's bases.yaml entry is empty; ``v_settings``: it has v_prediction settings."""
    if plain:
        return ALL_POOL
    return f"{base}-vpred" if prediction == "v_prediction" and v_settings else base


STATUSES = np.array(["other_task", "flagged", "ok"], dtype=object)


def row_status(rows: pd.DataFrame, metrics: Mapping[str, MetricLike]) -> tuple[np.ndarray, np.ndarray]:
    """(status [n] of other_task|flagged|ok, pool [n]) of rows of registered metrics, before degenerate groups are
    known.

    Decided per distinct metric and task (a few), then spread over the rows by code: no per-row Python."""
    tasks = {m: metric_task(m, info) for m, info in metrics.items()}
    metric, metric_names = codes(rows["metric"])
    task, task_names = codes(rows["task"])
    task_code = {t: i for i, t in enumerate(task_names)}
    own_task = np.array([task_code.get(tasks.get(m), -1) for m in metric_names], dtype=np.int64)[metric] == task
    flagged = excluded_mask(rows["flags"], rows["value"])
    status = STATUSES[np.select([~own_task, flagged], [0, 1], 2)]
    lora = np.array([m in tasks and metrics[m].grouped_by == "lora" for m in metric_names], dtype=bool)[metric]
    protocol = rows["protocol"].to_numpy(dtype=object)
    family = rows["family"].to_numpy(dtype=object)
    lora_pool = np.where(protocol == ALL_POOL, family, family + "/" + protocol)  # a LoRA's prompt, the base's settings
    pool = np.where(lora, lora_pool, protocol)
    return status, pool


GROUP_KEYS = ["metric", "task", "item", "pool"]


@dataclass(frozen=True)
class GroupStats:
    """Per z group [G], in sorted GROUP_KEYS order: size, mean, population std, min, max, number of models."""

    n: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_models: np.ndarray

    @property
    def degenerate(self) -> np.ndarray:
        """[G] bool: fewer than 2 values, zero spread (max == min, exactly) or one model only."""
        return (self.n < 2) | (self.high == self.low) | (self.n_models < 2)


def group_stats(group: np.ndarray, values: np.ndarray, model: np.ndarray) -> GroupStats:
    """Statistics of ``values`` [n] per group code [n] (codes 0..G-1, each used); ``model`` [n] int codes.

    Two-pass population std (mean first, then the mean squared deviation), like ``statistics.pstdev``."""
    n = np.bincount(group)
    mean = np.bincount(group, weights=values) / n
    std = np.sqrt(np.bincount(group, weights=(values - mean[group]) ** 2) / n)
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    low, high = np.minimum.reduceat(values[order], starts), np.maximum.reduceat(values[order], starts)
    pairs = np.unique(group * (int(model.max()) + 1) + model) // (int(model.max()) + 1)
    return GroupStats(n, mean, std, low, high, np.bincount(pairs, minlength=len(n)))


def zscore_groups(ok: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """z of usable rows within GROUP_KEYS (population std) and the table of degenerate groups.

    A group is degenerate with fewer than 2 usable values, zero spread, or images of one model only: a z-score
    compares models, and one model's z within its own images averages to 0 up to rounding (it was ranked on
    1e-15 noise in the rehearsal, where each family's LoRA pool held one model with several seeds).

    ok: rows with status ok. Returns (z indexed like ``ok``, NaN in degenerate groups; degenerate table).
    """
    if ok.empty:
        empty = pd.DataFrame({k: pd.Series(dtype=object) for k in GROUP_KEYS})
        return pd.Series(np.nan, index=ok.index), empty.assign(n_values=pd.Series(dtype=np.int64),
                                                               reason=pd.Series(dtype=object))
    group, keys = group_index(ok, GROUP_KEYS)
    values = ok["value"].to_numpy(dtype=float)
    stats = group_stats(group, values, codes(ok["model"])[0])
    bad = stats.degenerate
    z = (values - stats.mean[group]) / np.where(bad, np.nan, stats.std)[group]  # degenerate groups never divided
    table = keys[bad].assign(n_values=stats.n[bad].astype(np.int64)).reset_index(drop=True)
    table["reason"] = [degenerate_reason(n, m, v)
                       for n, m, v in zip(stats.n[bad], stats.n_models[bad], stats.low[bad])]
    return pd.Series(z, index=ok.index), table


REFERENCE_COLUMNS = ("metric", "task", "item", "pool", "n", "mean", "std", "n_models")
NOT_IN_REFERENCE = "not in the reference set: its anchors had no usable spread here (or no images)"


def group_summary(images: pd.DataFrame) -> pd.DataFrame:
    """REFERENCE_COLUMNS rows, one per z group (GROUP_KEYS) of ``image_table``'s usable rows (status ok or
    degenerate) that is not degenerate: size, mean, population std, models. What a reference set freezes."""
    usable = images[images["status"].isin(["ok", "degenerate"]).to_numpy()]
    if usable.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in GROUP_KEYS else float) for c in REFERENCE_COLUMNS})
    group, keys = group_index(usable, GROUP_KEYS)
    stats = group_stats(group, usable["value"].to_numpy(dtype=float), codes(usable["model"])[0])
    table = keys.assign(n=stats.n, mean=stats.mean, std=stats.std, n_models=stats.n_models)
    return table[~stats.degenerate].reset_index(drop=True)


def zscore_reference(ok: pd.DataFrame, reference: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """``zscore_groups`` with each group's mean and std taken from ``reference`` (``group_summary`` of the anchors'
    review), not from the rows: a row's z then depends on its own value and the reference only. A group the
    reference lacks gets no z and is listed as degenerate (NOT_IN_REFERENCE); a group of one model is fine here."""
    check_columns(reference, REFERENCE_COLUMNS, "reference table")
    empty_table = pd.DataFrame({k: pd.Series(dtype=object) for k in GROUP_KEYS}).assign(
        n_values=pd.Series(dtype=np.int64), reason=pd.Series(dtype=object))
    if ok.empty:
        return pd.Series(np.nan, index=ok.index), empty_table
    group, keys = group_index(ok, GROUP_KEYS)
    ref = keys.merge(reference.loc[:, list(REFERENCE_COLUMNS)], on=GROUP_KEYS, how="left", validate="one_to_one")
    mean, std = ref["mean"].to_numpy(dtype=float), ref["std"].to_numpy(dtype=float)
    missing = ~np.isfinite(std) | ~(std > 0)
    values = ok["value"].to_numpy(dtype=float)
    z = (values - mean[group]) / np.where(missing, np.nan, std)[group]
    table = keys[missing].assign(n_values=np.bincount(group)[missing].astype(np.int64)).reset_index(drop=True)
    table["reason"] = NOT_IN_REFERENCE
    return pd.Series(z, index=ok.index), table if len(table) else empty_table


def degenerate_reason(n_values: int, n_models: int, low: float) -> str:
    if n_values < 2:
        return "fewer than 2 usable values"
    if n_models < 2:
        return "one model only: nothing to compare with"
    return f"zero spread: every value equals {low:.6g}"


def image_table(scores: pd.DataFrame, models: pd.DataFrame, metrics: Mapping[str, MetricLike],
                reference: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-row status and z of the registered metrics' rows (see module docstring), and the degenerate groups table.

    reference: None (pool mode: each group's own mean and std) or a ``group_summary`` table of a reference set."""
    check_columns(scores, VALUE_COLUMNS, "score table")
    registered = scores["metric"].isin(list(metrics)).to_numpy()
    if not registered.any():
        have = sorted(set(scores["metric"].astype(str)))
        raise ValueError(f"no registered metric {sorted(metrics)} in the score table (it has {have})")
    rows = attach_family(scores.loc[registered], models)
    status, pool = row_status(rows, metrics)
    ok = status == "ok"
    usable = rows.loc[ok].assign(pool=pool[ok])
    z, degenerate = zscore_groups(usable) if reference is None else zscore_reference(usable, reference)
    full = np.full(len(rows), np.nan)
    full[ok] = z.to_numpy()
    status[ok & np.isnan(full)] = "degenerate"
    rows["pool"], rows["status"], rows["z"] = pool, status, full
    return rows.drop(columns="protocol").reset_index(drop=True), degenerate  # the pool names it


# ---------------------------------------------------------------------------------------------------------------
# Scores as matrix products over benchmark units


@dataclass(frozen=True)
class Design:
    """Index of the usable rows: model code and unit code per row, unit strata, model names."""

    models: list[str]
    row_model: np.ndarray  # [n_ok] int
    row_unit: np.ndarray  # [n_ok] int: the row's (task, pool, item)
    unit_stratum: np.ndarray  # [U] int


def name_codes(values: pd.Series | np.ndarray, names: Sequence[str]) -> np.ndarray:
    """[n] int: the position of each value in ``names`` (every value must be one of them)."""
    code, distinct = pd.factorize(np.asarray(values, dtype=object))
    at = {m: i for i, m in enumerate(names)}
    return np.array([at[d] for d in distinct], dtype=np.int64)[code]


def make_design(ok: pd.DataFrame, models: Sequence[str]) -> Design:
    """Units = distinct (task, pool, item) of the usable rows, each with its seeds, sorted; strata = (task, pool)."""
    unit, keys = group_index(ok, ["task", "pool", "item"])
    stratum, _ = group_index(keys, ["task", "pool"])
    return Design(list(models), name_codes(ok["model"], models), unit, stratum)


def sum_matrices(design: Design, z: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, C), each [n_models, U]: sum and count of the kept rows' z per model and unit."""
    n_models, n_units = len(design.models), len(design.unit_stratum)
    cell = design.row_model[keep] * n_units + design.row_unit[keep]
    s = np.bincount(cell, weights=z[keep], minlength=n_models * n_units).reshape(n_models, n_units)
    c = np.bincount(cell, minlength=n_models * n_units).reshape(n_models, n_units).astype(float)
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
    """Ranks along the last axis, 1 = largest, ties share the smallest rank ("min"); NaN stays NaN (unranked).

    By sorting (O(M log M) per row, not M x M comparisons): a value's rank is 1 + its first position among the row's
    values sorted in descending order, NaN placed last (they are beaten by nothing and beat nothing)."""
    missing = np.isnan(x)
    filled = np.where(missing, -np.inf, x)
    order = np.argsort(-filled, axis=-1, kind="stable")
    ordered = np.take_along_axis(filled, order, axis=-1)
    position = np.broadcast_to(np.arange(x.shape[-1]), x.shape)
    starts = np.ones(x.shape, dtype=bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=-1)
    ranks = np.empty(x.shape)
    np.put_along_axis(ranks, order, first + 1.0, axis=-1)
    return np.where(missing, np.nan, ranks)


def beats_share(boot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From oriented resampled scores [B, M]: P[a, b] = share of resamples (both finite) where a > b, and counts.

    One [M, M] comparison per resample added into the counts (NaN compares False): 500 models x 1,000 resamples
    never hold the [B, M, M] comparisons (250 MB) at once, and run faster than in blocks."""
    valid = np.isfinite(boot).astype(np.float64)
    both = np.rint(valid.T @ valid).astype(np.int64)  # resamples where both are finite: exact integers in float64
    counts = np.zeros((boot.shape[1], boot.shape[1]), dtype=np.uint16 if len(boot) < 2**16 else np.int64)
    for scores in boot:  # uint16 counts (B < 65,536 cannot overflow them): a third faster than int64 at 500 models
        counts += scores[:, None] > scores[None, :]
    wins = counts.astype(np.int64)
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
    sums: np.ndarray | None = None  # [M, U] sum of z per model and unit (None for combined): for split halves
    counts: np.ndarray | None = None  # [M, U] images per model and unit

    def oriented(self, x: np.ndarray) -> np.ndarray:
        """Flip the sign of lower-is-better scores so that larger is always better."""
        return x if self.higher_is_better else -x


def estimate(name: str, higher: bool, design: Design, w: np.ndarray, z: np.ndarray, keep: np.ndarray,
             n_excluded: np.ndarray, n_degenerate: np.ndarray) -> MetricEstimate:
    """Scores of ``name`` from the usable rows (``z`` [n_ok]) selected by ``keep`` [n_ok]; counts [M] given."""
    s, c = sum_matrices(design, z, keep)
    return MetricEstimate(name, higher, point_means(design, z, keep), weighted_means(w, s, c),
                          c.sum(axis=1).astype(int), n_excluded, n_degenerate, s, c)


def point_means(design: Design, z: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """[M] mean z of each model's kept rows, NaN without any.

    Summed row by row in table order per model (``bincount``), so a model's score depends on its own rows only,
    bit for bit: with a reference set, adding a model or a pool (new units) leaves it unchanged, which a sum over
    units (a matrix product, a pairwise sum whose blocking depends on the number of units) does not promise."""
    n_models = len(design.models)
    total = np.bincount(design.row_model[keep], weights=z[keep], minlength=n_models)
    count = np.bincount(design.row_model[keep], minlength=n_models)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def status_counts(model: np.ndarray, metric: np.ndarray, status: np.ndarray, n_models: int,
                  of_metric: str) -> dict[str, np.ndarray]:
    """{"flagged", "degenerate"} -> [M] int: rows of ``of_metric`` with that status per model code.

    model [n] int codes, metric and status [n] object arrays (all rows of the image table)."""
    mine = metric == of_metric
    return {s: np.bincount(model[mine & (status == s)], minlength=n_models).astype(int)
            for s in ("flagged", "degenerate")}


def notm_keep(ok: pd.DataFrame, lora_metric: str, made_with: Mapping[str, Sequence[str]]) -> np.ndarray:
    """[n_ok] bool: rows of ``lora_metric`` except those whose item's made_with lists the row's own model."""
    item, items = codes(ok["item"].astype(str))
    model, models = codes(ok["model"].astype(str))
    item_at, model_at = {v: i for i, v in enumerate(items)}, {v: i for i, v in enumerate(models)}
    banned = [item_at[str(it)] * len(models) + model_at[str(m)] for it, names in made_with.items() for m in names
              if str(it) in item_at and str(m) in model_at]
    own = np.isin(item * len(models) + model, banned)
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


def column_percentiles(x: np.ndarray, q: float | Sequence[float], method: str = "linear") -> np.ndarray:
    """``np.nanpercentile(x, q, axis=0, method=method)`` for x [B, M]: NaN-free columns in one vectorized call
    (nanpercentile loops over columns in Python), the others column by column; all-NaN columns give NaN."""
    qs = np.atleast_1d(np.asarray(q, dtype=float))
    missing = np.isnan(x)
    out = np.full((len(qs), x.shape[1]), np.nan)
    full, some = ~missing.any(axis=0), ~missing.all(axis=0) & missing.any(axis=0)
    if full.any():
        out[:, full] = np.percentile(x[:, full], qs, axis=0, method=method)  # type: ignore[call-overload]
    if some.any():
        out[:, some] = np.nanpercentile(x[:, some], qs, axis=0, method=method)  # type: ignore[call-overload]
    return out if np.ndim(q) else out[0]


def estimate_rows(e: MetricEstimate, models: Sequence[str], ci: float) -> pd.DataFrame:
    """One row per model: score, percentile interval, rank and rank interval (integers, rounded outward)."""
    lo_q, hi_q = 50 * (1 - ci), 50 * (1 + ci)
    ranks = rank_desc(e.oriented(e.boot))
    lo, hi = column_percentiles(e.boot, [lo_q, hi_q])
    rank_lo = column_percentiles(ranks, lo_q, method="lower")
    rank_hi = column_percentiles(ranks, hi_q, method="higher")
    return pd.DataFrame({
        "model": list(models), "metric": e.name, "higher_is_better": e.higher_is_better, "score": e.point,
        "lo": lo, "hi": hi, "rank": rank_desc(e.oriented(e.point)), "rank_lo": rank_lo, "rank_hi": rank_hi,
        "n_images": e.n_images, "n_excluded": e.n_excluded, "n_degenerate": e.n_degenerate,
    })


def difference_p_values(point: np.ndarray, boot: np.ndarray) -> np.ndarray:
    """[M, M] two-sided p-value of "a and b score the same", from oriented point [M] and resampled [B, M] scores:
    2 P(N(0, 1) > |d| / sd), d = the point difference, sd = the resamples' std (ddof=1) of the difference.

    Normal, not the resamples' own share: Holm over the pairs of 500 models needs p-values near 1e-7, which no
    share of 1,000 resamples can express (its smallest step is 1e-3). NaN where either model lacks a score in some
    resample or with fewer than 2 resamples (no spread to measure)."""
    from scipy.stats import norm  # scipy loads only when the pairwise tables are built

    m = len(point)
    p = np.full((m, m), np.nan)
    full = np.isfinite(boot).all(axis=0) & np.isfinite(point)
    idx = np.flatnonzero(full)
    if len(boot) < 2 or len(idx) < 2:
        return p
    cov = np.atleast_2d(np.cov(boot[:, idx], rowvar=False))
    var = np.diag(cov)[:, None] + np.diag(cov)[None, :] - 2 * cov
    d = point[idx][:, None] - point[idx][None, :]
    sd = np.sqrt(np.maximum(var, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = np.where(sd > 0, np.abs(d) / np.where(sd > 0, sd, 1.0), np.where(d == 0, 0.0, np.inf))
    p[np.ix_(idx, idx)] = 2 * norm.sf(stat)
    return p


def holm_adjust(p: np.ndarray) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values of ``p`` [n] (NaN kept out of the family and returned as NaN):
    sorted ascending, p_(j) times (m - j + 1), running maximum, capped at 1."""
    out = np.full(len(p), np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    return out


def pairwise_rows(e: MetricEstimate, models: Sequence[str], ci: float = 0.95) -> pd.DataFrame:
    """One row per ordered pair (a != b): P(a's oriented score > b's) over the resamples where both have data;
    ``p_value`` (``difference_p_values``) and ``p_holm`` (Holm over this metric's unordered pairs, one hypothesis
    per pair); ``claim``: "a beats b" survives the correction at 1 - ci (a's oriented point score higher and
    p_holm <= 1 - ci)."""
    oriented_boot, oriented_point = e.oriented(e.boot), e.oriented(e.point)
    p, n = beats_share(oriented_boot)
    pv = difference_p_values(oriented_point, oriented_boot)
    upper = np.triu_indices(len(models), k=1)
    holm = np.full_like(pv, np.nan)
    holm[upper] = holm_adjust(pv[upper])
    holm = np.fmin(holm, holm.T)  # symmetric: the lower triangle mirrors the upper one
    a, b = np.nonzero(~np.eye(len(models), dtype=bool))
    names = np.asarray(models, dtype=object)
    ahead = oriented_point[a] > oriented_point[b]
    return pd.DataFrame({"metric": e.name, "model_a": names[a], "model_b": names[b],
                         "p_a_beats_b": p[a, b], "n_boot": n[a, b], "p_value": pv[a, b], "p_holm": holm[a, b],
                         "claim": ahead & (holm[a, b] <= 1 - ci)})


def usable_raw(images: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows of ``metric`` whose raw value counts (``image_table``'s output): on the metric's own task, unflagged
    and finite (status ok, or degenerate: a group with no spread still has raw values)."""
    return images[(images["metric"] == metric) & images["status"].isin(["ok", "degenerate"])]


def raw_stats(values: pd.Series | np.ndarray, threshold: float) -> dict[str, float]:
    """n_images, mean, std (ddof=0) and good rate (share >= ``threshold``; NaN threshold: NaN rate) of raw values."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return {"n_images": 0, "mean": np.nan, "std": np.nan, "good_rate": np.nan}
    good = float((v >= threshold).mean()) if np.isfinite(threshold) else np.nan
    return {"n_images": len(v), "mean": float(v.mean()), "std": float(v.std(ddof=STD_DDOF)), "good_rate": good}


def values_by_model(rows: pd.DataFrame, models: Sequence[str]) -> list[np.ndarray]:
    """The ``value`` column of ``rows`` split by model, in ``models`` order (rows' order kept within a model)."""
    code = name_codes(rows["model"], models)
    order = np.argsort(code, kind="stable")
    ends = np.cumsum(np.bincount(code, minlength=len(models)))
    return np.split(rows["value"].to_numpy(dtype=float)[order], ends[:-1])


def raw_table(images: pd.DataFrame, models: Sequence[str], metrics: Sequence[str], raw_metric: str,
              threshold: float) -> pd.DataFrame:
    """Raw values per metric and model over ``usable_raw``: n, mean, std (ddof=0); the good rate (share >=
    ``threshold``) and the threshold for ``raw_metric`` only (NaN for the others)."""
    rows = []
    for metric in metrics:
        cut = threshold if metric == raw_metric else float("nan")
        for model, values in zip(models, values_by_model(usable_raw(images, metric), models)):
            stats = raw_stats(values, cut)
            rows.append({"model": model, "metric": metric, **stats, "threshold": cut})
    columns = ["model", "metric", "n_images", "mean", "std", "good_rate", "threshold"]
    return pd.DataFrame(rows, columns=columns).astype({"n_images": int})


def estimates(images: pd.DataFrame, names: Sequence[str], metrics: Mapping[str, MetricLike],
              made_with: Mapping[str, Sequence[str]], *, n_boot: int, seed: int, lora_metric: str,
              combined: Collection[str] | None = None) -> tuple[list[MetricEstimate], Design]:
    """Point and resampled scores of each registered metric present in ``images`` (``image_table``'s first output),
    then ``<lora_metric>_notm`` (if scored) and ``combined`` over the ``shared_metrics`` of those in ``combined``
    (None: of all), all from one draw; and the design (its ``unit_stratum``: the resampled units)."""
    ok = images[(images["status"] == "ok").to_numpy()]
    design = make_design(ok, names)
    w = unit_weights(design.unit_stratum, n_boot, np.random.default_rng(seed))
    scored = set(pd.unique(images["metric"]))
    present = [m for m in metrics if m in scored]
    if not present:
        raise ValueError(f"no registered metric {sorted(metrics)} in the score table (it has {sorted(scored)})")
    z, ok_metric = ok["z"].to_numpy(float), ok["metric"].to_numpy(dtype=object)
    columns = (name_codes(images["model"], names), images["metric"].to_numpy(dtype=object),
               images["status"].to_numpy(dtype=object))

    def one(name: str, metric: str, keep: np.ndarray) -> MetricEstimate:
        counts = status_counts(*columns, len(names), metric)
        return estimate(name, bool(metrics[metric].higher_is_better), design, w, z, keep, counts["flagged"],
                        counts["degenerate"])

    ests = [one(m, m, ok_metric == m) for m in present]
    if lora_metric in present:
        ests.append(one(f"{lora_metric}_notm", lora_metric, notm_keep(ok, lora_metric, made_with)))
    chosen = [e for e in ests[:len(present)] if combined is None or e.name in combined]
    return ests + [combine(shared_metrics(chosen), len(names), n_boot)], design


def agreeing_judges(present: Sequence[MetricEstimate]) -> list[MetricEstimate]:
    """The judges the agreement compares: the registered metrics scored that rank at least 2 models."""
    return [e for e in present if np.isfinite(e.point).sum() >= 2]


def judge_agreement(judges: Sequence[MetricEstimate], images: pd.DataFrame, scores: pd.DataFrame,
                    ci: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(agreement, judge_ranks) of ``judges`` (``agreement.agreement_table`` over their oriented point and resampled
    scores, ``agreement.rank_spread`` over their rank rows of ``scores``)."""
    names, higher = [e.name for e in judges], [e.higher_is_better for e in judges]
    if not judges:
        return agreement_table([], [], np.zeros((0, 0)), np.zeros((0, 0, 0)), images, ci), rank_spread(scores, [])
    point = np.stack([e.oriented(e.point) for e in judges])
    boot = np.stack([e.oriented(e.boot) for e in judges])
    return agreement_table(names, higher, point, boot, images, ci), rank_spread(scores, names)


def last_model_drift(scores: pd.DataFrame, models: pd.DataFrame, metrics: Mapping[str, MetricLike],
                     made_with: Mapping[str, Sequence[str]], with_all: Sequence[MetricEstimate], *,
                     lora_metric: str, combined: Collection[str], reference: pd.DataFrame | None) -> pd.DataFrame:
    """DRIFT_COLUMNS: each model's point score on each metric with every model (``with_all``) and with the last
    model of ``models`` left out (z recomputed without its images: leave-one-out, self-contained, no earlier
    state needed); shift = score - score_without_last. Fewer than 2 models: no rows.

    In pool mode this is what adding the last model did to everyone else's numbers; with a reference set the
    metrics' shifts are 0 exactly (combined too, unless the last model changed which metrics every model has)."""
    names = [str(m) for m in models["model"]]
    if len(names) < 2:
        return pd.DataFrame(columns=list(DRIFT_COLUMNS))
    rest, last = models[models["model"].astype(str) != names[-1]], names[-1]
    kept = scores[scores["model"].astype(str) != last]
    images, _ = image_table(kept, rest, metrics, reference)
    without, _ = estimates(images, names[:-1], metrics, made_with, n_boot=1, seed=0, lora_metric=lora_metric,
                           combined=combined)
    before = {e.name: e.point for e in without}
    frames = [pd.DataFrame({"model": names[:-1], "metric": e.name, "score": e.point[:-1],
                            "score_without_last": before[e.name]}) for e in with_all if e.name in before]
    out = pd.concat(frames, ignore_index=True)
    out["shift"] = out["score"] - out["score_without_last"]
    return out.loc[:, list(DRIFT_COLUMNS)]


def stability_table(present: Sequence[MetricEstimate], design: Design, combined_over: Sequence[str], *,
                    n_splits: int, seed: int, ci: float) -> pd.DataFrame:
    """``stability.split_half_table`` of the registered metrics scored (``present``; not the NoTM variant, the LoRA
    metric on fewer items) and the combined score, from their sums; splits drawn from ``default_rng([seed, 1])``."""
    parts = [(e.name, e.higher_is_better, e.sums, e.counts) for e in present]
    kept = [(n, h, s, c) for n, h, s, c in parts if s is not None and c is not None]
    return split_half_table([k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept], [k[3] for k in kept],
                            design.unit_stratum, combined_over, n_splits=n_splits, seed=[seed, 1], ci=ci,
                            combined_name=COMBINED)


def standardize(scores: pd.DataFrame, models: pd.DataFrame, metrics: Mapping[str, MetricLike],
                made_with: Mapping[str, Sequence[str]], *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                good_threshold: float = 6.0, raw_metric: str = "aesthetic", lora_metric: str = "loraloss",
                combined: Sequence[str] | None = None, reference: pd.DataFrame | None = None,
                n_splits: int = 200, drift: bool = True) -> Standardized:
    """Standardize, score, rank and bootstrap, and compare the judges (conventions in the module docstring and in
    ``agreement``'s); split-half stability and the last model's drift.

    scores: tidy score rows (VALUE_COLUMNS at least). models: ``model, family`` (+ anything). metrics: registry,
    name -> MetricInfo. made_with: LoRA item -> models that made its reference images (for ``<lora_metric>_notm``).
    n_boot: resamples B. seed: for np.random.default_rng. ci: interval level. good_threshold: raw ``raw_metric``
    value counted as a good image (LAION-Aesthetics' "6+" subset by default). combined: the metrics of ``metrics``
    the combined score may average (None: all of them); a name not in ``metrics`` raises ValueError. reference:
    None (pool mode) or a reference set's ``group_summary`` table (``ghostreview.analysis.reference``). n_splits:
    split-half repetitions (``stability``; drawn from their own generator, seeded ``[seed, 1]``). drift: compute
    the leave-last-out ``drift`` table (one more z pass without the last model).
    """
    if n_boot < 1 or not 0 < ci < 1 or n_splits < 1:
        raise ValueError(f"n_boot={n_boot} and n_splits={n_splits} must be >= 1 and ci={ci} in (0, 1)")
    chosen = list(metrics) if combined is None else list(combined)
    unknown = [m for m in chosen if m not in metrics]
    if unknown:
        raise ValueError(f"combined lists {unknown}, which are not among the metrics {sorted(metrics)}")
    images, degenerate = image_table(scores, models, metrics, reference)
    names = [str(m) for m in models["model"]]
    all_ests, design = estimates(images, names, metrics, made_with, n_boot=n_boot, seed=seed,
                                 lora_metric=lora_metric, combined=set(chosen))
    present = [e for e in all_ests if e.name in metrics]
    combined_over = [e.name for e in shared_metrics([e for e in present if e.name in chosen])]
    judges = agreeing_judges(present)
    table = pd.concat([estimate_rows(e, names, ci) for e in all_ests], ignore_index=True)
    agreement, judge_ranks = judge_agreement(judges, images, table, ci)
    stability = stability_table(present, design, combined_over, n_splits=n_splits, seed=seed, ci=ci)
    moved = (last_model_drift(scores, models, metrics, made_with, all_ests, lora_metric=lora_metric,
                              combined=set(chosen), reference=reference) if drift else
             pd.DataFrame(columns=list(DRIFT_COLUMNS)))
    meta = {
        "n_boot": n_boot, "seed": seed, "ci": ci, "std_ddof": STD_DDOF, "excluding_flags": sorted(EXCLUDING_FLAGS),
        "directions": {e.name: e.higher_is_better for e in all_ests}, "combined_over": combined_over,
        "combined_chosen": [e.name for e in present if e.name in chosen],
        "agreement_judges": [e.name for e in judges],
        "metric_tasks": {e.name: metric_task(e.name, metrics[e.name]) for e in present}, "lora_metric": lora_metric,
        "raw_metric": raw_metric, "good_threshold": good_threshold, "n_units": int(len(design.unit_stratum)),
        "standardization": "pool" if reference is None else "reference", "n_splits": n_splits,
        "multiple_comparisons": "holm", "drift_left_out": names[-1] if drift and len(names) >= 2 else None,
    }
    protocols = model_protocols(models)
    if set(protocols.values()) != {ALL_POOL}:  # a review of v1-protocol models only keeps its meta's bytes
        meta["protocols"] = protocols
    return Standardized(
        images=images, scores=table,
        pairwise=pd.concat([pairwise_rows(e, names, ci) for e in all_ests], ignore_index=True),
        degenerate=degenerate, raw=raw_table(images, names, [e.name for e in present], raw_metric, good_threshold),
        agreement=agreement, judge_ranks=judge_ranks, stability=stability, drift=moved, meta=meta)
