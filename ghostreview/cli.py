"""The ``ghostreview`` command line: build the demo kit, check params, import LoRA headers, convert CLIP, print
results.

Nothing heavy is imported at module level: ``ghostreview --help``, ``--version``, ``leaderboard``, ``cut-benchmark``,
``import-infotext`` and ``store verify`` never load torch (tests/test_cli.py checks ``sys.modules``). The commands that
load torch, diffusers or open_clip call :func:`_model_runtime` first, which sets the offline environment before any
of them is imported.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import NoReturn

import typer

app = typer.Typer(help="GhostReview: reproducible reviews of Stable Diffusion checkpoints.", no_args_is_help=True)


def _fail(message: str) -> NoReturn:
    """``error: <line>`` on stderr for each line of ``message`` (a check may list several), then exit status 2."""
    for line in message.splitlines() or [""]:
        typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _model_runtime() -> None:
    """The stages' runtime (hub calls fail at once, denormals flushed) for a command that loads models: imports torch,
    so only those commands call it, before they import diffusers, transformers or open_clip."""
    from ghostreview.util.runtime import stage_runtime

    stage_runtime()


def _version() -> str:
    """The installed package's version (importlib.metadata), as pip reports it."""
    from importlib import metadata

    try:
        return metadata.version("ghostreview")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: run `pip install -e .` in the repository)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ghostreview {_version()}")
        raise typer.Exit(0)


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the installed version and exit"),
) -> None:
    """GhostReview: reproducible reviews of Stable Diffusion checkpoints."""


@app.command()
def kit(
    dest: Path = typer.Argument(Path("demo/kit"), help="where to write the demo kit"),
    benchmark: Path = typer.Option(Path("data/benchmark/v1"),
                                   help="benchmark whose LoRA and style names the kit fills"),
    seed: int = typer.Option(0, help="seed of every random weight and image in the kit"),
) -> None:
    """Build the offline demo kit: tiny random-weight checkpoints, LoRAs, scorers and reference images."""
    _model_runtime()
    from ghostreview.kit.demo import build_demo_kit
    from ghostreview.protocol import load_benchmark

    build_demo_kit(dest, load_benchmark(benchmark), seed=seed)
    typer.echo(f"demo kit ready in {dest} (random weights: its rankings mean nothing)")


def _describe_base(ckpt, model) -> str:
    """``sd15``; ``sdxl: noobai, v-prediction``; ``flux: flux1-dev``: the family, and the base and prediction where
    they are not the family's plain ones (as the generate stage will resolve them; validated before)."""
    from ghostreview.generation.bases import PLAIN_BASES, resolve_base

    told = resolve_base(ckpt, model.base, model.prediction)
    extra = [told.base] if told.base != PLAIN_BASES.get(told.family) else []
    extra += ["v-prediction"] if told.prediction == "v_prediction" else []
    return f"{told.family}: {', '.join(extra)}" if extra else told.family


@app.command()
def validate(params: Path = typer.Option(Path("params.yaml"), help="params file to check")) -> None:
    """Check params.yaml and every file it names (checkpoint headers, scorer weights, sampler, devices, benchmark,
    LoRA files, reference images), without loading any model. Lists every problem found, each with its key and fix."""
    from ghostreview import validate as checks

    try:
        p = checks.load(params)  # nothing else can be checked without a parseable params file
    except checks.ParamsError as exc:
        _fail(str(exc))  # every key's problem, a line each
    _model_runtime()  # the weights, sampler and device checks import torch and diffusers
    checkpoints, problems = checks.everything(p, params.parent.resolve(), str(params))
    if problems:
        _fail("\n".join(problems))
    described = ", ".join(f"{n} ({_describe_base(c, p.models[n])})" for n, c in checkpoints.items())
    typer.echo(f"{params}: OK ({len(p.models)} models: {described})")


@app.command("cut-benchmark")
def cut_benchmark_cmd(
    dest: Path = typer.Argument(..., help="new directory for the cut benchmark"),
    source: Path = typer.Option(Path("data/benchmark/v1"), help="benchmark to cut"),
    general: int = typer.Option(2, help="general prompts to keep"),
    styles: int = typer.Option(2, help="styles to keep"),
    loras: int = typer.Option(2, help="LoRAs to keep per family"),
) -> None:
    """Copy the benchmark keeping its first few items per task: a smoke-test run (set benchmark.dir to it)."""
    from ghostreview.protocol import BenchmarkError, cut_benchmark

    try:
        bench = cut_benchmark(source, dest, general, styles, loras)
    except BenchmarkError as exc:
        _fail(str(exc))
    typer.echo(f"{dest}: {bench.name} (general prompts: {len(bench.general)}, styles: {len(bench.styles)}, LoRAs per "
               f"family: {len(bench.loras['sd15'])}); set benchmark.dir: {dest} in params.yaml to use it")


class BoardFormat(str, enum.Enum):
    """``leaderboard --format``: the formats ``print_leaderboard`` writes."""

    text = "text"
    md = "md"
    json = "json"
    csv = "csv"


@app.command()
def leaderboard(
    path: Path = typer.Argument(Path("reports/leaderboard.csv"), help="leaderboard written by the report stage"),
    fmt: BoardFormat = typer.Option(BoardFormat.text, "--format",
                                    help="text (a table for the terminal), md (Markdown), json or csv"),
) -> None:
    """Print the leaderboard in the terminal (or as Markdown, JSON or CSV for other tools)."""
    from ghostreview.analysis.report import print_leaderboard

    if not path.is_file():
        _fail(f"{path} not found: run `dvc repro` first.")
    print_leaderboard(path, fmt=fmt.value)


@app.command("freeze-reference")
def freeze_reference(
    name: str = typer.Argument(..., help="reference set name (a slug): references/<name>.json"),
    params: Path = typer.Option(Path("params.yaml"), help="params file of the finished review"),
    standardized: Path = typer.Option(Path("data/standardized"), help="the standardize stage's output"),
    images: Path = typer.Option(Path("data/images"), help="the generate stages' output (model.json)"),
    out: Path = typer.Option(Path("references"), help="folder of reference sets (the standardize stage's dep)"),
) -> None:
    """Freeze the finished review's per-item means and spreads as reference set NAME (its models the anchors)."""
    from ghostreview.analysis.reference import freeze_review
    from ghostreview.errors import UserError
    from ghostreview.validate import load

    try:  # params, reference and manifest problems are UserErrors naming the file and the fix
        path = freeze_review(standardized, images, list(load(params).models), name, out)
    except UserError as exc:
        _fail(str(exc))
    typer.echo(f"{path}: frozen; commit it (git add {path}), set standardize.reference: {name} in {params} and run "
               "dvc repro")


@app.command()
def plan(
    standardized: Path = typer.Option(Path("data/standardized"), help="the standardize stage's output"),
    half_width: float = typer.Option(0.05, help="target half-width of a model's score interval (z)"),
    difference: float = typer.Option(0.2, help="difference (z) between two models to separate"),
    power: float = typer.Option(0.8, help="target chance of separating them"),
    seeds: str = typer.Option("1,2,4,8,16", help="seed counts per item to plan for, comma-separated"),
    seconds_per_image: float | None = typer.Option(None, help="measured GPU seconds per image (for GPU hours)"),
) -> None:
    """How many items and seeds a review needs, from the variance components of a finished one."""
    from ghostreview.analysis.planning import plan_table, plan_text, review_components
    from ghostreview.analysis.standardize import Standardized

    try:
        counts = [int(k) for k in seeds.split(",")]
        result = Standardized.read(standardized)
    except (ValueError, FileNotFoundError) as exc:
        _fail(f"{exc} (--seeds takes integers such as 1,2,4)")
    if not (half_width > 0 and difference > 0 and 0 < power < 1 and all(k >= 1 for k in counts)):
        _fail("--half-width and --difference must be > 0, --power in (0, 1), each of --seeds >= 1")
    ci, comps = float(result.meta.get("ci", 0.95)), review_components(result)
    table = plan_table(comps, target_half_width=half_width, difference=difference, target_power=power, ci=ci,
                       seeds=counts, seconds_per_image=seconds_per_image)
    typer.echo(plan_text(table, comps, ci))


@app.command("import-infotext")
def import_infotext(
    images: list[Path] = typer.Argument(..., help="header images saved with their A1111 parameters (PNG, JPEG, WebP)"),
    table: Path | None = typer.Option(None, help="LoRA table YAML to append to (default: print the entries)"),
    name: str | None = typer.Option(None, help="LoRA name (slug) for a single image"),
    replace: bool = typer.Option(False, help="replace the table's entry of the same name in place"),
) -> None:
    """Read A1111 infotext from header images (PNG text, JPEG/WebP EXIF UserComment) and write LoRA-table entries
    (prompt, negative, settings, LoRA tags); says which LoRA file each entry's tag draws and where the files go."""
    import yaml

    from ghostreview.import_infotext import (
        append_entries,
        lora_entry_from_png,
        placement,
        table_family,
        unresolved_tags,
    )

    if name is not None and len(images) > 1:
        _fail(f"--name {name} names one LoRA but {len(images)} images were given. Import one image with --name, or "
              f"leave --name out: each entry is then named after its LoRA tag (or its file name).")
    try:
        entries = [lora_entry_from_png(p, name) for p in images]
        # without a table, the tags are checked against the entries printed together
        warnings = append_entries(table, entries, replace=replace) if table else unresolved_tags(entries)
    except ValueError as exc:
        _fail(str(exc))
    for warning in warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    if table:
        typer.echo(f"added {len(entries)} {'entry' if len(entries) == 1 else 'entries'} to {table}")
    else:
        typer.echo(yaml.safe_dump({"loras": entries}, sort_keys=False, allow_unicode=True))
    family = table_family(table) if table else None
    for entry in entries:  # on stderr: printed entries stay YAML on stdout
        typer.echo(placement(entry, family), err=True)


def _not_torchscript(src: Path) -> str | None:
    """Why ``src`` is not a TorchScript archive (None when it looks like one), read from its zip directory only.

    A TorchScript file is a zip holding ``<name>/constants.pkl`` and ``<name>/code/``; ``torch.save`` writes a zip
    with ``data.pkl`` and no ``constants.pkl``.
    """
    import zipfile

    weights_hint = "(see README, 'Scorer weights')"
    if src.is_dir():
        return f"is a directory. Give the path of OpenAI's TorchScript ViT-L-14.pt {weights_hint}."
    if not src.is_file():
        return f"no such file. Give the path of OpenAI's TorchScript ViT-L-14.pt {weights_hint}."
    try:
        with zipfile.ZipFile(src) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        return (f"not a TorchScript archive ({exc}): the download is incomplete or this is another file. Download "
                f"OpenAI's ViT-L-14.pt again {weights_hint}.")
    if not any(n.endswith("/constants.pkl") for n in names):
        return ("a torch.save file, not a TorchScript archive: convert-clip converts OpenAI's TorchScript ViT-L-14.pt "
                "only. A state dict of CLIP's weights needs no conversion: point scoring.clip.weights at it.")
    return None


@app.command("convert-clip")
def convert_clip(
    src: Path = typer.Argument(..., help="OpenAI's TorchScript ViT-L-14.pt"),
    dst: Path = typer.Argument(..., help="state-dict file to write (point scoring.clip.weights at it)"),
) -> None:
    """Turn OpenAI's TorchScript CLIP archive into a plain state dict, once (open_clip loads it with weights_only)."""
    from ghostreview.errors import describe_os_error, is_bad_path

    problem = _not_torchscript(src)
    if problem:
        _fail(f"{src}: {problem}")
    if dst.is_dir():
        _fail(f"{dst}: is a directory. Give the file to write, e.g. {dst / 'open_clip_vit_l14_quickgelu.bin'}.")
    _model_runtime()
    from ghostreview.scoring.clip import convert_openai_clip

    try:
        convert_openai_clip(src, dst)
    except RuntimeError as exc:  # torch.jit.load of an archive with TorchScript's layout but damaged contents
        reason = str(exc).split(". ")[0].splitlines()[0]
        _fail(f"{src}: torch.jit.load cannot read it ({reason}). Download OpenAI's ViT-L-14.pt again.")
    except OSError as exc:
        if not is_bad_path(exc):
            raise
        _fail(f"cannot write {dst}: {describe_os_error(exc, {})}")
    typer.echo(f"wrote {dst}")


@app.command("add-model")
def add_model(
    path: Path = typer.Argument(..., help="single-file checkpoint (.safetensors)"),
    name: str | None = typer.Option(None,
                                    help="model name (slug) in params and stage names; default: from the file name"),
    vae: Path | None = typer.Option(None, help="single-file VAE to draw with"),
    clip_skip: int | None = typer.Option(None, help="clip skip in A1111 numbering (2 for most anime models)"),
    base: str | None = typer.Option(None, help="checkpoint base: sd15, sdxl, pony, illustrious or noobai (its prompts "
                                               "and settings; default: from the file)"),
    title: str | None = typer.Option(None, help="name shown in the report"),
    allow_pickle: bool = typer.Option(False, help="accept a pickle .ckpt (loaded with torch.load(weights_only=True))"),
    params: Path = typer.Option(Path("params.yaml"), help="params file to edit (comments and order are kept)"),
) -> None:
    """Check a checkpoint (header, family, sha256) and add it under models in params.yaml; then run `dvc repro`."""
    _model_runtime()
    from ghostreview import models_cli
    from ghostreview.generation.loading import CheckpointError
    from ghostreview.validate import ParamsError

    try:
        added = models_cli.add_model(params, path, name=name, vae=vae, clip_skip=clip_skip, allow_pickle=allow_pickle,
                                     title=title, base=base)
    except (models_cli.ModelsError, CheckpointError, ParamsError, FileNotFoundError) as exc:
        _fail(str(exc))
    for other in added.same_file_as:
        typer.secho(f"warning: {path} is the same file as models.{other}'s checkpoint (sha256 {added.sha256}): both "
                    f"are reviewed, as two models. If that was not meant, `ghostreview remove-model {added.name}`.",
                    fg=typer.colors.YELLOW, err=True)
    typer.echo(f"added models.{added.name} to {params}: {added.family} checkpoint {added.checkpoint} "
               f"(AutoV2 {added.autov2}, sha256 {added.sha256}), base {added.base}"
               f"{', v-prediction' if added.prediction == 'v_prediction' else ''}. Run `dvc repro` to review it.")
    if base is None and added.base == "sdxl":
        typer.echo("note: reviewed as a plain SDXL fine-tune; for a Pony, Illustrious or NoobAI model pass --base "
                   "pony|illustrious|noobai (their prompt conventions and settings, data/benchmark/v1/bases.yaml).")


@app.command("remove-model")
def remove_model(
    name: str = typer.Argument(..., help="model name under models in params.yaml"),
    params: Path = typer.Option(Path("params.yaml"), help="params file to edit (comments and order are kept)"),
) -> None:
    """Remove a model from params.yaml with its outputs and dvc.lock entries; `dvc repro` then drops it from the
    report."""
    _model_runtime()
    from ghostreview import models_cli
    from ghostreview.validate import ParamsError

    try:
        removed = models_cli.remove_model(params, name)
    except (models_cli.ModelsError, ParamsError) as exc:
        _fail(str(exc))
    where = f"removed models.{name} from {params}" if removed.in_params else f"{name} was not in {params}"
    typer.echo(f"{where}; deleted {len(removed.outputs)} outputs and {len(removed.lock_entries)} dvc.lock entries. "
               "Run `dvc repro` to update the report.")


store_app = typer.Typer(help="The image store (paths.image_store): check it, move damaged images aside.",
                        no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("verify")
def store_verify(
    store: Path | None = typer.Option(None, help="image store to check (default: paths.image_store of --params)"),
    params: Path = typer.Option(Path("params.yaml"), help="params file naming the store"),
    fix: bool = typer.Option(False, help="move every bad entry to <store>/corrupt/ (generate draws it again)"),
) -> None:
    """Check every image in the store against the sha256 recorded when it was stored. Lists damaged PNGs (truncated,
    replaced), unreadable metadata, entries without a recorded hash, half entries and stray temporary files; exit
    status 1 when any is found."""
    from ghostreview import validate as checks
    from ghostreview.generation.store import ImageStore

    where = "--store"
    if store is None:
        try:
            store = checks.resolve(params.parent.resolve(), checks.load(params).paths.image_store)
        except checks.ParamsError as exc:
            _fail(str(exc))
        where = f"paths.image_store in {params}"
    if not store.is_dir():
        _fail(f"no image store at {store} ({where}): fix the path; a store is created by the first generate stage.")
    images = ImageStore(store)
    try:
        keys = list(images.keys())
        problems = [p for p in map(images.check, keys) if p] + list(images.strays())
        for problem in problems:
            typer.echo(str(problem))
            if fix:
                images.set_aside(problem)
    except OSError as exc:  # an unreadable shard, a file that cannot be moved
        _fail(f"{exc}. Give this user access to {store}, or run it as the store's owner.")
    summary = f"{store}: {len(keys)} entries, {len(problems) or 'no'} problems"
    if problems and fix:
        summary += f"; moved {len(problems)} to {images.quarantine} (generate draws those images again)"
    elif problems:
        summary += f"; `ghostreview store verify --fix` moves them to {images.quarantine} (generate draws them again)"
    typer.echo(summary)
    raise typer.Exit(1 if problems else 0)


arena_app = typer.Typer(help="The arena: people vote between two models' images of the same prompt and seed "
                             "(docs/arena.md).", no_args_is_help=True)
app.add_typer(arena_app, name="arena")


@arena_app.command("serve")
def arena_serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on; a LAN one (0.0.0.0) needs --token"),
    port: int = typer.Option(8765, help="port to listen on"),
    token: str | None = typer.Option(None, envvar="GHOSTREVIEW_ARENA_TOKEN",
                                     help="join token voters must bring once (?token=...); needed off loopback"),
    rate: float = typer.Option(2.0, help="votes per second per voter, sustained (bursts of 10)"),
    db: Path = typer.Option(Path("data/arena/votes.sqlite"), help="the vote database (SQLite, created if absent)"),
    images: Path = typer.Option(Path("data/images"), help="generate's outputs: <model>/manifest.csv and images"),
    params: Path = typer.Option(Path("params.yaml"), help="params file listing the models to compare"),
) -> None:
    """Serve the voting page: two models' images of the same prompt and seed, names hidden, sides random."""
    from ghostreview import validate as checks
    from ghostreview.arena.pairs import review_images
    from ghostreview.arena.server import ArenaConfig, serve_arena
    from ghostreview.errors import UserError

    try:
        shown = review_images(images, list(checks.load(params).models))
        serve_arena(ArenaConfig(db=db, images=shown, host=host, token=token, rate=rate), port)
    except (checks.ParamsError, UserError, ValueError) as exc:
        _fail(str(exc))


@arena_app.command("export")
def arena_export(
    db: Path = typer.Option(Path("data/arena/votes.sqlite"), help="the vote database"),
    out: Path = typer.Option(Path("data/arena/votes.csv"), help="the sorted votes file the arena stage reads"),
) -> None:
    """Write every vote to a sorted, deterministic CSV (then `dvc add` it and `dvc push`: docs/arena.md)."""
    from ghostreview.arena.export import export_votes

    typer.echo(f"{out}: {export_votes(db, out)} votes from {db}")


if __name__ == "__main__":
    app()
