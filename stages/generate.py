"""DVC stage generate@<model>: draw every benchmark image of one checkpoint (only those the image store lacks)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview.runtime import stage_runtime

stage_runtime()

from ghostreview import config  # noqa: E402
from ghostreview.benchmark import load_benchmark  # noqa: E402
from ghostreview.generate import GenerateSettings, run_generate  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="model key in params.yaml")
    ap.add_argument("--out", required=True, type=Path, help="output directory (PNGs + manifest.csv)")
    ap.add_argument("--params", default="params.yaml", type=Path)
    args = ap.parse_args(argv)

    root = args.params.parent.resolve()
    params = config.load_params(args.params)
    if args.model not in params.models:
        raise SystemExit(f"{args.params}: no model {args.model!r} under models (known: {', '.join(params.models)}).")
    config.check_files(params, root, str(args.params))
    m, paths = params.models[args.model], params.paths
    settings = GenerateSettings(
        model_name=args.model,
        checkpoint=config.resolve(root, m.checkpoint),
        config_dir=config.resolve(root, m.config) if m.config else None,
        vae=config.resolve(root, m.vae) if m.vae else None,
        clip_skip=m.clip_skip,
        prediction=m.prediction,
        allow_pickle=m.allow_pickle,
        lora_dirs={"sd15": config.resolve(root, paths.loras.sd15), "sdxl": config.resolve(root, paths.loras.sdxl)},
        counts=vars(params.benchmark.images_per_item),
        tasks=params.benchmark.tasks,
        generation=params.generation,
        store=config.resolve(root, paths.image_store),
        cache=config.resolve(root, paths.cache),
    )
    bench = load_benchmark(config.resolve(root, params.benchmark.dir))
    stats = run_generate(bench, settings, args.out)
    print(f"generate@{args.model}: {stats['images']} images ({stats['drawn']} drawn, {stats['reused']} from the store, "
          f"{stats['skipped']} not drawable: see manifest flags)")


if __name__ == "__main__":
    main()
