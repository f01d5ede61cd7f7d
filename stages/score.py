"""DVC stage score@<model>: every metric of one model's images, through the score store.

The metrics (``scoring.judges``, in that order) are LAION aesthetic v2 and CLIPScore on the CLIP image embeddings
(computed once per image for both), and Gatys StyleLoss of the style and LoRA images against the reference
statistics of the refstats stage. Each value is read from the score store (``<paths.cache>/scores.sqlite``) when it
holds one with the same identity (image, metric version, weights, settings: ``ghostreview.scoring.store``), so that
a rerun recomputes only what is new: a judge added, a scorer setting changed, the images of a replaced checkpoint.
Writes ``<out>/<metric>.csv`` (tidy score rows), swapped in as a whole.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview.errors import stage_main
from ghostreview.util.runtime import quiet_third_party, set_cpu_threads, stage_runtime


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", required=True, type=Path, help="generate output: PNGs + manifest.csv")
    ap.add_argument("--refstats", required=True, type=Path, help="refstats output (reference Gram statistics)")
    ap.add_argument("--out", required=True, type=Path, help="output directory: one <metric>.csv per metric")
    ap.add_argument("--params", default="params.yaml", type=Path)
    return ap


if __name__ == "__main__":
    parser().parse_args()  # --help and usage errors answer here, before torch and the model libraries load

stage_runtime()

from ghostreview import validate  # noqa: E402
from ghostreview.config import Params  # noqa: E402
from ghostreview.generation.manifest import read_manifest  # noqa: E402
from ghostreview.scoring.run import drawable  # noqa: E402
from ghostreview.scoring.scorers import (  # noqa: E402
    AestheticScorer,
    ClipScoreScorer,
    ClipTower,
    Scorer,
    StyleScorer,
    score_model,
)
from ghostreview.scoring.store import ScoreStore  # noqa: E402
from ghostreview.scoring.table import write_scores  # noqa: E402
from ghostreview.util.atomic import replace_dir  # noqa: E402


def scorers(params: Params, root: Path, images: Path, refstats: Path, store: ScoreStore,
            hash_cache: Path) -> list[Scorer]:
    """The review's scorers, built from params (weights verified here, models loaded only when a value is missing)."""
    s = params.scoring
    tower = ClipTower(validate.clip_spec(params, root), images, s.batch_size, store, hash_cache)
    vgg = validate.vgg_spec(params, root)
    style = {task: StyleScorer(task, vgg, images, refstats, s.style.image_size, s.batch_size, hash_cache)
             for task in ("style", "lora")}
    return [
        AestheticScorer(tower, validate.resolve(root, s.aesthetic.weights), s.aesthetic.sha256, hash_cache),
        ClipScoreScorer(tower),
        style["style"],
        style["lora"],
    ]


@stage_main
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    quiet_third_party()

    params, root = validate.for_scoring(args.params)
    set_cpu_threads(params.scoring.cpu_threads)
    cache = validate.resolve(root, params.paths.cache)
    rows = drawable(read_manifest(args.images))
    with ScoreStore(cache / "scores.sqlite") as store:
        chosen = scorers(params, root, args.images, args.refstats, store, cache / "sha256.json")
        tables = score_model(rows, chosen, store)
        replace_dir(args.out, lambda tmp: [write_scores(tmp / f"{name}.csv", t) for name, t in tables.items()])
        print(f"score: {sum(map(len, tables.values()))} rows of {len(rows)} images -> {args.out} "
              f"({store.summary([*tables, 'clip image embeddings'])})")


if __name__ == "__main__":
    main()
