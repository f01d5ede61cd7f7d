"""DVC stage aesthetic@<model>: LAION aesthetic v2 score of every image, from the stored CLIP embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview.runtime import scoring_params, stage_runtime

stage_runtime()

from ghostreview.generate import read_manifest  # noqa: E402
from ghostreview.scoring import aesthetic_rows, drawable  # noqa: E402
from ghostreview.scores import write_scores  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--embeddings", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml", type=Path)
    args = ap.parse_args(argv)

    params, root = scoring_params(args.params)
    rows = drawable(read_manifest(args.images))
    scores = aesthetic_rows(rows, args.embeddings, params.scoring, root)
    write_scores(args.out, scores)
    print(f"aesthetic: {len(scores)} rows -> {args.out}")


if __name__ == "__main__":
    main()
