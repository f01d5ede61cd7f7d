"""DVC stage generate@<model>: draw every benchmark image of one checkpoint (only those the image store lacks)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview.errors import UserError, about, about_paths, stage_main
from ghostreview.util.runtime import stage_runtime

stage_runtime()

from ghostreview import config  # noqa: E402
from ghostreview.protocol import BenchmarkError, images_per_item, load_benchmark  # noqa: E402
from ghostreview.generation.generate import GenerateSettings, run_generate  # noqa: E402
from ghostreview.generation.loading import CheckpointError  # noqa: E402
from ghostreview.scoring.run import reference_sets  # noqa: E402
from ghostreview.generation.store import StoreError  # noqa: E402


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="model key in params.yaml")
    ap.add_argument("--out", required=True, type=Path, help="output directory (PNGs + manifest.csv)")
    ap.add_argument("--params", default="params.yaml", type=Path)
    args = ap.parse_args(argv)
    try:  # params, benchmark and reference-image errors already name their file, key and fix
        with about(f"{args.params}: models.{args.model}", CheckpointError):
            generate(args.model, args.out, args.params)
    except StoreError as exc:
        raise UserError(
            f"{exc}. Images stored before this one are complete and will be reused; free space on that disk "
            f"(or set paths.image_store in {args.params} to one with room) and run `dvc repro` again."
        ) from exc


def generate(model: str, out: Path, params_path: Path) -> None:
    """Validate everything the model's review reads (params, sampler, checkpoint header, benchmark), then generate."""
    root = params_path.parent.resolve()
    params = config.load_params(params_path)
    if model not in params.models:
        raise config.ConfigError(f"{params_path}: no model {model!r} under models (known: {', '.join(params.models)}).")
    config.check_sampler(params, str(params_path))
    config.check_files(params, root, str(params_path))
    family = config.check_checkpoint(params, model, root, str(params_path))
    m, paths = params.models[model], params.paths
    settings = GenerateSettings(
        model_name=model,
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
    with about(f"{params_path}: benchmark.dir = {params.benchmark.dir!r}", BenchmarkError):
        bench = load_benchmark(config.resolve(root, params.benchmark.dir))
    try:
        images_per_item(bench, settings.counts)
    except BenchmarkError as exc:  # more seeds than the protocol fixes
        raise config.ConfigError(f"{params_path}: benchmark.images_per_item: {exc}") from exc
    if "lora" in params.benchmark.tasks and family in ("sd15", "sdxl"):
        # the LoRA loss of this model needs its family's header images: find out now, not after hours of drawing
        reference_sets(bench, None, {family: config.resolve(root, getattr(paths.lora_headers, family))})
    with about_paths(str(params_path), {"paths.cache": settings.cache, "paths.image_store": settings.store}):
        stats = run_generate(bench, settings, out)  # a file where paths.cache should be: an error naming the key
    print(f"generate@{model}: {stats['images']} images ({stats['drawn']} drawn, {stats['reused']} from the store, "
          f"{stats['skipped']} not drawable: see manifest flags)")


if __name__ == "__main__":
    main()
