"""DVC stages aesthetic@<model> and clipscore@<model>: the two metrics read from the stored CLIP image embeddings.

aesthetic: LAION aesthetic v2 score of every image. clipscore: CLIPScore of every general-prompt image against its
prompt (A1111 syntax removed); text embeddings once per distinct prompt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview.errors import stage_main
from ghostreview.util.runtime import quiet_third_party, set_cpu_threads, stage_runtime

METRIC_NAMES = ("aesthetic", "clipscore")  # METRICS below: what each scores, how


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--metric", required=True, choices=METRIC_NAMES)
    ap.add_argument("--images", required=True, type=Path, help="generate output: PNGs + manifest.csv")
    ap.add_argument("--embeddings", required=True, type=Path, help="embed output (.npz)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml", type=Path)
    return ap


if __name__ == "__main__":
    parser().parse_args()  # --help and usage errors answer here, before torch and the model libraries load

stage_runtime()

from ghostreview import validate  # noqa: E402
from ghostreview.config import Params  # noqa: E402
from ghostreview.generation.manifest import read_manifest  # noqa: E402
from ghostreview.scoring.run import aesthetic_rows, clipscore_rows, drawable  # noqa: E402
from ghostreview.scoring.table import write_scores  # noqa: E402


def aesthetic(rows: list, embeddings: Path, params: Params, root: Path) -> list[dict]:
    a = params.scoring.aesthetic
    return aesthetic_rows(rows, embeddings, validate.resolve(root, a.weights), a.sha256)


def clipscore(rows: list, embeddings: Path, params: Params, root: Path) -> list[dict]:
    return clipscore_rows(rows, embeddings, validate.clip_spec(params, root), params.scoring.batch_size)


# metric -> (which images it scores, how)
METRICS = dict(zip(METRIC_NAMES, (
    (lambda row: True, aesthetic),
    (lambda row: row["task"] == "general", clipscore),
), strict=True))


@stage_main
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    quiet_third_party()

    params, root = validate.for_scoring(args.params)
    set_cpu_threads(params.scoring.cpu_threads)
    selected, score = METRICS[args.metric]
    rows = [r for r in drawable(read_manifest(args.images)) if selected(r)]
    scores = score(rows, args.embeddings, params, root)
    write_scores(args.out, scores)
    print(f"{args.metric}: {len(scores)} rows -> {args.out}")


if __name__ == "__main__":
    main()
