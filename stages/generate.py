"""DVC stage generate@<model>: draw every benchmark image of one checkpoint (only those the image store lacks)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ghostreview.errors import UserError, about, about_paths, stage_main
from ghostreview.util.runtime import stage_runtime


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="model key in params.yaml")
    ap.add_argument("--out", required=True, type=Path, help="output directory (PNGs + manifest.csv)")
    ap.add_argument("--params", default="params.yaml", type=Path)
    return ap


if __name__ == "__main__":
    parser().parse_args()  # --help and usage errors answer here, before torch and the model libraries load

stage_runtime()

from ghostreview import validate  # noqa: E402
from ghostreview.config import GenerationParams, Params  # noqa: E402
from ghostreview.generation.bases import BaseError, ModelBase, resolve_base  # noqa: E402
from ghostreview.generation.draw import Hires  # noqa: E402
from ghostreview.generation.families import LORA_FAMILIES  # noqa: E402
from ghostreview.generation.generate import EngineChoice, GenerateSettings, run_generate  # noqa: E402
from ghostreview.generation.loading import CheckpointError, CheckpointFile  # noqa: E402
from ghostreview.generation.plan import DrawSettings, SamplerChoiceError, sampler_name  # noqa: E402
from ghostreview.generation.store import StoreError  # noqa: E402
from ghostreview.protocol import BaseSettings, Benchmark, BenchmarkError, base_protocol  # noqa: E402


@stage_main
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:  # params, benchmark and reference-image errors already name their file, key and fix
        with about(f"{args.params}: models.{args.model}", (CheckpointError, BaseError)):
            generate(args.model, args.out, args.params)
    except StoreError as exc:
        raise UserError(
            f"{exc}. Images stored before this one are complete and will be reused; free space on that disk "
            f"(or set paths.image_store in {args.params} to one with room) and run `dvc repro` again."
        ) from exc


def draw_settings(g: GenerationParams, over: BaseSettings = BaseSettings()) -> DrawSettings:
    """params' ``generation`` section as the library's plain settings (numbers as the floats A1111 writes), with
    ``over`` (a model's base and entry) where set. A sampler named above the generation section takes its schedule
    type from there too (None: the name alone decides), never the generation sampler's."""
    h = g.hires
    hires = Hires(float(h.scale), h.steps, float(h.denoising_strength), h.upscaler) if h.enabled else None
    named = over.sampler is not None or over.schedule_type is not None
    sampler = sampler_name(over.sampler or g.sampler, over.schedule_type if named else g.schedule_type)
    return DrawSettings(sampler, over.steps or g.steps, float(over.cfg_scale or g.cfg_scale), over.width or g.width,
                        over.height or g.height, None if over.hires is False else hires, g.batch_size, g.device,
                        g.dtype, g.cpu_threads)


def model_settings(params: Params, model: str, resolved: ModelBase, bench: Benchmark) -> BaseSettings:
    """The model entry's settings over its base's (bases.yaml, for its prediction type). A sampler the entry names
    takes the entry's schedule type (None: the name alone decides, as for generation.sampler), not its base's."""
    m = params.models[model]
    own = BaseSettings(m.sampler, m.schedule_type, m.steps, m.cfg_scale, m.clip_skip, m.width, m.height)
    below = base_protocol(bench, resolved.base).settings_for(resolved.prediction)
    if m.sampler is not None:
        below = dataclasses.replace(below, schedule_type=None)
    return own.over(below)


def settings_for(params: Params, model: str, ckpt: CheckpointFile, root: Path,
                 bench: Benchmark) -> GenerateSettings:
    """Everything ``run_generate`` needs for ``model``, its paths resolved from the project root; its base and
    prediction read from the model entry and the file (``bases.resolve_base``), its settings from the base's."""
    m, paths, g = params.models[model], params.paths, params.generation
    resolved = resolve_base(ckpt, m.base, m.prediction)
    over = model_settings(params, model, resolved, bench)
    return GenerateSettings(
        model_name=model,
        checkpoint=ckpt,
        config_dir=validate.resolve(root, m.config) if m.config else None,
        vae=validate.resolve(root, m.vae) if m.vae else None,
        clip_skip=over.clip_skip or 1,
        prediction=resolved.prediction,
        allow_pickle=m.allow_pickle,
        lora_dirs={f: validate.resolve(root, getattr(paths.loras, f)) for f in LORA_FAMILIES},
        counts=vars(params.benchmark.images_per_item),
        tasks=params.benchmark.tasks,
        generation=draw_settings(g, over),
        store=validate.resolve(root, paths.image_store),
        cache=validate.resolve(root, paths.cache),
        engine=EngineChoice(g.engine, g.ray_address, g.ray_workers),
        base=resolved.base,
        prose=m.prose,
        clip_l=validate.resolve(root, m.clip_l) if m.clip_l else None,  # Flux's separate files (docs/flux.md)
        t5xxl=validate.resolve(root, m.t5xxl) if m.t5xxl else None,
        t5_tokenizer=validate.resolve(root, m.t5_tokenizer) if m.t5_tokenizer else None,
    )


def generate(model: str, out: Path, params_path: Path) -> None:
    """Validate everything the model's review reads (params, sampler, checkpoint header, benchmark), then generate."""
    root, source = params_path.parent.resolve(), str(params_path)
    params = validate.load(params_path)
    ckpt = validate.for_generate(params, model, root, source)  # the checkpoint, read once and passed down
    bench = validate.benchmark(params, root, source)
    validate.check_images_per_item(params, bench, source)
    # the LoRA loss of this model needs its LoRA table's header images: find out now, not after hours of drawing
    validate.check_references(params, bench, validate.lora_tables_of(params, bench, {model: ckpt}), root,
                              styles=False)
    with about(f"{source}: models.{model} (its base's settings in bases.yaml, or its own)",
               (SamplerChoiceError, BenchmarkError)):
        settings = settings_for(params, model, ckpt, root, bench)
    with about_paths(source, {"paths.cache": settings.cache, "paths.image_store": settings.store}):
        stats = run_generate(bench, settings, out)  # a file where paths.cache should be: an error naming the key
    print(f"generate@{model}: {stats['images']} images ({stats['drawn']} drawn, {stats['reused']} from the store, "
          f"{stats['skipped']} not drawable: see manifest flags)")


if __name__ == "__main__":
    main()
