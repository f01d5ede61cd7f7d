"""GhostReview report: leaderboard tables, metrics.json and stability.json, plots and the offline HTML report (an
index and grid pages).

``write_report`` does everything; ``print_leaderboard`` is for the CLI (it reads the leaderboard files alone: no
registry, scorers or torch). Every metric label, axis text and direction comes from the registry's ``MetricInfo``
records the caller passes in (``display`` derives the combined and NoTM columns from them); leaderboard.json carries
them for ``print_leaderboard``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ghostreview.analysis.report.arena import ArenaTables
from ghostreview.analysis.report.metrics import write_metrics_json
from ghostreview.analysis.report.stability import write_stability_json
from ghostreview.analysis.report.tables import fmt as fmt_number
from ghostreview.analysis.report.tables import (
    fmt_rank,
    model_label,
    pool_label,
    protocol_line,
    protocols_of,
    reference_line,
    reference_of,
    write_tables,
)
from ghostreview.analysis.report.targets import Targets
from ghostreview.analysis.standardize import COMBINED, Standardized
from ghostreview.scoring.metric import MetricInfo


def write_report(result: Standardized, scores: pd.DataFrame, manifests: Mapping[str, pd.DataFrame],
                 models: pd.DataFrame, images_root: str | Path, out_dir: str | Path, *,
                 metrics: Mapping[str, MetricInfo], targets: Targets | None = None, cache: Path | None = None,
                 workers: int = 1, arena: ArenaTables | None = None) -> dict[str, Path]:
    """Write the tables, the two metrics files ``dvc metrics`` reads, ``plots/``, ``index.html``, the grid
    ``pages/`` and the ``images/`` they link to into ``out_dir``; returns {name: path} of the main files.

    metrics: the registry the scores were standardized with (``ghostreview.scoring.registry.REGISTRY``); every
    label, axis text and direction the report shows comes from it. Passed in, not imported: the registry imports the
    scorers and torch. targets: the style reference and LoRA header images the grids show next to the generated
    ones, and the LoRA tables' families (``targets.benchmark_targets``); None: grids without targets. cache: the
    rendition cache (``html.renditions``: renditions made once and reused by later reports; None: all made anew).
    workers: processes rendering images. arena: the arena stage's tables (``arena.read_arena``), for the index's
    arena section.
    """
    # matplotlib and seaborn load only when a report is written, not for ``print_leaderboard``
    from ghostreview.analysis.report.html import write_html
    from ghostreview.analysis.report.plots import write_plots

    paths = write_tables(result, models, out_dir, metrics=metrics)
    paths["metrics.json"] = write_metrics_json(result, models["model"].astype(str).tolist(),
                                               Path(out_dir) / "metrics.json")
    paths["stability.json"] = write_stability_json(result, Path(out_dir) / "stability.json")
    pngs = write_plots(result, scores, models, out_dir, metrics=metrics)
    paths["index.html"] = write_html(result, scores, manifests, models, images_root, out_dir, metrics=metrics,
                                     plot_pngs=pngs, targets=targets, cache=cache, workers=workers, arena=arena)
    paths["pages"] = Path(out_dir) / "pages"
    paths["images"] = Path(out_dir) / "images"
    return paths


FORMATS = ("text", "md", "json", "csv")
REPORT_HINT = "run the report stage (dvc repro report)"


def leaderboard_files(path: str | Path) -> dict[str, Path]:
    """leaderboard.md/.csv/.json next to each other, from the path of any of them (the CLI passes the .csv)."""
    p = Path(path)
    if p.suffix not in (".csv", ".json", ".md"):
        raise ValueError(f"{p}: expected the report's leaderboard.csv (or its .json/.md sibling)")
    return {"md": p.with_suffix(".md"), "json": p.with_suffix(".json"), "csv": p.with_suffix(".csv")}


def read_file(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no leaderboard; {REPORT_HINT} first")
    return path.read_text(encoding="utf-8")


def read_document(path: Path) -> dict:
    """leaderboard.json as written by ``tables.write_tables``; an older layout (a bare list) fails with the fix."""
    try:
        doc = json.loads(read_file(path))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); {REPORT_HINT} again") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), dict) or not isinstance(doc.get("models"),
                                                                                                list):
        raise ValueError(f"{path}: no 'metrics' and 'models' keys: written by an older report; {REPORT_HINT} again")
    return doc


def demo_line(records: Sequence[Mapping[str, object]]) -> str | None:
    """The one-line warning when any model has random weights."""
    demo = [str(r["model"]) for r in records if r.get("random_weights") is True]
    return f"DEMO / RANDOM WEIGHTS: {', '.join(demo)}: numbers say nothing about real checkpoints." if demo else None


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart; numbers (and dashes) right-aligned."""
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]

    def line(cells: list[str], numeric: list[bool]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric)).rstrip()

    numeric = [all(r[i][:1] in "-0123456789—" for r in rows) for i in range(len(header))]
    return [line(header, numeric)] + [line(r, numeric) for r in rows]


def leaderboard_text(doc: Mapping) -> str:
    """Plain-text leaderboard from a leaderboard.json document: a row per model in rank order, each scored metric's
    score with its interval under a header with its direction mark, the raw metric's mean and good rate, then what
    the combined score averages and what the brackets are."""
    metrics, records = doc["metrics"], doc["models"]
    ref = doc.get("reference") or reference_of({})  # none: written before reference sets, by the pool
    protocols = protocols_of(doc)  # issue 17's per-base pools; none: one pool
    titled = any(r.get("title") for r in records)
    raw = doc.get("raw_metric")
    header = ["#", "Model"] + (["Title"] if titled else []) + ["Family"]
    header += [f"{m['label']} {m['mark']}" for m in metrics.values()]
    raw_info = metrics.get(raw, {})
    raw_cols = [c for c in (f"{raw}_mean", f"{raw}_good_rate") if records and c in records[0]]
    header += [f"Raw {raw_info.get('label', raw)} {'mean' if c.endswith('_mean') else 'good rate'} "
               f"{raw_info.get('mark', '')}".rstrip() for c in raw_cols]
    rows = []
    for r in records:
        cells = [fmt_rank(r["rank"]), model_label(r["model"], ref) + pool_label(r["model"], protocols)]
        cells += [str(r.get("title") or "")] if titled else []
        cells.append(str(r["family"]))
        cells += [f"{fmt_number(r.get(m))} [{fmt_number(r.get(f'{m}_lo'))}, {fmt_number(r.get(f'{m}_hi'))}]"
                  for m in metrics]
        cells += [fmt_number(r.get(c)) for c in raw_cols]
        rows.append(cells)
    lines = text_table(header, rows)
    over = [metrics[m]["label"] for m in doc.get("combined_over", []) if m in metrics]
    combined = metrics.get(COMBINED, {}).get("label", COMBINED)
    lines.append("")
    lines.append(f"{combined} = mean over {', '.join(over)} (losses sign-flipped)." if over else
                 f"{combined}: no metric has a score for every model; no combined rank.")
    chosen = doc.get("combined_chosen")  # None: written before standardize.combined; every judge was a candidate
    out = [(n, m["label"]) for n, m in metrics.items() if m["registered"] and not m["in_combined"]]
    left = [label for n, label in out if chosen is None or n in chosen]
    if left:
        lines.append(f"Not in {combined}, because some model has no score there: {', '.join(left)}.")
    unchosen = [label for n, label in out if chosen is not None and n not in chosen]
    if unchosen:
        lines.append(f"Not chosen for {combined}: {', '.join(unchosen)}.")
    level = doc.get("ci")
    level_text = f"{100 * float(level):g}%" if isinstance(level, int | float) else "bootstrap"
    lines.append(reference_line(ref))
    lines += [protocol_line(protocols)] if protocols else []
    lines.append(f"↑ higher is better, ↓ lower is better; brackets: {level_text} bootstrap intervals over benchmark "
                 "items. Details: leaderboard.md.")
    return "\n".join(lines) + "\n"


def format_leaderboard(path: str | Path, fmt: str = "text") -> str:
    """What ``print_leaderboard`` prints: the text table, or the report's leaderboard.md/.json/.csv as written."""
    if fmt not in FORMATS:
        raise ValueError(f"leaderboard format {fmt!r}: expected one of {', '.join(FORMATS)}")
    files = leaderboard_files(path)
    if fmt != "text":
        return read_file(files[fmt])
    doc = read_document(files["json"])
    warning = demo_line(doc["models"])
    return (f"{warning}\n" if warning else "") + leaderboard_text(doc)


def print_leaderboard(path: str | Path, fmt: str = "text") -> None:
    """Print the report's leaderboard (``path``: its leaderboard.csv; .json and .md are read next to it).

    fmt: "text" (a table with direction marks and intervals, a warning line first for demos), "md", "json" or "csv"
    (the file as the report wrote it; for json and csv the demo warning goes to stderr, so that stdout parses).
    Any other fmt raises ValueError naming the valid ones."""
    out = format_leaderboard(path, fmt)
    if fmt in ("json", "csv"):
        warning = demo_line(read_document(leaderboard_files(path)["json"])["models"])
        if warning:
            print(warning, file=sys.stderr)
    sys.stdout.write(out)
