"""DVC stage aesthetic@<model>: LAION aesthetic v2 score of every image, from the stored CLIP embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview.runtime import set_cpu_threads, stage_runtime

stage_runtime()

from ghostreview import config  # noqa: E402
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

    root = args.params.parent.resolve()
    params = config.load_params(args.params)
    config.check_files(params, root, str(args.params))
    set_cpu_threads(params.scoring.cpu_threads)
    rows = drawable(read_manifest(args.images))
    scores = aesthetic_rows(rows, args.embeddings, params.scoring, root)
    write_scores(args.out, scores)
    print(f"aesthetic: {len(scores)} rows -> {args.out}")


if __name__ == "__main__":
    main()
