"""GhostReview report: leaderboard tables, plots and one offline HTML page.

``write_report`` does everything; ``print_leaderboard`` is for the CLI. Every metric label, axis text and direction
comes from the registry's ``MetricInfo`` records the caller passes in (``display`` derives the combined and NoTM
columns from them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ghostreview.analysis.report.tables import summary_columns, write_tables
from ghostreview.analysis.report.targets import Targets
from ghostreview.analysis.standardize import Standardized
from ghostreview.scoring.metric import MetricInfo


def write_report(result: Standardized, scores: pd.DataFrame, manifests: Mapping[str, pd.DataFrame],
                 models: pd.DataFrame, images_root: str | Path, out_dir: str | Path, *,
                 metrics: Mapping[str, MetricInfo], targets: Targets | None = None) -> dict[str, Path]:
    """Write the tables, ``plots/``, ``index.html`` and the ``images/`` it links to into ``out_dir``; returns
    {name: path} of the main files.

    metrics: the registry the scores were standardized with (``ghostreview.scoring.registry.REGISTRY``); every
    label, axis text and direction the report shows comes from it. Passed in, not imported: the registry imports the
    scorers and torch. targets: the style reference and LoRA header images the grids show next to the generated
    ones, and the LoRA tables' families (``targets.benchmark_targets``); None: grids without targets.
    """
    # matplotlib and seaborn load only when a report is written, not for ``print_leaderboard``
    from ghostreview.analysis.report.html import write_html
    from ghostreview.analysis.report.plots import write_plots

    paths = write_tables(result, models, out_dir, metrics=metrics)
    pngs = write_plots(result, scores, models, out_dir, metrics=metrics)
    paths["index.html"] = write_html(result, scores, manifests, models, images_root, out_dir, metrics=metrics,
                                     plot_pngs=pngs, targets=targets)
    paths["images"] = Path(out_dir) / "images"
    return paths


def format_leaderboard(board: pd.DataFrame) -> str:
    """Plain-text table of the summary columns present in ``board`` (a leaderboard.csv frame)."""
    cols = summary_columns(list(board.columns))
    view = board[cols].copy()
    for c in cols:
        if pd.api.types.is_float_dtype(view[c]):
            view[c] = view[c].map(lambda x: "—" if pd.isna(x) else f"{x:.3f}")
    view = view.astype(object).where(view.notna(), "—")
    return view.to_string(index=False)


def print_leaderboard(path_to_leaderboard_csv: str | Path) -> None:
    """Print the leaderboard CSV written by ``write_tables`` as a plain table (a warning line first for demos)."""
    path = Path(path_to_leaderboard_csv)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no leaderboard; run the report stage (dvc repro report) first")
    board = pd.read_csv(path, dtype={"model": str, "family": str, "autov2": str})
    demo = board.loc[board.get("random_weights", pd.Series(False, index=board.index)).astype(str)
                     .str.lower().isin(["true", "1"]), "model"].tolist()
    if demo:
        print(f"DEMO / RANDOM WEIGHTS: {', '.join(demo)}: numbers say nothing about real checkpoints.")
    print(format_leaderboard(board))
