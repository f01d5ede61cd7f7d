"""Report figures (PNG, matplotlib Agg canvas + seaborn, no pyplot state) and the CSVs behind them for DVC plots.

``write_plots`` writes into ``<out_dir>/plots/``; every CSV holds exactly the data its PNG draws. Raw values come from
the score table, keeping only each metric's own task (``result.meta["metric_tasks"]``) and unflagged, finite rows (the
rule standardize uses). Columns:

- ``aesthetic_distribution.csv``: model, item, seed, image_hash, value: raw LAION aesthetic of every usable general
  image (the article's per-model distribution).
- ``ranking.csv``: metric, heading, model, score, lo, hi, rank, rank_lo, rank_hi, higher_is_better: the standardize
  table, long (one row per metric and model); heading: the metric's label and direction from the registry
  ("StyleLoss: higher is better", the title of its PNG and of its panel in ``dvc plots``).
- ``style_heatmap.csv`` / ``lora_heatmap.csv``: model, item, mean, n: mean raw StyleLoss / LoRALoss per model and
  style / LoRA (pairs with no usable image are absent).
- ``clip_vs_aesthetic.csv``: model, item, seed, image_hash, aesthetic, clipscore: one row per general image with both.

``dvc.yaml``'s ``plots:`` draws the distribution, ranking and scatter CSVs with the chart templates in
``.dvc/plots/`` (``distribution``: a box per model; ``ranking``: a panel per metric, reading heading, lo and hi;
``scatter_by_model``: coloured by the model column), on the offline page ``.dvc/plots/offline.html``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ghostreview.analysis.report.display import Shown, shown_metrics
from ghostreview.analysis.report.tables import as_bool
from ghostreview.analysis.standardize import COMBINED, Standardized, excluded_mask
from ghostreview.scoring.metric import MetricInfo

RAW = "aesthetic"
CLIP = "clipscore"
# heatmap stem -> (the metric it draws, what its rows are called)
HEATMAPS = {"style_heatmap": ("styleloss", "style"), "lora_heatmap": ("loraloss", "LoRA")}


def usable_raw(scores: pd.DataFrame, result: Standardized, metric: str) -> pd.DataFrame:
    """Rows of ``metric`` on its own task, unflagged and finite: model, item, seed, image_hash, value."""
    task = result.meta.get("metric_tasks", {}).get(metric)
    rows = scores[(scores["metric"] == metric) & (scores["task"] == task)]
    rows = rows[~excluded_mask(rows["flags"].fillna(""), rows["value"])]
    out = rows[["model", "item", "seed", "image_hash", "value"]].copy()
    out["model"], out["item"] = out["model"].astype(str), out["item"].astype(str)
    return out.reset_index(drop=True)


def cell_means(rows: pd.DataFrame) -> pd.DataFrame:
    """model, item, mean, n of raw values."""
    g = rows.groupby(["model", "item"], sort=True)["value"]
    return pd.DataFrame({"mean": g.mean(), "n": g.size()}).reset_index()


def clip_vs_aesthetic(scores: pd.DataFrame, result: Standardized) -> pd.DataFrame:
    """Per image with both usable scores: model, item, seed, image_hash, aesthetic, clipscore."""
    keys = ["model", "item", "seed", "image_hash"]
    a = usable_raw(scores, result, RAW).rename(columns={"value": RAW})
    c = usable_raw(scores, result, CLIP).rename(columns={"value": CLIP})
    return a.merge(c, on=keys, how="inner")


def ranking_table(result: Standardized, shown: Mapping[str, Shown] | None) -> pd.DataFrame:
    """standardize's score table with each metric's heading (``ranking_title``) after the metric name; without
    ``shown`` (the registry's view of the metrics), the heading is the metric name."""
    cols = ["metric", "model", "score", "lo", "hi", "rank", "rank_lo", "rank_hi", "higher_is_better"]
    table = result.scores[cols].copy()
    headings = {m: (ranking_title(shown[m]) if shown is not None else m) for m in dict.fromkeys(table["metric"])}
    table.insert(1, "heading", table["metric"].map(headings))
    return table


def plot_data(result: Standardized, scores: pd.DataFrame,
              shown: Mapping[str, Shown] | None = None) -> dict[str, pd.DataFrame]:
    """The CSV tables, keyed by file stem (see the module docstring). shown: ``shown_metrics(result, ...)``, for the
    ranking's headings."""
    return {
        "aesthetic_distribution": usable_raw(scores, result, RAW),
        "ranking": ranking_table(result, shown),
        **{stem: cell_means(usable_raw(scores, result, metric)) for stem, (metric, _) in HEATMAPS.items()},
        "clip_vs_aesthetic": clip_vs_aesthetic(scores, result),
    }


def model_order(result: Standardized) -> list[str]:
    """Models by combined rank (unranked last), then name."""
    c = result.scores[result.scores["metric"] == COMBINED].sort_values(["rank", "model"], na_position="last")
    return c["model"].astype(str).tolist()


def new_figure(width: float, height: float, demo: bool) -> Figure:
    """A pyplot-free figure; demo figures carry the random-weights warning as their title."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    if demo:
        fig.suptitle("DEMO: random weights, numbers are meaningless", color="crimson", fontweight="bold")
    return fig


def raw_axis(s: Shown) -> str:
    """Axis text of a metric's raw per-image values: "LAION aesthetic (raw)"."""
    return f"{s.axis_label} (raw)"


def distribution_figure(data: pd.DataFrame, order: list[str], threshold: float, shown: Shown, demo: bool) -> Figure:
    """Violin of raw values of ``shown`` (the aesthetic) per model (quartiles inside), with the good-image
    threshold."""
    fig = new_figure(max(5.0, 1.1 * len(order)), 4.0, demo)
    ax = fig.add_subplot()
    present = [m for m in order if m in set(data["model"])]
    sns.violinplot(data=data, x="model", y="value", order=present, cut=0, inner="quartile", ax=ax, color="#9ecae1")
    ax.set(xlabel="", ylabel=raw_axis(shown), title=f"Distribution of {shown.label} scores")
    lo, hi = float(data["value"].min()), float(data["value"].max())
    margin = 0.25 * max(hi - lo, 0.1)
    if lo - margin <= threshold <= hi + margin:
        ax.axhline(threshold, color="crimson", linestyle="--", linewidth=1, label=f"good ≥ {threshold:g}")
        ax.legend(loc="lower right")
    else:  # a line far off the data would squash every violin flat: say where it is instead
        where = "above" if threshold > hi else "below"
        ax.text(0.99, 0.01, f"good ≥ {threshold:g}: {where} every score", transform=ax.transAxes, ha="right",
                va="bottom", color="crimson", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30)
    return fig


def ranking_title(shown: Shown) -> str:
    """"StyleLoss: higher is better": the title of a metric's ranking (PNG and ``dvc plots`` panel)."""
    return f"{shown.label}: {shown.better} is better"


def ranking_figure(table: pd.DataFrame, shown: Shown, ci: float, demo: bool) -> Figure:
    """Scores of one metric with their ``ci`` interval whiskers, best on top."""
    t = table[table["metric"] == shown.name]
    t = t.sort_values(["rank", "model"], ascending=[False, False], na_position="first")
    fig = new_figure(6.0, 1.0 + 0.4 * len(t), demo)
    ax = fig.add_subplot()
    y = np.arange(len(t))
    err = np.vstack([t["score"] - t["lo"], t["hi"] - t["score"]])
    ax.errorbar(t["score"], y, xerr=np.nan_to_num(err), fmt="o", color="#3182bd", ecolor="#6baed6", capsize=3)
    ax.set_yticks(y, [f"#{int(r)} {m}" if r == r else str(m) for m, r in zip(t["model"], t["rank"])])
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set(xlabel=f"mean z-score ({100 * ci:g}% bootstrap interval)", title=ranking_title(shown))
    return fig


def heatmap_figure(cells: pd.DataFrame, order: list[str], shown: Shown, items: str, demo: bool) -> Figure:
    """Item x model heatmap of the mean raw value of ``shown`` (dark = low); empty cells (a LoRA of the other family)
    left blank. Items (called ``items`` in the title) run down the rows: there are many more items (up to 32 LoRAs)
    than models to compare."""
    grid = cells.pivot(index="item", columns="model", values="mean")
    grid = grid[[m for m in order if m in grid.columns]]
    fig = new_figure(max(5.0, 1.1 * grid.shape[1] + 4), max(3.0, 0.32 * grid.shape[0] + 1.8), demo)
    ax = fig.add_subplot()
    sns.heatmap(grid, annot=grid.size <= 200, fmt=".3g", cmap="viridis", mask=grid.isna(), ax=ax,
                cbar_kws={"label": f"mean raw {shown.axis_label} ({shown.better} is better)"})
    ax.set(xlabel="", ylabel="", title=f"Mean {shown.label} per {items}")
    return fig


def scatter_figure(data: pd.DataFrame, order: list[str], shown: Mapping[str, Shown], demo: bool) -> Figure:
    """CLIPScore vs aesthetic, one point per general image, colour = model."""
    fig = new_figure(6.5, 4.5, demo)
    ax = fig.add_subplot()
    sns.scatterplot(data=data, x=RAW, y=CLIP, hue="model", hue_order=[m for m in order if m in set(data["model"])],
                    ax=ax, s=25, alpha=0.8)
    ax.set(xlabel=raw_axis(shown[RAW]), ylabel=raw_axis(shown[CLIP]), title="Prompt fidelity vs aesthetics per image")
    return fig


def figures(result: Standardized, data: dict[str, pd.DataFrame], models: pd.DataFrame,
            shown: Mapping[str, Shown]) -> dict[str, Figure]:
    """Figures keyed by file stem; a figure whose data is empty is left out. shown: ``shown_metrics(result, ...)``."""
    demo = any(as_bool(v) for v in models.get("random_weights", pd.Series(dtype=object)))
    order = model_order(result)
    figs: dict[str, Figure] = {}
    if not data["aesthetic_distribution"].empty:
        threshold = float(result.meta.get("good_threshold", 6.0))
        figs["aesthetic_distribution"] = distribution_figure(data["aesthetic_distribution"], order, threshold,
                                                             shown[RAW], demo)
    for metric in dict.fromkeys(data["ranking"]["metric"]):
        figs[f"ranking_{metric}"] = ranking_figure(data["ranking"], shown[metric], result.meta.get("ci", 0.95), demo)
    for stem, (metric, items) in HEATMAPS.items():
        if not data[stem].empty:
            figs[stem] = heatmap_figure(data[stem], order, shown[metric], items, demo)
    if not data["clip_vs_aesthetic"].empty:
        figs["clip_vs_aesthetic"] = scatter_figure(data["clip_vs_aesthetic"], order, shown, demo)
    return figs


def png_bytes(fig: Figure) -> bytes:
    """Encode a figure as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render(result: Standardized, scores: pd.DataFrame, models: pd.DataFrame,
           metrics: Mapping[str, MetricInfo]) -> tuple[dict[str, pd.DataFrame], dict[str, bytes]]:
    """(CSV tables, PNG bytes), both keyed by file stem; labels and directions from ``metrics`` (the registry)."""
    shown = shown_metrics(result, metrics)
    data = plot_data(result, scores, shown)
    figs = figures(result, data, models, shown)
    return data, {stem: png_bytes(fig) for stem, fig in figs.items()}


def write_plots(result: Standardized, scores: pd.DataFrame, models: pd.DataFrame, out_dir: str | Path, *,
                metrics: Mapping[str, MetricInfo]) -> dict[str, bytes]:
    """Write ``<out_dir>/plots/<stem>.png`` and ``<stem>.csv``; returns the PNG bytes by stem (for the HTML page).

    metrics: the registry the scores were standardized with (labels, axis texts, directions)."""
    data, pngs = render(result, scores, models, metrics)
    plots = Path(out_dir) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for stem, table in data.items():
        table.to_csv(plots / f"{stem}.csv", index=False)
    for stem, png in pngs.items():
        (plots / f"{stem}.png").write_bytes(png)
    return pngs
