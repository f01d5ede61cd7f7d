"""DVC stage score@<model>: every metric of one model's images, through the score store.

The metrics are those of ``scoring.judges``, in that order: LAION aesthetic v2 and CLIPScore on the CLIP image
embeddings (computed once per image for both), Gatys StyleLoss of the style and LoRA images against the reference
statistics of the refstats stage, and the preference judges HPSv2.1 and PickScore on the general-prompt images.
Each value is read from the score store (``<paths.cache>/scores.sqlite``) when it holds one with the same identity
(image, metric version, weights, settings: ``ghostreview.scoring.store``), so that a rerun recomputes only what is
new: a judge added, a scorer setting changed, the images of a replaced checkpoint. Writes ``<out>/<metric>.csv``
(tidy score rows), swapped in as a whole.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import cache, partial
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
from ghostreview.scoring import hpsv21, pickscore  # noqa: E402
from ghostreview.scoring.run import drawable  # noqa: E402
from ghostreview.scoring.scorers import (  # noqa: E402
    AestheticScorer,
    ClipScoreScorer,
    ClipTower,
    DiversityScorer,
    JudgeScorer,
    Scorer,
    StyleScorer,
    score_model,
)
from ghostreview.scoring.store import ScoreStore  # noqa: E402
from ghostreview.scoring.table import write_scores  # noqa: E402
from ghostreview.scoring.weights import verify_weights  # noqa: E402
from ghostreview.util.atomic import replace_dir  # noqa: E402
from ghostreview.util.hashing import file_sha256  # noqa: E402


def scorers(params: Params, root: Path, images: Path, refstats: Path, store: ScoreStore,
            hash_cache: Path) -> list[Scorer]:
    """The scorers of ``scoring.judges``, in that order, built from params: weights verified (and hashed, through the
    hash cache) here; a model loads only when one of its values is missing."""
    s = params.scoring

    @cache
    def tower() -> ClipTower:  # one CLIP for aesthetic and CLIPScore
        return ClipTower(validate.clip_spec(params, root), images, s.batch_size, store, hash_cache)

    def style(task: str) -> StyleScorer:
        return StyleScorer(task, validate.vgg_spec(params, root), images, refstats, s.style.image_size, s.batch_size,
                           hash_cache)

    def hps() -> JudgeScorer:
        spec = validate.hps_spec(params, root)
        sha = verify_weights(spec.weights, spec.sha256, cache_file=hash_cache)
        config = file_sha256(spec.model_config) if spec.model_config else None
        return JudgeScorer(hpsv21.INFO, spec, sha, hpsv21.hpsv21_scores, images, s.batch_size, hash_cache,
                           {"arch": spec.arch, "model_config": config})

    def pick() -> JudgeScorer:
        spec = validate.pick_spec(params, root)
        weights = verify_weights(pickscore.weights_file(spec.model_dir), spec.sha256, cache_file=hash_cache)
        sha = pickscore.judge_sha256(weights, spec.model_dir, spec.processor_dir)
        return JudgeScorer(pickscore.INFO, spec, sha, pickscore.pickscore_scores, images, s.batch_size, hash_cache)

    build: dict[str, Callable[[], Scorer]] = {
        "aesthetic": lambda: AestheticScorer(tower(), validate.resolve(root, s.aesthetic.weights), s.aesthetic.sha256,
                                             hash_cache),
        "clipscore": lambda: ClipScoreScorer(tower()),
        "styleloss": partial(style, "style"),
        "loraloss": partial(style, "lora"),
        "hpsv21": hps,
        "pickscore": pick,
        "diversity": lambda: DiversityScorer(tower()),
    }
    return [build[name]() for name in s.judges]  # names checked against the registry when params loaded


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
        def build(tmp: Path) -> None:
            for name, table in tables.items():
                write_scores(tmp / f"{name}.csv", table)

        replace_dir(args.out, build)
        print(f"score: {sum(map(len, tables.values()))} rows of {len(rows)} images -> {args.out} "
              f"({store.summary([*tables, 'clip image embeddings'])})")


if __name__ == "__main__":
    main()
