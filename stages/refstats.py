"""DVC stage refstats: Gram statistics of every style's reference images and every LoRA's header images, once."""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview.errors import stage_main
from ghostreview.util.runtime import quiet_third_party, set_cpu_threads, stage_runtime


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, type=Path, help="output directory (styles/, loras/<family>/)")
    ap.add_argument("--params", default="params.yaml", type=Path)
    return ap


if __name__ == "__main__":
    parser().parse_args()  # --help and usage errors answer here, before torch and the model libraries load

stage_runtime()

from ghostreview import validate  # noqa: E402
from ghostreview.generation.families import LORA_FAMILIES  # noqa: E402
from ghostreview.scoring.run import header_families, write_refstats  # noqa: E402


@stage_main
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    quiet_third_party()

    params, root = validate.for_scoring(args.params)
    set_cpu_threads(params.scoring.cpu_threads)
    bench = validate.benchmark(params, root, str(args.params))
    p = params.paths
    header_dirs, notes = header_families(
        {f: validate.resolve(root, getattr(p.lora_headers, f)) for f in LORA_FAMILIES}
        if "lora" in params.benchmark.tasks else {})
    for note in notes:
        print(f"refstats: {note}")
    n = write_refstats(  # a broken reference set is a ReferenceImagesError (file, params key, fix) before VGG loads
        bench,
        style_dir=validate.resolve(root, p.style_refs) if "style" in params.benchmark.tasks else None,
        header_dirs=header_dirs,
        vgg_spec=validate.vgg_spec(params, root),
        image_size=params.scoring.style.image_size,
        out=args.out,
    )
    print(f"refstats: {n} reference sets -> {args.out}")


if __name__ == "__main__":
    main()
