"""DVC stage refstats: Gram statistics of every style's reference images and every LoRA's header images, once."""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview.errors import about, stage_main
from ghostreview.util.runtime import scoring_params, stage_runtime

stage_runtime()

from ghostreview import config  # noqa: E402
from ghostreview.protocol import BenchmarkError, load_benchmark  # noqa: E402
from ghostreview.scoring.run import header_families, write_refstats  # noqa: E402


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, type=Path, help="output directory (styles/, loras/<family>/)")
    ap.add_argument("--params", default="params.yaml", type=Path)
    args = ap.parse_args(argv)

    params, root = scoring_params(args.params)
    with about(f"{args.params}: benchmark.dir = {params.benchmark.dir!r}", BenchmarkError):
        bench = load_benchmark(config.resolve(root, params.benchmark.dir))
    p = params.paths
    header_dirs, notes = header_families(
        {f: config.resolve(root, getattr(p.lora_headers, f)) for f in ("sd15", "sdxl")}
        if "lora" in params.benchmark.tasks else {})
    for note in notes:
        print(f"refstats: {note}")
    n = write_refstats(  # a broken reference set is a ReferenceImagesError (file, params key, fix) before VGG loads
        bench,
        style_dir=config.resolve(root, p.style_refs) if "style" in params.benchmark.tasks else None,
        header_dirs=header_dirs,
        style=params.scoring.style,
        root=root,
        out=args.out,
        device=params.scoring.device,
    )
    print(f"refstats: {n} reference sets -> {args.out}")


if __name__ == "__main__":
    main()
