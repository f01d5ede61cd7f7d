"""Leaderboard tables: one row per model, written as Markdown, CSV and JSON (``metrics.py`` writes metrics.json).

Leaderboard columns (CSV, and the JSON's ``models`` records), models sorted by combined rank:
``rank, model, title, family, autov2, random_weights`` (``title``: the model's display name from params, "" when it
has none), then for each scored metric ``M`` (registered metrics, ``loraloss_notm``, ``combined``):
``M, M_lo, M_hi, M_rank, M_rank_lo, M_rank_hi`` (natural sign: lower is better for losses; ``combined`` is oriented,
higher is better, and averages the metrics of ``meta["combined_over"]``), then the raw values (standardize's ``raw``
table): ``<raw>_mean, <raw>_std, <raw>_good_rate`` (raw LAION aesthetic over unflagged general images, std with
ddof=0, share >= threshold), ``<metric>_mean`` for every other registered metric, and ``n_flagged_images``.
``rank`` is the combined rank. CSV headers are these machine names; the directions are in leaderboard.json::

    {"metrics": {name: {"label", "better", "mark", "registered", "in_combined", "raw_mean"}},
     "combined_over": [...], "ci", "raw_metric", "good_threshold", "models": [records],
     "combined_chosen": [...], "agreement": {...}, "reference": {"name", "anchors", "anchors_reviewed"},
     "protocols": {model: pool}}

``metrics`` holds every scored metric in column order, combined first (``better``: "higher"/"lower"; ``mark``: "↑"
or "↓"; ``registered``: false for the derived combined and NoTM scores; ``raw_mean``: the column of its raw mean, null
for derived metrics), so that ``print_leaderboard`` shows labels and directions without importing the registry.
``combined_chosen``: the judges the combined score may average (``standardize.combined``); ``combined_over`` those of
them every model has. ``agreement``: the judges' agreement (``agreement.agreement_json``: judges, labels, ``absent``,
judge x judge matrices ``kendall_tau``, ``tau_lo``, ``tau_hi``, ``n_models``, ``spearman``, ``n_images``, and each
model's best and worst rank in ``ranks``); the Markdown ends with it ("Judge agreement"). ``reference``: what the
z-scores are relative to (``standardize.reference``: ``pool``, or a frozen reference set's name, its anchor models
and the reviewed models that are anchors of it, marked † in the tables). ``protocols`` (only when the models drew
more than one base protocol, issue 17): model -> its z pool, also named after the model in the tables ("[pony]").
These keys come last, after ``models``: a review's other keys keep their bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import SupportsFloat, SupportsInt, cast

import numpy as np
import pandas as pd

from ghostreview.analysis.reference import POOL
from ghostreview.analysis.report import agreement
from ghostreview.analysis.report.display import Shown, losses, scored_metrics, shown_metrics
from ghostreview.analysis.standardize import ALL_POOL, COMBINED, Standardized, flag_mask, parse_flags
from ghostreview.scoring.metric import MetricInfo
from ghostreview.util.atomic import write_text_atomic

LORA_FLAGS = ("lora_unsupported", "lora_incompatible", "lora_partial")


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
    rows = result.images[flag_mask(result.images["flags"], bool)]
    cols = ["model", "task", "item", "seed", "image_hash", "flags"]
    return rows[cols].drop_duplicates(["model", "image_hash"]).sort_values(cols[:4]).reset_index(drop=True)


def lora_problems(result: Standardized) -> pd.DataFrame:
    """Distinct (model, LoRA item, status) pairs flagged unsupported or incompatible, with the image count."""
    imgs = flagged_images(result)
    imgs = imgs.assign(status=imgs["flags"].map(lambda f: ";".join(sorted(parse_flags(f) & set(LORA_FLAGS)))))
    imgs = imgs[imgs["status"] != ""]
    out = imgs.groupby(["model", "item", "status"], sort=True).size().rename("n_images").reset_index()
    return out.rename(columns={"item": "lora"})


def raw_columns(result: Standardized) -> pd.DataFrame:
    """Raw columns indexed by model: ``<raw>_mean, <raw>_std, <raw>_good_rate``, then ``<metric>_mean`` for the
    other registered metrics (standardize's ``raw`` table, in its metric order)."""
    raw_metric = result.meta.get("raw_metric", "aesthetic")
    parts = []
    for metric, t in result.raw.groupby("metric", sort=False):
        cols = ["mean", "std", "good_rate"] if metric == raw_metric else ["mean"]
        parts.append(t.set_index("model")[cols].add_prefix(f"{metric}_"))
    return pd.concat(parts, axis=1) if parts else pd.DataFrame()


def leaderboard_frame(result: Standardized, models: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard (columns in the module docstring), sorted by combined rank then model name."""
    info = models.set_index(models["model"].astype(str))
    wide = metric_columns(result)
    n_flagged = flagged_images(result).groupby("model").size()
    board = pd.DataFrame(index=wide.index)
    board["title"] = info.get("title", pd.Series(dtype=str)).reindex(board.index).fillna("").astype(str)
    board["family"] = info["family"].reindex(board.index).astype(str)
    board["autov2"] = info.get("autov2", pd.Series(dtype=str)).reindex(board.index).fillna("").astype(str)
    board["random_weights"] = [as_bool(v) for v in info.get("random_weights", pd.Series(dtype=object))
                               .reindex(board.index)]
    board = board.join(wide).join(raw_columns(result))
    board["n_flagged_images"] = n_flagged.reindex(board.index).fillna(0).astype(int)
    ranks = [c for c in board.columns if c.endswith(("_rank", "_rank_lo", "_rank_hi"))]
    board[ranks] = board[ranks].astype("Int64")
    board.insert(0, "rank", board[f"{COMBINED}_rank"])
    board = board.rename_axis("model").reset_index()
    board = board[["rank"] + [c for c in board.columns if c != "rank"]]
    return board.sort_values(["rank", "model"], na_position="last").reset_index(drop=True)


def combined_chosen(meta: Mapping[str, object]) -> list[str] | None:
    """The scored judges the combined score may average (``meta["combined_chosen"]``); None when standardize did not
    record it (every registered metric could then be averaged)."""
    chosen = meta.get("combined_chosen")
    return None if chosen is None else [str(m) for m in chosen]  # type: ignore[attr-defined]


def combined_over(meta: Mapping[str, object]) -> list[str]:
    """The registered metrics the combined score averages (``meta["combined_over"]``, written by standardize)."""
    over = meta.get("combined_over")
    if not isinstance(over, list):
        raise ValueError("standardize meta has no combined_over list: written by an older standardize; rerun it "
                         "(dvc repro standardize)")
    return [str(m) for m in over]


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


def leaderboard_json(board: pd.DataFrame, result: Standardized, shown: Mapping[str, Shown]) -> dict[str, object]:
    """The leaderboard.json document (layout in the module docstring)."""
    over, meta = combined_over(result.meta), result.meta
    raw_cols, registered = set(board.columns), set(meta.get("metric_tasks", {}))
    entries = {name: {"label": s.label, "better": s.better, "mark": s.arrow, "registered": name in registered,
                      "in_combined": name in over, "raw_mean": f"{name}_mean" if f"{name}_mean" in raw_cols else None}
               for name, s in ordered(shown).items()}
    order = board["model"].astype(str).tolist()
    return {"metrics": entries, "combined_over": over, "ci": meta.get("ci"), "raw_metric": meta.get("raw_metric"),
            "good_threshold": meta.get("good_threshold"), "models": board_records(board),
            "combined_chosen": combined_chosen(meta), "agreement": agreement.agreement_json(result, shown, order),
            "reference": reference_of(meta)} | ({"protocols": protocols_of(meta)} if protocols_of(meta) else {})


def protocols_of(meta: Mapping[str, object]) -> dict[str, str]:
    """Each model's protocol pool (standardize's meta["protocols"], issue 17); empty when every model drew v1's."""
    protocols = meta.get("protocols")
    return {str(k): str(v) for k, v in protocols.items()} if isinstance(protocols, Mapping) else {}


def protocol_line(protocols: Mapping[str, str]) -> str:
    """Which models share a z pool, and that a rank across pools is no like-for-like comparison ("": one pool)."""
    if not protocols:
        return ""
    pools: dict[str, list[str]] = {}
    for model, pool in protocols.items():
        pools.setdefault(pool, []).append(model)
    named = "; ".join(f"{'v1 (sd15, sdxl)' if p == ALL_POOL else p}: {', '.join(ms)}" for p, ms in pools.items())
    return (f"Pools: each model is z-scored only among the models of its base's protocol (the prompts and settings "
            f"bases.yaml gives it; LoRA items also per family): {named}. A rank across pools compares each model's "
            f"standing within its own pool, not images drawn alike: compare models within a pool.")


def pool_label(model: object, protocols: Mapping[str, str]) -> str:
    """`` [pool]`` after a model outside the v1 pool when the review has several pools ("" otherwise)."""
    pool = protocols.get(str(model), ALL_POOL)
    return f" [{pool}]" if protocols and pool != ALL_POOL else ""


def reference_of(meta: Mapping[str, object]) -> dict[str, object]:
    """Standardize's record of the reference (``reference.review_meta``): name, anchor models, anchors reviewed."""
    ref = meta.get("reference")
    ref = ref if isinstance(ref, Mapping) else {}
    out: dict[str, object] = {
        "name": str(ref.get("name", POOL)),
        "anchors": [str(a.get("model")) for a in ref.get("anchors", []) if isinstance(a, Mapping)],
        "anchors_reviewed": [str(m) for m in ref.get("anchors_reviewed", [])]}
    outside = [str(m) for m in ref.get("outside_pools", [])]  # issue 17: only when some model is outside
    return out | ({"outside_pools": outside} if outside else {})


ANCHOR_MARK = "†"  # after the name of a model that is an anchor of the reference it is scored against


def reference_line(ref: Mapping[str, object]) -> str:
    """One sentence: what the z-scores are relative to, and what adding a model does to them (``reference_of``)."""
    if ref["name"] == POOL:
        return ("Standardization: pool: every z-score is relative to the models reviewed here, so adding a model "
                "moves every other model's score (standardize.reference names a frozen set that does not).")
    anchors = cast(list, ref["anchors"])
    marked = (f" {ANCHOR_MARK}: an anchor of this reference, scored partly against itself."
              if ref["anchors_reviewed"] else "")
    return (f"Standardization: reference set {ref['name']} (anchors: {', '.join(anchors)}): every z-score is "
            f"relative to the anchors' images of each item, so adding a model changes no other model's score."
            + marked + outside_note(ref))


def outside_note(ref: Mapping[str, object]) -> str:
    """Models of a base's pool the anchors never had (issue 17): no z, so no score there ("" when none)."""
    outside = cast(list, ref.get("outside_pools", []))
    return (f" Outside the anchors' pools (another base's protocol; no score against this reference): "
            f"{', '.join(outside)}." if outside else "")


def model_label(model: object, ref: Mapping[str, object]) -> str:
    """The model's key, marked when it is an anchor of the reference it is scored against."""
    return f"{model} {ANCHOR_MARK}" if str(model) in cast(list, ref["anchors_reviewed"]) else str(model)


def ordered(shown: Mapping[str, Shown]) -> dict[str, Shown]:
    """``shown`` with the combined score first, then the others in standardize's order: the tables' column order."""
    return {COMBINED: shown[COMBINED], **{m: s for m, s in shown.items() if m != COMBINED}}


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
    """"Higher is better for A, B; lower is better for C." over ``metrics``."""
    higher = [shown[m].label for m in metrics if shown[m].higher_is_better]
    lower = [s.label for s in losses(shown, metrics)]
    return f"Higher is better for {', '.join(higher)}; lower is better for {', '.join(lower) or 'none'}."


def combined_note(board: pd.DataFrame, shown: Mapping[str, Shown], over: list[str], registered: list[str],
                  chosen: list[str] | None = None) -> str:
    """What the combined score averages, which ``registered`` metrics it leaves out because some model lacks them
    and which because they are not ``chosen`` for it (None: all are; the NoTM variant is never averaged and is not
    listed). board: the leaderboard frame."""
    combined = shown[COMBINED]
    if not over:
        return (f"{combined.label}: no metric has a score for every model, so there is no combined score and no "
                "combined rank; compare the models per metric.")
    note = (f"{combined.label} = mean of {', '.join(shown[m].label for m in over)}, the metrics every model has a "
            f"score on, with losses sign-flipped ({combined.better} is better).")
    left_out, unchosen = [], []
    for m in (m for m in shown if m in registered and m in board.columns and m not in over):
        if chosen is not None and m not in chosen:
            unchosen.append(shown[m].label)
            continue
        lacking = board.loc[board[m].isna(), "model"].astype(str).tolist()
        left_out.append(f"{shown[m].label} (no score for {', '.join(lacking) or 'any model'})")
    if left_out:
        note += (" Not in it, because some model has no score there (a combined score over different metrics would "
                 f"not be comparable): {'; '.join(left_out)}.")
    if unchosen:
        note += f" Not chosen for it (they keep their own columns and ranks): {', '.join(unchosen)}."
    return note


def raw_headers(shown: Mapping[str, Shown], board: pd.DataFrame, raw: str, threshold: object) -> list[tuple[str, str]]:
    """(header, column) of the raw-value columns the Markdown shows, in the board's order (raw metric first)."""
    out = []
    for m, s in shown.items():
        if f"{m}_mean" not in board.columns:
            continue
        if m == raw:
            out += [(f"Raw {s.label} mean ± std {s.arrow}", f"{m}_mean"),
                    (f"Good rate (≥ {threshold}) {s.arrow}", f"{m}_good_rate")]
        else:
            out.append((f"Raw {s.label} mean {s.arrow}", f"{m}_mean"))
    return out


def leaderboard_markdown(board: pd.DataFrame, result: Standardized, shown: Mapping[str, Shown]) -> str:
    """The Markdown report: warning first (bold), the leaderboard, LoRA problems, flagged images, degenerate groups.

    shown: ``shown_metrics(result, registry)``, every scored metric's label and direction."""
    meta, raw = result.meta, result.meta.get("raw_metric", "aesthetic")
    metrics = [m for m in shown if m != COMBINED]
    registered = list(meta.get("metric_tasks", {}))
    lines = [f"**{w}**\n" for w in [demo_warning(board)] if w]
    lines += ["# GhostReview leaderboard", ""] + ([benchmark_line(meta), ""] if benchmark_line(meta) else [])
    ref = reference_of(meta)
    within = ("across all models' images" if ref["name"] == POOL else
              f"against the anchors of reference set {ref['name']}")
    lines += [reference_line(ref), ""]
    protocols = protocols_of(meta)
    lines += [protocol_line(protocols), ""] if protocols else []
    lines += [f"Scores are mean z-scores per model (z within each benchmark item {within}). "
              f"Brackets: {interval_note(meta)}; `#r (lo–hi)`: rank and its interval. "
              f"↑: higher is better, ↓: lower is better. {direction_note(shown, metrics)} "
              f"{combined_note(board, shown, combined_over(meta), registered, combined_chosen(meta))} "
              "Raw columns: means of the per-image values "
              "(unflagged images), which move when every model improves, where z-scores do not.", ""]
    raws = raw_headers(shown, board, raw, meta.get("good_threshold"))
    header = ["#", "Model", "Title", "Family", "AutoV2"] + [s.heading for s in ordered(shown).values()]
    header += [h for h, _ in raws] + ["Flagged images"]
    rows = []
    for r in board_records(board):
        cells = [fmt_rank(r["rank"]), model_label(r["model"], ref) + pool_label(r["model"], protocols), r["title"],
                 r["family"], r["autov2"]]
        cells += [score_cell(r, m) for m in ordered(shown)]
        for _, col in raws:
            cells.append(f"{fmt(r[col])} ± {fmt(r[f'{raw}_std'])}" if col == f"{raw}_mean" else fmt(r[col]))
        rows.append(cells + [r["n_flagged_images"]])
    lines += md_table(header, rows)
    lines += section("Unsupported / incompatible LoRA pairs", lora_problems(result))
    lines += section("Flagged images", flagged_images(result))
    lines += section("Degenerate groups (excluded from z)", result.degenerate)
    lines += agreement_markdown(result, shown, board["model"].astype(str).tolist())
    return "\n".join(lines) + "\n"


def tau_text(r: Mapping[str, object]) -> str:
    """``0.33 [-1.00, 1.00], 3 models``: a pair's Kendall's tau, its interval and the models both judges rank."""
    return f"{fmt(r['kendall_tau'], 2)} [{fmt(r['tau_lo'], 2)}, {fmt(r['tau_hi'], 2)}], {r['n_models']} models"


def rho_text(r: Mapping[str, object]) -> str:
    """``0.12, 48 images``: a pair's per-image Spearman's rho and the images it is over ("no shared image")."""
    return f"{fmt(r['spearman'], 2)}, {r['n_images']} images" if r["n_images"] else "no shared image"


def agreement_markdown(result: Standardized, shown: Mapping[str, Shown], order: list[str]) -> list[str]:
    """The "Judge agreement" section (``judges``): the note, tau and rho matrices, each model's best and worst rank
    over the judges, models in ``order``; or why there is none."""
    head = ["", "## Judge agreement", ""]
    reason = agreement.absent(result, shown)
    if reason is not None:
        return head + [reason]
    names, cells = agreement.judges(result), agreement.pair_cells(result)
    labels = [shown[n].label for n in names]

    def matrix(title: str, text: Callable[[Mapping[str, object]], str]) -> list[str]:
        rows: list[list[object]] = [[label, *("1" if a == b else text(cells[(a, b)]) for b in names)]
                                    for a, label in zip(names, labels)]
        return md_table([title, *labels], rows) + [""]

    lines = head + [agreement.note(result), ""] + matrix("Kendall's tau [interval]", tau_text)
    lines += matrix("Spearman's rho (images)", rho_text)
    rows: list[list[object]] = []
    for r in agreement.rank_records(result, order):
        best_by, worst_by = agreement.moved(r, shown)
        rows.append([r["model"], fmt_rank(r["best_rank"]), fmt_rank(r["worst_rank"]), best_by, worst_by])
    return lines + md_table(["Model", "Best rank", "Worst rank", "Best by", "Worst by"], rows)


def section(title: str, table: pd.DataFrame) -> list[str]:
    """A Markdown section listing ``table`` (or saying it is empty)."""
    head = ["", f"## {title}", ""]
    if table.empty:
        return head + ["None."]
    return head + md_table(list(table.columns), table.astype(object).values.tolist())


def dump_json(obj: object) -> str:
    """JSON text as the report writes it: 2-space indent, no NaN (null instead), UTF-8 labels kept."""
    return json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write_tables(result: Standardized, models: pd.DataFrame, out_dir: str | Path, *,
                 metrics: Mapping[str, MetricInfo]) -> dict[str, Path]:
    """Write leaderboard.md/.csv/.json into ``out_dir``; returns {name: path}.

    metrics: the registry (name -> MetricInfo) the scores were standardized with; labels and directions come from it.
    """
    shown = shown_metrics(result, metrics)  # a registry that disagrees with the scores fails before any output
    combined_over(result.meta)  # and so does a standardize output without the combined score's metric list
    out = Path(out_dir)
    board = leaderboard_frame(result, models)
    paths = {n: out / n for n in ("leaderboard.md", "leaderboard.csv", "leaderboard.json")}
    write_text_atomic(paths["leaderboard.md"], leaderboard_markdown(board, result, shown))
    write_text_atomic(paths["leaderboard.csv"], board.to_csv(index=False))
    write_text_atomic(paths["leaderboard.json"], dump_json(leaderboard_json(board, result, shown)))
    return paths
