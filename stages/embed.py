"""DVC stage embed@<model>: CLIP ViT-L/14 image embeddings of every image, computed once for aesthetic and CLIPScore."""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview.errors import stage_main
from ghostreview.util.runtime import quiet_third_party, set_cpu_threads, stage_runtime


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", required=True, type=Path, help="generate output: PNGs + manifest.csv")
    ap.add_argument("--out", required=True, type=Path, help="output .npz (image_hash, embedding)")
    ap.add_argument("--params", default="params.yaml", type=Path)
    return ap


if __name__ == "__main__":
    parser().parse_args()  # --help and usage errors answer here, before torch and the model libraries load

stage_runtime()

from ghostreview import validate  # noqa: E402
from ghostreview.generation.manifest import read_manifest  # noqa: E402
from ghostreview.scoring.run import drawable, embed_images  # noqa: E402


@stage_main
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    quiet_third_party()

    params, root = validate.for_scoring(args.params)
    set_cpu_threads(params.scoring.cpu_threads)
    rows = drawable(read_manifest(args.images))
    n = embed_images(rows, args.images, validate.clip_spec(params, root), params.scoring.batch_size, args.out)
    print(f"embed: {n} images -> {args.out}")


if __name__ == "__main__":
    main()
