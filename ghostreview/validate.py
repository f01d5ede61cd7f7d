"""The one validation sequence: params.yaml and everything it names, checked before any model loads.

The stages and ``ghostreview validate`` call these functions; nothing else reads ``params.yaml``. :func:`load` reads
the file strictly, parses it into ``ghostreview.config`` dataclasses and checks the judges' names against the
metric registry; the ``check_*`` functions look at what the values name (files, the listed judges' weights, devices,
the sampler, checkpoint headers), :func:`for_generate` is what the
generate stage of one model checks, :func:`everything` what ``ghostreview validate`` checks. Every refusal is a
:class:`ParamsError` naming the file, the key and the fix; the stages print it as an ``error:`` line.

Heavy libraries (torch, diffusers) are imported inside the checks that need them, so that loading params stays fast.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ghostreview.config import JUDGES, SLUG, ConfigError, Params, parse_params
from ghostreview.errors import UserError, about
from ghostreview.generation.families import LORA_FAMILIES, table_family
from ghostreview.protocol import BenchmarkError, images_per_item, load_benchmark, model_lora_table
from ghostreview.util.names import did_you_mean
from ghostreview.util.yamlio import YamlError, read_yaml

if TYPE_CHECKING:
    from ghostreview.generation.loading import CheckpointFile
    from ghostreview.protocol import Benchmark
    from ghostreview.scoring.hpsv21 import HpsSpec
    from ghostreview.scoring.pickscore import PickSpec
    from ghostreview.scoring.run import ClipSpec, VggSpec


class ParamsError(UserError, ConfigError):
    """A problem in params.yaml or in a file it names; the message names the file, the key and the fix.

    A ``UserError`` (stages print it without a traceback) and a ``ConfigError`` (so also a ``ValueError``).
    """


# --------------------------------------------------------------------------------------------------------------------
# Reading params.yaml


def parse(data: Mapping[str, object], source: str = "params.yaml") -> Params:
    """``config.parse_params`` and :func:`check_judges`, a refusal raised as a :class:`ParamsError`."""
    try:
        params = parse_params(data, source)
    except ConfigError as exc:
        raise ParamsError(str(exc)) from exc
    check_judges(params, source)
    check_combined(params, source)
    return params


def check_judges(params: Params, source: str = "params.yaml") -> None:
    """Every name in ``scoring.judges`` is a registered metric (``ghostreview.scoring.registry``; the config leaf
    cannot know the names). Part of :func:`parse`, so that the checkparams stage stops a typo'd judge."""
    from ghostreview.scoring.registry import REGISTRY

    problems = []
    for name in params.scoring.judges:
        if name not in REGISTRY:
            hint = did_you_mean(name, REGISTRY, quote="'")
            problems.append(f"{source}: scoring.judges has {name!r}, which is no judge.{hint} Valid: "
                            f"{', '.join(REGISTRY)}. Fix scoring.judges in {source}.")
    _one_error(problems)


def check_combined(params: Params, source: str = "params.yaml") -> None:
    """Every name in ``standardize.combined`` is a judge that ``scoring.judges`` lists (a judge not computed has no
    score to average). Part of :func:`parse`, after :func:`check_judges`; left out, :func:`combined_judges` decides."""
    from ghostreview.scoring.registry import REGISTRY

    listed = params.scoring.judges
    problems = []
    for name in params.standardize.combined or ():
        if name not in REGISTRY:
            hint = did_you_mean(name, REGISTRY, quote="'")
            problems.append(f"{source}: standardize.combined has {name!r}, which is no judge.{hint} Valid: "
                            f"{', '.join(listed)} (scoring.judges). Fix standardize.combined in {source}.")
        elif name not in listed:
            problems.append(f"{source}: standardize.combined has {name!r}, which scoring.judges does not list "
                            f"({', '.join(listed)}): it has no scores to average. Add it to scoring.judges or remove "
                            f"it from standardize.combined in {source}.")
    _one_error(problems)


def combined_judges(params: Params) -> tuple[str, ...]:
    """The judges the combined rank averages: ``standardize.combined``; left out, the article's four
    (``config.JUDGES``) that ``scoring.judges`` lists, in that order (so adding judges to a review of the four does
    not move its combined rank), or every listed judge when it lists none of the four."""
    chosen = params.standardize.combined
    if chosen is not None:
        return chosen
    return tuple(j for j in JUDGES if j in params.scoring.judges) or params.scoring.judges


def load(path: Path | str = "params.yaml") -> Params:
    """Read ``params.yaml`` strictly (``util.yamlio.read_yaml``: duplicate keys and alias bombs refused) and validate
    it; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such file. Run from the project root, where params.yaml lives.")
    try:
        data = read_yaml(path)
    except YamlError as exc:
        raise ParamsError(str(exc)) from exc
    return parse(data or {}, str(path))  # type: ignore[arg-type]  # parse refuses a non-mapping


def resolve(root: Path, rel: str) -> Path:
    """A params path: ``~`` expanded, relative paths taken from the project root."""
    path = Path(rel).expanduser()
    return path if path.is_absolute() else root / path


# --------------------------------------------------------------------------------------------------------------------
# What the values name


def _one_error(problems: list[str]) -> None:
    if problems:
        raise ParamsError("\n".join(problems))


def check_files(params: Params, root: Path, source: str = "params.yaml") -> None:
    """Check that every file the review reads exists and is of its kind (a file, or a directory for a model's
    ``config`` and PickScore's folders), before any work starts; one error lists every problem. A judge's files are
    checked only when ``scoring.judges`` lists it (:func:`judge_files`)."""
    checks = []
    for name, m in params.models.items():
        checks.append((m.checkpoint, f"models.{name}.checkpoint", "put the checkpoint there or fix the path", "file"))
        if m.vae:
            checks.append((m.vae, f"models.{name}.vae", "put the VAE file there or remove the key", "file"))
        if m.config:
            checks.append((m.config, f"models.{name}.config", "point it at a diffusers config directory", "dir"))
    checks += [(rel, key, f"see {doc}", "dir" if kind.endswith("_dir") else "file")
               for key, rel, kind, doc in judge_files(params)]
    _one_error([problem for rel, key, fix, kind in checks if (problem := _missing(root, rel, key, source, fix, kind))])


def _missing(root: Path, rel: str, key: str, source: str, fix: str, kind: str = "file") -> str | None:
    """What is wrong with ``rel`` (None when it exists and is a ``kind``: "file" or "dir")."""
    path = resolve(root, rel)
    if not path.exists():
        demo = " (demo files: run `ghostreview kit demo/kit` first)" if "demo/kit" in rel else ""
        return f"{source}: {key} = {rel!r}: file not found at {path}; {fix}{demo}."
    if kind == "dir" and not path.is_dir():
        return f"{source}: {key} = {rel!r}: {path} is a file, not a directory; {fix}."
    if kind != "dir" and path.is_dir():
        return f"{source}: {key} = {rel!r}: {path} is a directory, not a file; {fix}."
    return None


SCORER_DOC = "README, 'Scorer weights'"
JUDGES_DOC = "docs/judges.md"
_CLIP_FILES = (("scoring.clip.weights", "weights"), ("scoring.clip.model_config", "file"))
_VGG_FILES = (("scoring.style.vgg_weights", "weights"),)
# judge -> (where the docs say how to get its files, the params keys of its files with their kind): "weights" (a
# state dict file), "file", "model_dir" (a Hugging Face model folder, its one weights file a state dict),
# "processor_dir" (a processor folder with its config and tokenizer files).
# tests/test_validate_judges.py keeps the judges equal to the registry's names.
JUDGE_FILES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "aesthetic": (SCORER_DOC, (*_CLIP_FILES, ("scoring.aesthetic.weights", "weights"))),
    "clipscore": (SCORER_DOC, _CLIP_FILES),
    "styleloss": (SCORER_DOC, _VGG_FILES),
    "loraloss": (SCORER_DOC, _VGG_FILES),
    "hpsv21": (JUDGES_DOC, (("scoring.hpsv21.weights", "weights"), ("scoring.hpsv21.model_config", "file"))),
    "pickscore": (JUDGES_DOC, (("scoring.pickscore.model_dir", "model_dir"),
                               ("scoring.pickscore.processor_dir", "processor_dir"))),
    "diversity": (SCORER_DOC, _CLIP_FILES),  # the CLIP image embeddings, shared with aesthetic and CLIPScore
}


def judge_files(params: Params) -> list[tuple[str, str, str, str]]:
    """(key, path as written, kind, doc) of every file the judges of ``scoring.judges`` read, each key once, in the
    judges' order; an optional key left unset (``model_config: null``) is left out. The files of a judge not listed
    are not named: a review without PickScore does not need its folders."""
    found: dict[str, tuple[str, str, str, str]] = {}
    for judge in params.scoring.judges:
        doc, files = JUDGE_FILES[judge]
        for key, kind in files:
            rel = _value(params, key)
            if rel is not None and key not in found:
                found[key] = (key, rel, kind, doc)
    return list(found.values())


def _value(params: Params, key: str) -> typing.Any:
    """The value of a dotted params key (``scoring.clip.weights``)."""
    node: typing.Any = params
    for part in key.split("."):
        node = getattr(node, part)
    return node


def check_weights(params: Params, root: Path, source: str = "params.yaml") -> None:
    """Every weights file of the listed judges reads as tensors only: a safetensors header, or a torch file that
    ``torch.load(weights_only=True)`` accepts (memory-mapped: no tensor data read; see
    ``scoring.weights.check_state_dict_file``). PickScore's is the one weights file of its model folder (which must
    hold config.json), and its processor folder must hold its config and tokenizer files. A pickle payload (never
    run) or a corrupt file is an error naming the key here, before any model loads. Imports torch; missing files
    are left to :func:`check_files`."""
    from ghostreview.scoring.pickscore import check_processor_dir, weights_file
    from ghostreview.scoring.weights import WeightsError, check_state_dict_file

    checks: dict[str, Callable[[Path], None]] = {
        "weights": check_state_dict_file, "model_dir": lambda p: check_state_dict_file(weights_file(p)),
        "processor_dir": check_processor_dir}
    problems = []
    for key, rel, kind, _ in judge_files(params):
        path = resolve(root, rel)
        present = path.is_dir() if kind.endswith("_dir") else path.is_file()
        if kind in checks and present:
            try:
                checks[kind](path)
            except WeightsError as exc:
                problems.append(f"{source}: {key} = {rel!r}: {exc}")
    _one_error(problems)


def check_devices(params: Params, source: str = "params.yaml") -> None:
    """``generation.device`` and ``scoring.device`` name a device this machine has (``runtime.pick_device``; imports
    torch). With ``generation.engine: ray`` the images are drawn by the cluster's workers, so that one is theirs."""
    from ghostreview.util.runtime import DeviceError, pick_device

    keys = [("scoring.device", params.scoring.device)]
    if params.generation.engine != "ray":
        keys.insert(0, ("generation.device", params.generation.device))
    problems = []
    for key, name in keys:
        try:
            pick_device(name)
        except DeviceError as exc:
            problems.append(f"{source}: {key} = {name!r}: {exc}")
    _one_error(problems)


def check_sampler(params: Params, source: str = "params.yaml") -> None:
    """``generation.sampler`` with ``generation.schedule_type`` must name a key of
    ``ghostreview.generation.samplers.SAMPLERS`` (``generation.plan.sampler_name``); otherwise it would only fail
    when the first batch is drawn, after the model has loaded. Imports diffusers (seconds): the generate stage and
    ``ghostreview validate`` call it, the scoring stages do not."""
    from ghostreview.generation.plan import SamplerChoiceError, sampler_name

    g = params.generation
    try:
        sampler_name(g.sampler, g.schedule_type)
    except SamplerChoiceError as exc:
        raise ParamsError(
            f"{source}: generation.{exc.key}: {exc}. Write one of these A1111 names (case-sensitive) as "
            f"generation.{exc.key} in {source}."
        ) from None


def check_checkpoint(params: Params, name: str, root: Path, source: str = "params.yaml") -> CheckpointFile:
    """Read the header of model ``name``'s checkpoint once (no tensor data) and return it, its family known to be
    reviewable ("sd15" | "sdxl": ``.family``); check its ``vae`` file's header and its ``config`` directory too.

    Catches, before any model work: a ``base`` or ``prediction`` the file contradicts (``bases.resolve_base``),
    zero-byte, truncated or corrupt safetensors files, files that are not Stable
    Diffusion checkpoints (LoRA, VAE, diffusers component, inpainting UNet, ...), SD2.x checkpoints (not reviewable),
    pickle files (refused unless ``allow_pickle``; then read with ``torch.load(weights_only=True)``, which refuses
    code), a ``vae`` that is not a readable VAE file, and a ``config`` directory that names other classes than the
    family's pipeline (which would make diffusers import them) or points at a hub repository
    (``loading.check_config_dir``). A ``vae`` that is no file, or a ``config`` that does not exist, is left to
    :func:`check_files`.

    Raises:
        ParamsError: naming ``source``, the key (``models.<name>.checkpoint``, ``.base``, ``.prediction``, ``.vae``
            or ``.config``), the file, what is wrong and the fix.
    """
    from ghostreview.generation.bases import BaseError, resolve_base
    from ghostreview.generation.loading import CheckpointError, check_config_dir, inspect_checkpoint

    m = params.models[name]
    try:
        checkpoint = inspect_checkpoint(resolve(root, m.checkpoint), allow_pickle=m.allow_pickle)
        family = checkpoint.family  # refuses SD2 and anything that is no SD checkpoint
    except CheckpointError as exc:
        raise ParamsError(f"{source}: models.{name}.checkpoint = {m.checkpoint!r}: {exc}.") from exc
    try:  # the entry's base and prediction against the file's tensor keys, modelspec and v-pred markers
        resolve_base(checkpoint, m.base, m.prediction)
    except BaseError as exc:
        key = "prediction" if str(exc).startswith("prediction") else "base"
        raise ParamsError(f"{source}: models.{name}.{key}: {exc}.") from exc
    checks: tuple[tuple[str, str | None, Callable[[Path], bool], Callable[[Path], None]], ...] = (
        ("vae", m.vae, Path.is_file, lambda p: check_vae(p, allow_pickle=m.allow_pickle, key=f"models.{name}.vae")),
        ("config", m.config, Path.exists, lambda p: check_config_dir(p, family)))
    for key, rel, present, check in checks:
        if rel is not None and present(resolve(root, rel)):
            try:
                check(resolve(root, rel))
            except CheckpointError as exc:
                raise ParamsError(f"{source}: models.{name}.{key} = {rel!r}: {exc}.") from exc
    if family == "flux":
        check_flux_files(params, name, root, checkpoint, source)
    return checkpoint


def check_flux_files(params: Params, name: str, root: Path, checkpoint: CheckpointFile,
                     source: str = "params.yaml") -> None:
    """A Flux model's separate files, from their headers: a transformer-only checkpoint names clip_l, t5xxl and vae
    (``flux.FluxFiles.sources``: the missing keys named), and each file's header reads and holds tensors, so a
    truncated or empty T5 file is found before any drawing (which tensors: checked when the pipeline loads).

    Raises:
        ParamsError: naming ``source``, the key, the file and what is wrong.
    """
    from ghostreview.generation import flux
    from ghostreview.generation.loading import CheckpointError, read_safetensors_header

    m = params.models[name]
    named = {f: resolve(root, getattr(m, f)) if getattr(m, f) else None for f in ("clip_l", "t5xxl", "vae")}
    try:
        sources = flux.flux_files(checkpoint.path, checkpoint.shapes, checkpoint.metadata, **named).sources()
    except CheckpointError as exc:
        raise ParamsError(f"{source}: models.{name}: {exc}.") from exc
    for part, path in named.items():  # each separate file the entry names (sources: the ones drawn from)
        if path is None or path not in {p for p, _ in sources.values()}:
            continue
        try:
            keys = read_safetensors_header(path).keys() - {"__metadata__"}
        except (CheckpointError, OSError) as exc:
            raise ParamsError(f"{source}: models.{name}.{part} = {getattr(m, part)!r}: {exc}.") from exc
        if not keys:
            raise ParamsError(f"{source}: models.{name}.{part} = {getattr(m, part)!r}: {path} holds no tensors; "
                              f"point it at the Flux {part} file")


# Key prefixes of the parts of a full single-file checkpoint that a VAE file never holds (LDM/SGM layout, as
# generation.loading reads checkpoints): the UNet, and the SD1/SD2 or the SDXL text encoders.
CHECKPOINT_PARTS = {"model.diffusion_model.": "UNet", "cond_stage_model.": "text encoder",
                    "conditioner.": "text encoder"}
VAE_EXAMPLES = "e.g. vae-ft-mse-840000-ema-pruned.safetensors for SD1.5, sdxl_vae.safetensors for SDXL"


def checkpoint_parts(shapes: Mapping[str, object]) -> dict[str, str]:
    """{part: an example key} of the UNet and text-encoder parts among a file's tensor names ({} for a VAE), UNet
    first."""
    found: dict[str, str] = {}
    for prefix, part in CHECKPOINT_PARTS.items():
        example = min((k for k in shapes if k.startswith(prefix)), default=None)
        if example is not None and part not in found:
            found[part] = example
    return found


def check_vae(path: Path, *, allow_pickle: bool = False, key: str = "the VAE") -> None:
    """A standalone VAE file: readable (``loading.inspect_checkpoint``: the header, or an opted-in pickle), with a VAE
    encoder, and no UNet or text encoder. A full checkpoint given as the VAE is refused: it is a mix-up (every
    checkpoint carries its own VAE, which is what drawing without ``vae`` uses). ``key`` (``--vae``,
    ``models.<name>.vae``) is named in the fix.

    Raises:
        CheckpointError: naming the file, what it holds and the fix.
    """
    from ghostreview.generation.loading import VAE_KEYS, CheckpointError, inspect_checkpoint

    shapes = inspect_checkpoint(path, allow_pickle=allow_pickle).shapes  # read once
    parts = checkpoint_parts(shapes)
    if parts:
        held = " and ".join(f"{part} keys such as {example}" for part, example in parts.items())
        raise CheckpointError(f"{path}: a full checkpoint ({held}), not a VAE. Point {key} at the VAE file alone "
                              f"({VAE_EXAMPLES}), or leave {key} out to draw with the VAE baked into the checkpoint")
    if not any(k in shapes for k in VAE_KEYS):
        sample = ", ".join(sorted(shapes)[:3]) or "no tensors"
        raise CheckpointError(f"{path}: not a VAE file (none of {', '.join(VAE_KEYS)}; it holds {len(shapes)} tensors "
                              f"such as {sample}). Point {key} at the VAE that goes with the checkpoint "
                              f"({VAE_EXAMPLES}), or leave {key} out")


def is_model_name(name: str) -> bool:
    """``name`` can be a key of ``models``: a slug of lower-case letters, digits, ``-`` and ``_``."""
    return SLUG.fullmatch(name) is not None


def check_model_name(params: Params, name: str, source: str = "params.yaml") -> None:
    """``name`` (a stage's ``--model``) is a key of ``models``."""
    if name not in params.models:
        raise ParamsError(f"{source}: no model {name!r} under models (known: {', '.join(params.models)}).")


# --------------------------------------------------------------------------------------------------------------------
# The benchmark params name


def benchmark(params: Params, root: Path, source: str = "params.yaml") -> Benchmark:
    """The benchmark at ``benchmark.dir``; its errors name the key."""
    with about(f"{source}: benchmark.dir = {params.benchmark.dir!r}", BenchmarkError):
        return load_benchmark(resolve(root, params.benchmark.dir))


def check_images_per_item(params: Params, bench: Benchmark, source: str = "params.yaml") -> None:
    """``benchmark.images_per_item`` asks for no more seeds than the benchmark's protocol fixes."""
    try:
        images_per_item(bench, vars(params.benchmark.images_per_item))
    except BenchmarkError as exc:
        raise ParamsError(f"{source}: benchmark.images_per_item: {exc}") from exc


def check_references(params: Params, bench: Benchmark, tables: Iterable[str], root: Path, *,
                     styles: bool = True) -> None:
    """The reference images the scores need, each decoded once (``scoring.run.reference_sets``): the LoRA header
    images of the LoRA ``tables`` (``protocol.model_lora_table`` of the models) when the lora task runs and, with
    ``styles``, every style's reference images when the style task runs.

    Raises:
        ReferenceImagesError: every broken set at once, each with its directory, params key and fix.
    """
    from ghostreview.scoring.run import reference_sets

    tasks = params.benchmark.tasks
    tables = sorted(set(tables)) if "lora" in tasks else []
    headers = {f: resolve(root, getattr(params.paths.lora_headers, f)) for f in {table_family(t) for t in tables}}
    style_dir = resolve(root, params.paths.style_refs) if styles and "style" in tasks else None
    reference_sets(bench, style_dir, headers, tables)


def check_lora_files(params: Params, bench: Benchmark, tables: Iterable[str], root: Path,
                     source: str = "params.yaml") -> None:
    """Every LoRA file of the benchmark's LoRA ``tables`` is in ``paths.loras.<family>`` of the table's family (when
    the lora task runs); a directory that is missing (or a file) is named by its key, once; then one error per
    table."""
    from ghostreview.generation.generate import check_lora_files as check

    if "lora" not in params.benchmark.tasks:
        return
    problems, wanted = [], set(tables)
    for family in LORA_FAMILIES:
        mine = [t for t in bench.loras if t in wanted and table_family(t) == family]
        if not mine:
            continue
        rel = getattr(params.paths.loras, family)
        lora_dir = resolve(root, rel)
        if not lora_dir.is_dir():
            n_files = sum(len(bench.loras[t]) for t in mine)
            problems.append(_missing_lora_dir(source, family, rel, lora_dir, n_files, mine))
            continue
        for table in mine:
            try:
                check(bench.loras[table], lora_dir, f"{bench.name} LoRA table {table}")
            except BenchmarkError as exc:
                problems.append(str(exc))
    _one_error(problems)


def lora_tables_of(params: Params, bench: Benchmark, checkpoints: Mapping[str, CheckpointFile]) -> set[str]:
    """The LoRA tables the models of ``checkpoints`` draw (``protocol.model_lora_table`` of each one's resolved
    base); models whose base the file contradicts are left out (their check reports it)."""
    from ghostreview.generation.bases import BaseError, resolve_base

    tables = set()
    for name, ckpt in checkpoints.items():
        m = params.models[name]
        try:
            base = resolve_base(ckpt, m.base, m.prediction).base
            table = model_lora_table(bench, ckpt.family, base)
        except (BaseError, BenchmarkError):
            continue
        tables |= {table} if table else set()
    return tables


def _missing_lora_dir(source: str, family: str, rel: str, lora_dir: Path, n_files: int, tables: list[str]) -> str:
    what = "is a file, not a directory" if lora_dir.exists() else "is missing"
    names = " and ".join(tables)
    return (f"{source}: paths.loras.{family} = {rel!r}: the LoRA directory {lora_dir} {what}. Create it and put the "
            f"{n_files} LoRA file(s) of the {names} table{'s' if len(tables) > 1 else ''} there (see "
            f"docs/benchmark.md), fix paths.loras.{family}, or leave the LoRA task out with benchmark.tasks.")


# --------------------------------------------------------------------------------------------------------------------
# Params as the scorers' arguments (two stages each: one owner)


def clip_spec(params: Params, root: Path) -> ClipSpec:
    """``scoring.clip`` and ``scoring.device`` as the CLIP to load (the embed and clipscore stages)."""
    from ghostreview.scoring.run import ClipSpec

    c = params.scoring.clip
    return ClipSpec(c.arch, resolve(root, c.weights), resolve(root, c.model_config) if c.model_config else None,
                    c.sha256, params.scoring.device)


def vgg_spec(params: Params, root: Path) -> VggSpec:
    """``scoring.style`` and ``scoring.device`` as the VGG19 to load (the refstats and styleloss stages)."""
    from ghostreview.scoring.run import VggSpec

    s = params.scoring.style
    return VggSpec(resolve(root, s.vgg_weights), s.sha256, params.scoring.device)


def hps_spec(params: Params, root: Path) -> HpsSpec:
    """``scoring.hpsv21`` and ``scoring.device`` as the HPSv2.1 judge to load."""
    from ghostreview.scoring.hpsv21 import HpsSpec

    h = params.scoring.hpsv21
    return HpsSpec(resolve(root, h.weights), h.arch, resolve(root, h.model_config) if h.model_config else None,
                   h.sha256, params.scoring.device)


def pick_spec(params: Params, root: Path) -> PickSpec:
    """``scoring.pickscore`` and ``scoring.device`` as the PickScore judge to load."""
    from ghostreview.scoring.pickscore import PickSpec

    p = params.scoring.pickscore
    return PickSpec(resolve(root, p.model_dir), resolve(root, p.processor_dir), p.sha256, params.scoring.device)


# --------------------------------------------------------------------------------------------------------------------
# The sequences


def for_generate(params: Params, name: str, root: Path, source: str = "params.yaml") -> CheckpointFile:
    """What the generate stage of model ``name`` checks before it reads the benchmark: the name, the sampler, every
    file params names, and the checkpoint (header, family, ``vae``, ``config``), which is returned, read once.

    The stage then reads the benchmark (:func:`benchmark`, :func:`check_images_per_item`) and checks the LoRA header
    images of the checkpoint's family (:func:`check_references` with ``styles=False``): a LoRA loss that cannot be
    computed stops the stage before anything is drawn.
    """
    check_model_name(params, name, source)
    check_sampler(params, source)
    check_files(params, root, source)
    return check_checkpoint(params, name, root, source)


def for_scoring(path: Path | str) -> tuple[Params, Path]:
    """Params for a scoring stage: validated, every named file present. Returns (params, project root)."""
    path = Path(path)
    params = load(path)
    root = path.parent.resolve()
    check_files(params, root, str(path))
    return params, root


def everything(params: Params, root: Path, source: str = "params.yaml") -> tuple[dict[str, CheckpointFile], list[str]]:
    """What ``ghostreview validate`` checks, without loading any model: every file params names, the scorer weights,
    the sampler, the devices, every checkpoint, the benchmark, its LoRA files and the reference images of the
    families reviewed. Returns the checkpoints read (by model name) and every problem found, each a message naming
    the file, the key and the fix (one may hold several lines)."""
    problems: list[str] = []

    def check(fn: Callable, *args: object) -> typing.Any:
        try:
            return fn(*args)
        except UserError as exc:
            problems.append(str(exc))
            return None

    check(check_files, params, root, source)
    check(check_weights, params, root, source)
    check(check_sampler, params, source)
    check(check_devices, params, source)
    checkpoints = {}
    for name, m in params.models.items():
        # a missing checkpoint (or a directory) is reported by check_files
        if resolve(root, m.checkpoint).is_file() and (checkpoint := check(check_checkpoint, params, name, root,
                                                                          source)) is not None:
            checkpoints[name] = checkpoint
    bench = check(benchmark, params, root, source)
    if bench is not None:
        check(check_images_per_item, params, bench, source)
        tables = lora_tables_of(params, bench, checkpoints)  # the family's, or the base's own (Pony, Illustrious)
        check(check_lora_files, params, bench, tables, root, source)
        check(check_references, params, bench, tables, root)
    return checkpoints, problems


__all__ = [
    "Params",
    "ParamsError",
    "is_model_name",
    "load",
    "parse",
    "resolve",
    "check_combined",
    "check_judges",
    "judge_files",
    "JUDGE_FILES",
    "check_files",
    "check_weights",
    "check_devices",
    "check_sampler",
    "check_checkpoint",
    "check_vae",
    "checkpoint_parts",
    "check_model_name",
    "benchmark",
    "check_images_per_item",
    "check_references",
    "check_lora_files",
    "for_generate",
    "for_scoring",
    "clip_spec",
    "combined_judges",
    "vgg_spec",
    "hps_spec",
    "pick_spec",
    "everything",
]
