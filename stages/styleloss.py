"""DVC stages styleloss@<model> and loraloss@<model>: Gatys StyleLoss of each style (or LoRA) image against its
reference set's Gram statistics."""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview.errors import stage_main
from ghostreview.util.runtime import quiet_third_party, set_cpu_threads, stage_runtime


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True, choices=("style", "lora"))
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--refstats", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml", type=Path)
    return ap


if __name__ == "__main__":
    parser().parse_args()  # --help and usage errors answer here, before torch and the model libraries load

stage_runtime()

from ghostreview import validate  # noqa: E402
from ghostreview.generation.manifest import read_manifest  # noqa: E402
from ghostreview.scoring.run import drawable, styleloss_rows  # noqa: E402
from ghostreview.scoring.table import write_scores  # noqa: E402


@stage_main
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    quiet_third_party()

    params, root = validate.for_scoring(args.params)
    set_cpu_threads(params.scoring.cpu_threads)
    rows = [r for r in drawable(read_manifest(args.images)) if r["task"] == args.task]
    s = params.scoring
    scores = styleloss_rows(rows, args.task, args.images, args.refstats, validate.vgg_spec(params, root),
                            s.style.image_size, s.batch_size)
    write_scores(args.out, scores)
    print(f"{'styleloss' if args.task == 'style' else 'loraloss'}: {len(scores)} rows -> {args.out}")


if __name__ == "__main__":
    main()
