"""DVC stage report: leaderboard (md/csv/json), metrics.json for `dvc metrics`, plots and the offline index.html."""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview import validate
from ghostreview.analysis.aggregate import manifests, models_table
from ghostreview.analysis.report import write_report
from ghostreview.analysis.standardize import Standardized
from ghostreview.errors import stage_main
from ghostreview.scoring.registry import REGISTRY
from ghostreview.scoring.table import read_scores


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--standardized", required=True, type=Path)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--scores", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml", type=Path)
    args = ap.parse_args(argv)

    params = validate.load(args.params)
    names = list(params.models)
    paths = write_report(
        Standardized.read(args.standardized), read_scores(args.scores, names), manifests(args.images, names),
        models_table(args.images, names, {n: m.title for n, m in params.models.items()}), args.images, args.out,
        metrics=REGISTRY,
    )
    print("report: " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
