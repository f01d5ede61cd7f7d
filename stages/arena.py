"""DVC stage arena: the human ranking from the arena's votes (Bradley-Terry with voter-bootstrap intervals) and how
well each judge predicts the people (pairwise accuracy, Kendall's tau against the human ranking)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview import validate
from ghostreview.analysis.standardize import read_table
from ghostreview.arena.export import read_votes
from ghostreview.arena.pairs import review_images
from ghostreview.arena.review import arena_review, oriented_image_values, oriented_model_scores
from ghostreview.errors import stage_main
from ghostreview.scoring.registry import REGISTRY
from ghostreview.scoring.table import VALUE_COLUMNS, read_scores


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--votes", required=True, type=Path, help="votes.csv (ghostreview arena export)")
    ap.add_argument("--images", required=True, type=Path, help="generate outputs: <model>/manifest.csv")
    ap.add_argument("--scores", required=True, type=Path, help="score directory: <model>/<metric>.csv")
    ap.add_argument("--standardized", required=True, type=Path, help="standardize's output (scores.csv)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml", type=Path)
    args = ap.parse_args(argv)

    params = validate.load(args.params)
    models, s = list(params.models), params.standardize
    judges = {n: REGISTRY[n].higher_is_better for n in params.scoring.judges}
    per_image = oriented_image_values(read_scores(args.scores, models, VALUE_COLUMNS), judges)
    model_scores = oriented_model_scores(read_table(args.standardized / "scores.csv"), list(judges))
    result = arena_review(read_votes(args.votes), models, review_images(args.images, models), per_image,
                          model_scores, n_boot=s.bootstrap, seed=s.seed, ci=s.confidence)
    result.write(args.out)
    m = result.meta
    print(f"arena: {m['votes']} votes by {m['voters']} voters ({m['synthetic']} synthetic, {m['stale']} on images "
          f"redrawn since, {m['other_models']} naming models not in this review) -> {args.out}")


if __name__ == "__main__":
    main()
