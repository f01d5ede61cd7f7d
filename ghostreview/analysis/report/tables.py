"""Leaderboard tables: one row per model, written as Markdown, CSV, JSON, plus a DVC ``metrics.json``.

Leaderboard columns (CSV/JSON), models sorted by combined rank:
``rank, model, title, family, autov2, random_weights`` (``title``: the model's display name from params, "" when it
has none), then for each scored metric ``M`` (registered metrics, ``loraloss_notm``, ``combined``):
``M, M_lo, M_hi, M_rank, M_rank_lo, M_rank_hi`` (natural sign: lower is better for losses; ``combined`` is oriented,
higher is better), then ``<raw>_mean, <raw>_std, <raw>_good_rate`` (raw LAION aesthetic over unflagged general
images, std with ddof=0, share >= threshold) and ``n_flagged_images``.
``rank`` is the combined rank.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import SupportsFloat, SupportsInt, cast

import numpy as np
import pandas as pd

from ghostreview.analysis.report.display import Shown, losses, scored_metrics, shown_metrics
from ghostreview.analysis.standardize import COMBINED, Standardized, parse_flags
from ghostreview.scoring.metric import MetricInfo

LORA_FLAGS = ("lora_unsupported", "lora_incompatible", "lora_partial")
RAW_SUMMARY = ("_mean", "_good_rate")  # the raw metric's columns the plain-text summary shows


def as_bool(value: object) -> bool:
    """``random_weights`` cell -> bool; accepts bools and the strings a CSV round trip produces."""
    if isinstance(value, str):
        if value.strip().lower() not in {"true", "false", "1", "0", ""}:
            raise ValueError(f"random_weights={value!r}: expected true/false")
        return value.strip().lower() in {"true", "1"}
    return bool(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) else False


def metric_columns(result: Standardized) -> pd.DataFrame:
    """Wide table indexed by model: ``M, M_lo, M_hi, M_rank, M_rank_lo, M_rank_hi`` for every scored metric."""
    s = result.scores.set_index(["model", "metric"])
    parts = []
    for m in scored_metrics(result):
        columns = ["score", "lo", "hi", "rank", "rank_lo", "rank_hi"]
        part = s.xs(m, level="metric")[columns]
        parts.append(part.rename(columns={c: m if c == "score" else f"{m}_{c}" for c in columns}))
    return pd.concat(parts, axis=1)


def flagged_images(result: Standardized) -> pd.DataFrame:
    """One row per distinct image with any flag: model, task, item, seed, image_hash, flags."""
    rows = result.images[result.images["flags"].map(lambda f: bool(parse_flags(f)))]
    cols = ["model", "task", "item", "seed", "image_hash", "flags"]
    return rows[cols].drop_duplicates(["model", "image_hash"]).sort_values(cols[:4]).reset_index(drop=True)


def lora_problems(result: Standardized) -> pd.DataFrame:
    """Distinct (model, LoRA item, status) pairs flagged unsupported or incompatible, with the image count."""
    imgs = flagged_images(result)
    imgs = imgs.assign(status=imgs["flags"].map(lambda f: ";".join(sorted(parse_flags(f) & set(LORA_FLAGS)))))
    imgs = imgs[imgs["status"] != ""]
    out = imgs.groupby(["model", "item", "status"], sort=True).size().rename("n_images").reset_index()
    return out.rename(columns={"item": "lora"})


def leaderboard_frame(result: Standardized, models: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard (columns in the module docstring), sorted by combined rank then model name."""
    info = models.set_index(models["model"].astype(str))
    wide = metric_columns(result)
    raw_metric = result.meta.get("raw_metric", "aesthetic")
    raw = result.raw.set_index("model")[["mean", "std", "good_rate"]].add_prefix(f"{raw_metric}_")
    n_flagged = flagged_images(result).groupby("model").size()
    board = pd.DataFrame(index=wide.index)
    board["title"] = info.get("title", pd.Series(dtype=str)).reindex(board.index).fillna("").astype(str)
    board["family"] = info["family"].reindex(board.index).astype(str)
    board["autov2"] = info.get("autov2", pd.Series(dtype=str)).reindex(board.index).fillna("").astype(str)
    board["random_weights"] = [as_bool(v) for v in info.get("random_weights", pd.Series(dtype=object))
                               .reindex(board.index)]
    board = board.join(wide).join(raw)
    board["n_flagged_images"] = n_flagged.reindex(board.index).fillna(0).astype(int)
    ranks = [c for c in board.columns if c.endswith(("_rank", "_rank_lo", "_rank_hi"))]
    board[ranks] = board[ranks].astype("Int64")
    board.insert(0, "rank", board[f"{COMBINED}_rank"])
    board = board.rename_axis("model").reset_index()
    board = board[["rank"] + [c for c in board.columns if c != "rank"]]
    return board.sort_values(["rank", "model"], na_position="last").reset_index(drop=True)


def finite_or_none(value: object) -> object:
    """NaN/inf -> None (JSON null); numpy scalars -> Python scalars; integral ranks stay ints."""
    if value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def board_records(board: pd.DataFrame) -> list[dict]:
    """Leaderboard rows as JSON-safe dicts."""
    return [{k: finite_or_none(v) for k, v in rec.items()} for rec in board.to_dict(orient="records")]


def metrics_json(board: pd.DataFrame, metrics: list[str]) -> dict[str, dict[str, object]]:
    """``{model: {metric: score, ..., "rank": combined rank}}`` for ``dvc metrics show`` / ``dvc exp show``."""
    out: dict[str, dict[str, object]] = {}
    for rec in board_records(board):
        entry = {m: rec[m] for m in metrics}
        entry["rank"] = None if rec["rank"] is None else int(rec["rank"])
        out[str(rec["model"])] = entry
    return out


def md_cell(value: object) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, newlines flattened."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def fmt(x: object, digits: int = 3) -> str:
    """A number with ``digits`` decimals; missing (None, NaN, inf) -> an em dash."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{float(cast(SupportsFloat, x)):.{digits}f}"


def fmt_rank(x: object) -> str:
    """A rank as an integer; missing (None, pd.NA, NaN) -> an em dash."""
    if x is None or x is pd.NA or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return str(int(cast(SupportsInt, x)))


def score_cell(rec: Mapping[str, object], m: str) -> str:
    """``0.123 [-0.050, 0.300] #2 (1–3)``: score, interval, rank and rank interval."""
    return (f"{fmt(rec[m])} [{fmt(rec[f'{m}_lo'])}, {fmt(rec[f'{m}_hi'])}] #{fmt_rank(rec[f'{m}_rank'])} "
            f"({fmt_rank(rec[f'{m}_rank_lo'])}–{fmt_rank(rec[f'{m}_rank_hi'])})")


def demo_warning(board: pd.DataFrame) -> str | None:
    """The warning line when any model has random weights, else None."""
    demo = board.loc[board["random_weights"], "model"].tolist()
    if not demo:
        return None
    names = ", ".join(str(m) for m in demo)
    return (f"DEMO / RANDOM WEIGHTS: {names} have random weights. Their images are noise and these numbers say "
            f"nothing about any real checkpoint.")


def md_table(header: list[str], rows: list[list[object]]) -> list[str]:
    """Markdown table lines (every cell escaped)."""
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]


def benchmark_line(meta: dict) -> str:
    """"Benchmark: <name> <version>, digest <first 12 hex>" from the standardize meta ("" when not recorded)."""
    b = meta.get("benchmark")
    return f"Benchmark: {b['name']} {b['version']}, digest {b['digest'][:12]}." if b else ""


def interval_note(meta: dict) -> str:
    """What a bracketed interval is: level, B and seed from the standardize meta, the unit drawn, what it is about."""
    return (f"{100 * meta.get('ci', 0.95):g}% paired bootstrap interval (B={meta.get('n_boot')}, seed "
            f"{meta.get('seed')}) that resamples benchmark items, each prompt, style or LoRA with all its seeds: it is "
            "about the population of items of this kind, where a model's score would lie over many more prompts "
            "(styles, LoRAs) like these, seed noise included")


def direction_note(shown: Mapping[str, Shown], metrics: list[str]) -> str:
    """"Higher is better for A, B; lower is better for C. Combined = ... (higher is better)." over ``metrics``."""
    higher = [shown[m].label for m in metrics if shown[m].higher_is_better]
    lower = [s.label for s in losses(shown, metrics)]
    combined = shown[COMBINED]
    return (f"Higher is better for {', '.join(higher)}; lower is better for {', '.join(lower) or 'none'}. "
            f"{combined.label} = mean of the scores with losses sign-flipped ({combined.better} is better).")


def leaderboard_markdown(board: pd.DataFrame, result: Standardized, shown: Mapping[str, Shown]) -> str:
    """The Markdown report: warning first (bold), the leaderboard, LoRA problems, flagged images, degenerate groups.

    shown: ``shown_metrics(result, registry)``, every scored metric's label and direction."""
    meta, raw = result.meta, result.meta.get("raw_metric", "aesthetic")
    metrics = [m for m in shown if m != COMBINED]
    lines = [f"**{w}**\n" for w in [demo_warning(board)] if w]
    lines += ["# GhostReview leaderboard", ""] + ([benchmark_line(meta), ""] if benchmark_line(meta) else [])
    lines += [f"Scores are mean z-scores per model (z within each benchmark item across all models' images). "
              f"Brackets: {interval_note(meta)}; `#r (lo–hi)`: rank and its interval. "
              + direction_note(shown, metrics), ""]
    header = ["#", "Model", "Title", "Family", "AutoV2", shown[COMBINED].label] + [shown[m].label for m in metrics]
    header += [f"Raw {raw} mean ± std", f"Good rate (≥ {meta.get('good_threshold')})", "Flagged images"]
    rows = [[fmt_rank(r["rank"]), r["model"], r["title"], r["family"], r["autov2"], score_cell(r, COMBINED)]
            + [score_cell(r, m) for m in metrics]
            + [f"{fmt(r[f'{raw}_mean'])} ± {fmt(r[f'{raw}_std'])}", fmt(r[f"{raw}_good_rate"]), r["n_flagged_images"]]
            for r in board_records(board)]
    lines += md_table(header, rows)
    lines += section("Unsupported / incompatible LoRA pairs", lora_problems(result))
    lines += section("Flagged images", flagged_images(result))
    lines += section("Degenerate groups (excluded from z)", result.degenerate)
    return "\n".join(lines) + "\n"


def section(title: str, table: pd.DataFrame) -> list[str]:
    """A Markdown section listing ``table`` (or saying it is empty)."""
    head = ["", f"## {title}", ""]
    if table.empty:
        return head + ["None."]
    return head + md_table(list(table.columns), table.astype(object).values.tolist())


def summary_columns(columns: Sequence[str]) -> list[str]:
    """The leaderboard columns the plain-text summary shows, from a leaderboard's own columns: rank, model, family,
    combined, the other scored metrics (each column ``M`` with an ``M_rank``) and the raw metric's mean and good rate.
    """
    have = set(columns)
    scored = [c for c in columns if f"{c}_rank" in have and c != COMBINED]
    raw = [c for c in columns if c.endswith(RAW_SUMMARY)]
    return [c for c in ["rank", "model", "family", COMBINED] if c in have] + scored + raw


def write_tables(result: Standardized, models: pd.DataFrame, out_dir: str | Path, *,
                 metrics: Mapping[str, MetricInfo]) -> dict[str, Path]:
    """Write leaderboard.md/.csv/.json and metrics.json into ``out_dir``; returns {name: path}.

    metrics: the registry (name -> MetricInfo) the scores were standardized with; labels and directions come from it.
    """
    shown = shown_metrics(result, metrics)  # a registry that disagrees with the scores fails before any output
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard_frame(result, models)
    paths = {n: out / n for n in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "metrics.json")}
    paths["leaderboard.md"].write_text(leaderboard_markdown(board, result, shown), encoding="utf-8")
    board.to_csv(paths["leaderboard.csv"], index=False)

    def dump(obj: object) -> str:
        return json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False) + "\n"

    paths["leaderboard.json"].write_text(dump(board_records(board)), encoding="utf-8")
    paths["metrics.json"].write_text(dump(metrics_json(board, scored_metrics(result))), encoding="utf-8")
    return paths
