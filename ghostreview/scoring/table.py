"""The tidy score table: one row per image × metric, written and read by the scoring stages and standardize."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ghostreview.util.atomic import save_atomic

# The score-row contract, in file order. What a row says (which image, which metric, its value and flags) ...
VALUE_COLUMNS = ("model", "task", "item", "seed", "image_hash", "metric", "value", "flags")
# ... and where the value comes from (the metric's code version and its weights' hash).
PROVENANCE_COLUMNS = ("metric_version", "weights_sha256")
SCORE_COLUMNS = VALUE_COLUMNS + PROVENANCE_COLUMNS


def score_rows(
    manifest: Sequence[Mapping[str, str]],
    metric: str,
    values: Iterable[float],
    version: str,
    weights_sha256: str,
    extra_flags: Iterable[Sequence[str]] | None = None,
) -> list[dict]:
    """Rows for ``metric``, one per manifest row, carrying the image's own flags plus ``extra_flags``."""
    extra = extra_flags if extra_flags is not None else ([] for _ in manifest)
    rows = []
    for row, value, more in zip(manifest, values, extra, strict=True):
        flags = [f for f in row.get("flags", "").split(";") if f] + list(more)
        rows.append({
            "model": row["model"],
            "task": row["task"],
            "item": row["item"],
            "seed": int(row["seed"]),
            "image_hash": row["image_hash"],
            "metric": metric,
            "value": float(value),
            "flags": ";".join(flags),
            "metric_version": version,
            "weights_sha256": weights_sha256,
        })
    return rows


def write_scores(path: Path, rows: Sequence[Mapping]) -> None:
    """Write rows atomically (a killed stage never leaves a half-written table)."""
    frame = pd.DataFrame(list(rows), columns=list(SCORE_COLUMNS))
    save_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def read_scores(score_dir: Path, models: Sequence[str], columns: Sequence[str] = SCORE_COLUMNS) -> pd.DataFrame:
    """All score rows of the given models (``score_dir/<model>/*.csv``); other entries are ignored.

    Only the models listed in params count: DVC leaves a removed model's outputs behind. ``columns``: the columns
    read (standardize reads VALUE_COLUMNS: a third less to parse and hold at 500 models); a file lacking one is read
    without it, for the caller's column check to name.
    """
    wanted = set(columns)
    frames = [pd.read_csv(p, dtype={"flags": str, "item": str}, keep_default_na=False, usecols=lambda c: c in wanted)
              for m in models for p in sorted((score_dir / m).glob("*.csv"))]
    frames = [f for f in frames if len(f)]  # a metric with no rows (diversity of one seed) has untyped columns
    if not frames:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(frames, ignore_index=True)
