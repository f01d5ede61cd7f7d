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

Readable at hundreds of models: beyond ``FEW`` models the distribution is a sorted interval chart (median, 25-75%,
5-95%) instead of violins, ranking and heatmap rows are 16 px a model (heatmaps turn models down the rows), and
beyond ``LEGEND`` models the scatter shows each model's mean on a colour bar instead of a legend entry per model.

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
FEW = 12  # up to this many models: a violin per model and roomy rows; beyond: interval charts, 16 px a model
LEGEND = 10  # up to this many models the scatter colours each model in a legend; beyond: model means on a colour bar
LABELLED = 5  # models named on the many-model scatter (the best by leaderboard order)
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


def row_inches(n: int) -> float:
    """Height of one model's row in a chart with a row per model: roomy for a few, 0.16 in (16 px) for many."""
    return 0.4 if n <= FEW else 0.16


def model_ticks(ax, n: int) -> None:
    """Tick labels small enough to stay apart at 16 px a row."""
    if n > FEW:
        ax.tick_params(axis="y", labelsize=7)


def threshold_line(ax, threshold: float, lo: float, hi: float, vertical: bool) -> None:
    """The good-image threshold as a dashed line, or a note where it lies when it is far off the data (a line far
    off would squash the data flat)."""
    margin = 0.25 * max(hi - lo, 0.1)
    if lo - margin <= threshold <= hi + margin:
        line = ax.axvline if vertical else ax.axhline
        line(threshold, color="crimson", linestyle="--", linewidth=1, label=f"good ≥ {threshold:g}")
        ax.legend(loc="lower right")
    else:
        where = "above" if threshold > hi else "below"
        ax.text(0.99, 0.01, f"good ≥ {threshold:g}: {where} every score", transform=ax.transAxes, ha="right",
                va="bottom", color="crimson", fontsize=9)


def distribution_figure(data: pd.DataFrame, order: list[str], threshold: float, shown: Shown, demo: bool) -> Figure:
    """Raw values of ``shown`` (the aesthetic) per model, with the good-image threshold: violins (quartiles inside)
    for up to ``FEW`` models, beyond that ``interval_figure`` (a violin per model would be a sliver)."""
    have = set(data["model"])
    present = [m for m in order if m in have]
    if len(present) > FEW:
        return interval_figure(data, present, threshold, shown, demo)
    fig = new_figure(max(5.0, 1.1 * len(order)), 4.0, demo)
    ax = fig.add_subplot()
    sns.violinplot(data=data, x="model", y="value", order=present, cut=0, inner="quartile", ax=ax, color="#9ecae1")
    ax.set(xlabel="", ylabel=raw_axis(shown), title=f"Distribution of {shown.label} scores")
    threshold_line(ax, threshold, float(data["value"].min()), float(data["value"].max()), vertical=False)
    ax.tick_params(axis="x", labelrotation=30)
    return fig


def quantiles(data: pd.DataFrame) -> pd.DataFrame:
    """Per model: the 5th, 25th, 50th, 75th and 95th percentile of ``value``, best median first."""
    q = data.groupby("model")["value"].quantile([0.05, 0.25, 0.5, 0.75, 0.95]).unstack()
    return q.sort_values(0.5, ascending=False)


def interval_figure(data: pd.DataFrame, present: list[str], threshold: float, shown: Shown, demo: bool) -> Figure:
    """One row per model, sorted by median (best on top): the median as a dot, the middle half as a thick bar, the
    5th-95th percentiles as a thin line; readable at hundreds of models (16 px a row)."""
    q = quantiles(data[data["model"].isin(present)]).iloc[::-1]  # matplotlib draws the first row at the bottom
    fig = new_figure(7.0, 1.5 + row_inches(len(q)) * len(q), demo)
    ax = fig.add_subplot()
    y = np.arange(len(q))
    ax.hlines(y, q[0.05], q[0.95], color="#9ecae1", linewidth=1)
    ax.hlines(y, q[0.25], q[0.75], color="#3182bd", linewidth=4)
    ax.plot(q[0.5], y, "o", color="#08306b", markersize=3)
    ax.set_yticks(y, q.index.astype(str).tolist())
    ax.set_ylim(-0.5, len(q) - 0.5)
    model_ticks(ax, len(q))
    ax.set(xlabel=raw_axis(shown), title=f"Distribution of {shown.label} scores (median, 25-75%, 5-95%)")
    threshold_line(ax, threshold, float(data["value"].min()), float(data["value"].max()), vertical=True)
    return fig


def ranking_title(shown: Shown) -> str:
    """"StyleLoss: higher is better": the title of a metric's ranking (PNG and ``dvc plots`` panel)."""
    return f"{shown.label}: {shown.better} is better"


def ranking_figure(table: pd.DataFrame, shown: Shown, ci: float, demo: bool) -> Figure:
    """Scores of one metric with their ``ci`` interval whiskers, best on top."""
    t = table[table["metric"] == shown.name]
    t = t.sort_values(["rank", "model"], ascending=[False, False], na_position="first")
    fig = new_figure(6.0, 1.0 + row_inches(len(t)) * len(t), demo)
    ax = fig.add_subplot()
    y = np.arange(len(t))
    err = np.vstack([t["score"] - t["lo"], t["hi"] - t["score"]])
    ax.errorbar(t["score"], y, xerr=np.nan_to_num(err), fmt="o", color="#3182bd", ecolor="#6baed6",
                capsize=3 if len(t) <= FEW else 0, markersize=6 if len(t) <= FEW else 3)
    ax.set_yticks(y, [f"#{int(r)} {m}" if r == r else str(m) for m, r in zip(t["model"], t["rank"])])
    ax.set_ylim(-0.5, len(t) - 0.5)
    model_ticks(ax, len(t))
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set(xlabel=f"mean z-score ({100 * ci:g}% bootstrap interval)", title=ranking_title(shown))
    return fig


def heatmap_figure(cells: pd.DataFrame, order: list[str], shown: Shown, items: str, demo: bool) -> Figure:
    """Item x model heatmap of the mean raw value of ``shown`` (dark = low); empty cells (a LoRA of the other family)
    left blank. Items (called ``items`` in the title) run down the rows: there are many more items (up to 32 LoRAs)
    than models to compare."""
    grid = cells.pivot(index="item", columns="model", values="mean")
    grid = grid[[m for m in order if m in grid.columns]]
    many = grid.shape[1] > FEW
    if many:  # models down the rows in leaderboard order (16 px each), items across: never 11,000 px wide
        grid = grid.T
        fig = new_figure(max(5.0, 0.35 * grid.shape[1] + 4), 2.5 + row_inches(grid.shape[0]) * grid.shape[0], demo)
    else:
        fig = new_figure(max(5.0, 1.1 * grid.shape[1] + 4), max(3.0, 0.32 * grid.shape[0] + 1.8), demo)
    ax = fig.add_subplot()
    sns.heatmap(grid, annot=grid.size <= 200, fmt=".3g", cmap="viridis", mask=grid.isna(), ax=ax,
                yticklabels=True, xticklabels=True,
                cbar_kws={"label": f"mean raw {shown.axis_label} ({shown.better} is better)"})
    if many:
        model_ticks(ax, grid.shape[0])
    ax.set(xlabel="", ylabel="", title=f"Mean {shown.label} per {items}")
    return fig


def scatter_figure(data: pd.DataFrame, order: list[str], shown: Mapping[str, Shown], demo: bool) -> Figure:
    """CLIPScore vs aesthetic, one point per general image, colour = model; beyond ``LEGEND`` models (a legend of
    100 entries over 96,000 points says nothing) ``means_scatter_figure``."""
    have = set(data["model"])
    present = [m for m in order if m in have]
    if len(present) > LEGEND:
        return means_scatter_figure(data, present, shown, demo)
    fig = new_figure(6.5, 4.5, demo)
    ax = fig.add_subplot()
    sns.scatterplot(data=data, x=RAW, y=CLIP, hue="model", hue_order=present, ax=ax, s=25, alpha=0.8)
    ax.set(xlabel=raw_axis(shown[RAW]), ylabel=raw_axis(shown[CLIP]), title="Prompt fidelity vs aesthetics per image")
    return fig


def means_scatter_figure(data: pd.DataFrame, present: list[str], shown: Mapping[str, Shown], demo: bool) -> Figure:
    """Every image as a faint grey point, each model's mean as a dot coloured by its leaderboard position (a colour
    bar, no legend), the ``LABELLED`` best models named."""
    fig = new_figure(7.0, 5.0, demo)
    ax = fig.add_subplot()
    ax.scatter(data[RAW], data[CLIP], s=2, color="#bbbbbb", alpha=0.3, linewidths=0, rasterized=True)
    means = data.groupby("model")[[RAW, CLIP]].mean().reindex(present)
    dots = ax.scatter(means[RAW], means[CLIP], c=np.arange(1, len(means) + 1), cmap="viridis_r", s=14,
                      edgecolors="black", linewidths=0.3)
    for model, (x, y) in means.head(LABELLED).iterrows():
        ax.annotate(str(model), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fig.colorbar(dots, ax=ax, label="leaderboard position (1 = best)")
    ax.set(xlabel=raw_axis(shown[RAW]), ylabel=raw_axis(shown[CLIP]),
           title=f"Prompt fidelity vs aesthetics: images (grey), model means ({len(means)} models)")
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
