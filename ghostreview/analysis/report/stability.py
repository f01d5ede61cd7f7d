"""What the report shows of how far to trust the order and what a better one costs: the one owner of the
"Stability" section of index.html and of ``reports/stability.json`` (the second file ``dvc metrics`` reads).

From standardize's output: the standardization (pool or a named reference set, and the reviewed models that are
anchors of it: their scores are partly relative to themselves), split-half Kendall tau per metric and combined
(``stability``), how each model's score moved when the last model was added (``drift``, leave-one-out: the review
scored again without the last model; no earlier state needed), the Holm-corrected "A beats B" claims (``pairwise``)
and the planner's answer (``planning``) for the review's own protocol.

stability.json (two levels, as ``dvc metrics show`` and ``dvc exp show`` lay them out)::

    {"<metric>" | "combined": {"tau", "tau_lo", "tau_hi"}, ..., "_claims": {"<metric>_surviving", ...}}
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ghostreview.analysis.planning import Components, half_width, plan_table, review_components
from ghostreview.analysis.report.display import Shown
from ghostreview.analysis.report.metrics import number
from ghostreview.analysis.standardize import COMBINED, Standardized
from ghostreview.util.atomic import write_text_atomic

# The planner's targets in the report (``ghostreview plan`` takes others): a model's score within +-0.05 z, and an
# 80% chance of separating two models 0.2 z apart (about a tenth of the spread of the demo's scores)
TARGET_HALF_WIDTH, DIFFERENCE, TARGET_POWER = 0.05, 0.2, 0.8
CLAIMS_SHOWN = 40  # rows of the combined claims table
CLAIMS = "_claims"  # stability.json's claims group: "_" so that no metric name can take it


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 3) -> str:
    """A number with ``digits`` decimals (an integer as it is), "—" when missing."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return "—"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.{digits}f}" if math.isfinite(float(value)) else "—"


def table_html(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    """An escaped table; "None." when there are no rows."""
    if not rows:
        return f'<p id="{esc(table_id)}">None.</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{esc(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def label(shown: Mapping[str, Shown], metric: str) -> str:
    return shown[metric].heading if metric in shown else metric


def uncorrected(result: Standardized) -> pd.Series:
    """[pairwise rows] bool: the claim "a beats b" before correction: a ranks ahead of b and p <= 1 - ci."""
    pw = result.pairwise
    if "claim" not in pw.columns:
        raise ValueError("standardize's pairwise table has no claim column: written by an older standardize; rerun "
                         "it (dvc repro standardize)")
    rank = result.scores.set_index(["metric", "model"])["rank"]
    rank_a = rank.reindex(pd.MultiIndex.from_arrays([pw["metric"], pw["model_a"]])).to_numpy()
    rank_b = rank.reindex(pd.MultiIndex.from_arrays([pw["metric"], pw["model_b"]])).to_numpy()
    alpha = 1 - float(result.meta.get("ci", 0.95))
    return pd.Series((rank_a < rank_b) & (pw["p_value"] <= alpha).to_numpy(), index=pw.index)


def claims_counts(result: Standardized) -> pd.DataFrame:
    """Per metric: pairs compared (one hypothesis per unordered pair), claims before correction and surviving Holm."""
    pw = result.pairwise.assign(raw=uncorrected(result), tested=result.pairwise["p_value"].notna())
    out = pw.groupby("metric", sort=False).agg(pairs=("tested", "sum"), uncorrected=("raw", "sum"),
                                               surviving=("claim", "sum"))
    out["pairs"] //= 2  # each unordered pair has two rows
    return out.reset_index()


def stability_json(result: Standardized) -> dict[str, dict[str, float | int | None]]:
    """The stability.json document (module docstring)."""
    doc: dict[str, dict[str, float | int | None]] = {}
    for r in result.stability.to_dict("records"):
        doc[str(r["metric"])] = {"tau": number(r["tau_median"]), "tau_lo": number(r["tau_lo"]),
                                 "tau_hi": number(r["tau_hi"])}
    doc[CLAIMS] = {f"{r['metric']}_surviving": int(r["surviving"]) for r in claims_counts(result).to_dict("records")}
    return doc


def write_stability_json(result: Standardized, path: str | Path) -> Path:
    """Write ``stability_json`` to ``path`` atomically (2-space indent, no NaN: missing values are null)."""
    import json

    return write_text_atomic(Path(path), json.dumps(stability_json(result), indent=2, allow_nan=False) + "\n")


def mode_html(meta: Mapping[str, object]) -> str:
    """Which standardization the scores use, its anchors, and the reviewed models that are anchors."""
    ref = meta.get("reference")
    if not isinstance(ref, dict) or ref.get("name", "pool") == "pool":
        return ("<p>Standardization: <b>pool</b>. Every z-score is relative to the models reviewed here, so adding "
                "a model moves every other model's score (the drift table below shows by how much). Name a reference "
                "set (<code>standardize.reference</code>) to keep scores fixed as the leaderboard grows.</p>")
    anchors = ", ".join(str(a.get("model")) for a in ref.get("anchors", []))
    mine = ref.get("anchors_reviewed") or []
    marked = (f" Marked: {', '.join(map(str, mine))} {'is an anchor' if len(mine) == 1 else 'are anchors'} of this "
              "reference, so its score is partly relative to itself." if mine else "")
    return (f"<p>Standardization: reference set <b>{esc(ref.get('name'))}</b> (anchors: {esc(anchors)}). Every "
            f"z-score is relative to the anchors' images of each item: adding a model changes no other model's "
            f"score.{esc(marked)}</p>")


def stability_rows(result: Standardized, shown: Mapping[str, Shown]) -> list[list[str]]:
    return [[label(shown, str(r["metric"])), fmt(r["tau_median"]), f"[{fmt(r['tau_lo'])}, {fmt(r['tau_hi'])}]",
             fmt(r["n_models"]), fmt(r["items_per_half"]), fmt(r["n_splits"])]
            for r in result.stability.to_dict("records")]


def drift_html(result: Standardized, shown: Mapping[str, Shown], names: Mapping[str, str]) -> str:
    """Largest absolute shift per metric when the last model was added (leave-one-out), and each model's
    combined shift."""
    d, last = result.drift, result.meta.get("drift_left_out")
    if d.empty or last is None:
        return "<p>No drift: fewer than 2 models.</p>"
    largest = d.assign(a=d["shift"].abs()).groupby("metric", sort=False)["a"].max()
    rows = [[label(shown, str(m)), fmt(v, 4)] for m, v in largest.items()]
    combined = d[d["metric"] == COMBINED]
    per_model = [[names.get(str(r["model"]), str(r["model"])), fmt(r["score_without_last"]), fmt(r["score"]),
                  fmt(r["shift"], 4)] for r in combined.to_dict("records")]
    return (f"<p>How each score moved when the last model, <b>{esc(names.get(str(last), last))}</b>, was added: "
            "from leaving it out (the review standardized again without its images), not from an earlier "
            "dvc.lock state.</p>"
            + table_html(["Metric", "Largest |shift|"], rows, "drift-largest")
            + table_html(["Model", "Combined without the last", "Combined", "Shift"], per_model, "drift-combined"))


def claims_html(result: Standardized, shown: Mapping[str, Shown], names: Mapping[str, str]) -> str:
    """Counts per metric, then the combined score's uncorrected claims, marked when they do not survive Holm."""
    alpha = 1 - float(result.meta.get("ci", 0.95))
    counts = [[label(shown, str(r["metric"])), fmt(r["pairs"]), fmt(r["uncorrected"]), fmt(r["surviving"])]
              for r in claims_counts(result).to_dict("records")]
    pw = result.pairwise[uncorrected(result) & (result.pairwise["metric"] == COMBINED)].sort_values("p_value")
    rows = [[f"{names.get(str(r['model_a']), r['model_a'])} beats {names.get(str(r['model_b']), r['model_b'])}",
             f"{float(r['p_value']):.2g}", f"{float(r['p_holm']):.2g}", "yes" if r["claim"] else "no (not after Holm)"]
            for r in pw.head(CLAIMS_SHOWN).to_dict("records")]
    return (f"<p>A claim \"A beats B\" is made when A's score is higher and the difference's p-value (normal, from "
            f"the bootstrap's spread of the difference) is at most {alpha:g}. Corrected with Holm's step-down method "
            "over each metric's pairs: it holds the chance of any false claim at that level whatever the dependence "
            "between pairs (they share models and resamples, which Benjamini-Hochberg's guarantee does not cover), "
            "and a reader of a leaderboard takes each claim on its own.</p>"
            + table_html(["Metric", "Pairs", "Claims (uncorrected)", "Surviving Holm"], counts, "claims-counts")
            + table_html(["Combined claim", "p", "p (Holm)", "Survives"], rows, "claims-combined"))


def measured_half_width(result: Standardized, metric: str) -> float:
    """Median half-width of the metric's per-model intervals in the scores table."""
    s = result.scores[result.scores["metric"] == metric]
    return float(np.nanmedian((s["hi"] - s["lo"]) / 2)) if len(s) and s["hi"].notna().any() else math.nan


def planner_html(result: Standardized, shown: Mapping[str, Shown], comps: Sequence[Components]) -> str:
    """Variance components, the half-width now (predicted vs measured) and the plan for the report's targets."""
    ci = float(result.meta.get("ci", 0.95))
    now = [[label(shown, c.metric), c.task, fmt(c.prompt, 4), fmt(c.interaction, 4), fmt(c.seed, 4),
            f"{c.n_items} x {fmt(c.n_seeds, 1)}",
            fmt(half_width(c, c.n_items, c.n_seeds, ci)) if c.n_items >= 2 else "—",
            fmt(measured_half_width(result, c.metric))] for c in comps]
    plan = plan_table(comps, target_half_width=TARGET_HALF_WIDTH, difference=DIFFERENCE, target_power=TARGET_POWER,
                      ci=ci)
    rows = [[label(shown, str(r["metric"])), fmt(r["seeds"]), fmt(r["items"]), fmt(r["items_for_half_width"]),
             fmt(r["items_for_power"]), fmt(r["half_width"]), fmt(r["power"], 2), fmt(r["images_per_model"])]
            for r in plan.to_dict("records")]
    return ("<p>Variance components of each metric's z (method of moments): item (prompt), model x item, and seed "
            "(image noise; — with one seed per item, when model x item holds it and plans for more seeds are "
            "conservative). More seeds shrink only the seed part; the model x item part needs more items. "
            f"Targets: a model's score within ±{TARGET_HALF_WIDTH} z, and a {TARGET_POWER:.0%} chance of separating "
            f"two models {DIFFERENCE} z apart (per pair). GPU time: the manifests record no per-image times; "
            "<code>ghostreview plan --seconds-per-image S</code> adds it.</p>"
            + table_html(["Metric", "Task", "Item", "Model x item", "Seed", "Items x seeds", "Half-width predicted",
                          "Half-width measured"], now, "planner-components")
            + table_html(["Metric", "Seeds", "Items", "for half-width", "for power", "Half-width", "Power",
                          "Images per model"], rows, "planner-plan"))


def stability_html(result: Standardized, shown: Mapping[str, Shown], names: Mapping[str, str]) -> str:
    """The "Stability" section's body: standardization, split-half tau, drift, claims, planner."""
    taus = table_html(["Metric", "Split-half tau (median)", "Interval over splits", "Models", "Items per half",
                       "Splits"], stability_rows(result, shown), "stability-taus")
    return (mode_html(result.meta)
            + "<h3>Split-half stability</h3><p>Kendall's tau between the model orders of two random halves of the "
            "items (each stratum halved), repeated; near 1: the order is reproducible, near 0: it is noise. A half "
            "has half the items, so the full review's order is more stable than this.</p>" + taus
            + "<h3>Drift</h3>" + drift_html(result, shown, names)
            + "<h3>Claims after correction</h3>" + claims_html(result, shown, names)
            + "<h3>Planner</h3>" + planner_html(result, shown, review_components(result)))
