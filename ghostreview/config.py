"""Typed, strict view of ``params.yaml``.

Config flows one way: ``params.yaml`` -> a stage script -> :func:`load_params` -> frozen dataclasses -> plain function
arguments. Unknown keys, wrong types and bad values stop with a :class:`ConfigError` that names the file, the key and
the fix, before any expensive work starts. Nothing in the library reads ``params.yaml`` except through here, and only
stage scripts and the CLI call it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from ghostreview.errors import UserError

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
TASKS = ("general", "style", "lora")


class ConfigError(UserError, ValueError):
    """A problem in params.yaml; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class ImagesPerItem:
    """Images drawn per benchmark item; the full v1 protocol is general 32, style 32, lora 20."""

    general: int = 32
    style: int = 32
    lora: int = 20


@dataclass(frozen=True)
class BenchmarkParams:
    dir: str = "data/benchmark/v1"
    images_per_item: ImagesPerItem = ImagesPerItem()
    tasks: tuple[str, ...] = TASKS


@dataclass(frozen=True)
class FamilyPaths:
    sd15: str = "loras/sd15"
    sdxl: str = "loras/sdxl"


@dataclass(frozen=True)
class PathParams:
    loras: FamilyPaths = FamilyPaths()
    lora_headers: FamilyPaths = FamilyPaths("lora_headers/sd15", "lora_headers/sdxl")
    style_refs: str = "style_refs"
    image_store: str = "~/.cache/ghostreview/images"
    cache: str = "~/.cache/ghostreview"


@dataclass(frozen=True)
class HiresParams:
    enabled: bool = True
    scale: float = 2.0
    steps: int = 10
    denoising_strength: float = 0.5
    upscaler: Literal["Latent", "Lanczos"] = "Latent"


@dataclass(frozen=True)
class GenerationParams:
    sampler: str = "DPM++ 2M Karras"
    steps: int = 25
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    batch_size: int = 4
    hires: HiresParams = HiresParams()
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    cpu_threads: int = 0
    # Where missing images are drawn: "local" (the stage's process) or "ray" (workers of a Ray cluster sharing the
    # image store's filesystem; pip install -e '.[ray]'). ray_address: None starts Ray on this machine;
    # ray_workers: 0 = one per GPU of the cluster (or per cpu_threads CPUs when it has none).
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_workers: int = 0


@dataclass(frozen=True)
class ClipParams:
    arch: str = "ViT-L-14-quickgelu"
    weights: str = "weights/open_clip_vit_l14_quickgelu.bin"
    model_config: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class AestheticParams:
    weights: str = "weights/sac+logos+ava1-l14-linearMSE.pth"
    sha256: str | None = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
    good_threshold: float = 6.0


@dataclass(frozen=True)
class StyleParams:
    vgg_weights: str = "weights/vgg19-dcbb9e9d.pth"
    sha256: str | None = None
    image_size: int = 512  # not `size`: DVC's run cache ignores params of that name (treeverse/dvc#10296)


@dataclass(frozen=True)
class ScoringParams:
    clip: ClipParams = ClipParams()
    aesthetic: AestheticParams = AestheticParams()
    style: StyleParams = StyleParams()
    batch_size: int = 16
    device: str = "auto"
    cpu_threads: int = 0


@dataclass(frozen=True)
class StandardizeParams:
    bootstrap: int = 1000
    seed: int = 0
    confidence: float = 0.95


@dataclass(frozen=True)
class ModelParams:
    """One reviewed checkpoint. ``config`` overrides the shipped diffusers config directory of its family."""

    checkpoint: str
    vae: str | None = None
    clip_skip: int = 1
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    config: str | None = None
    allow_pickle: bool = False
    title: str | None = None


@dataclass(frozen=True)
class Params:
    models: dict[str, ModelParams]
    benchmark: BenchmarkParams = BenchmarkParams()
    paths: PathParams = PathParams()
    generation: GenerationParams = GenerationParams()
    scoring: ScoringParams = ScoringParams()
    standardize: StandardizeParams = StandardizeParams()


# --------------------------------------------------------------------------------------------------------------------
# Strict conversion of plain YAML data into the dataclasses above.


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f' Did you mean "{close[0]}"?' if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where, source)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: {where} = {value!r} is not allowed; use one of {allowed}.")
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {where} must be a mapping, got {type(value).__name__}.")
        return {str(k): _convert(args[1], v, f"{where}.{k}", source) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {where} must be a list, got {type(value).__name__} ({value!r}).")
        return tuple(_convert(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value))
    return _scalar(tp, value, where, source)


def _scalar(tp: type, value: Any, where: str, source: str) -> Any:
    ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(
            f"{source}: {where} must be {_type_name(tp)}, got {type(value).__name__} ({value!r}). "
            f"Fix the value of {where} in {source}."
        )
    return value


def _build(cls: type, data: Any, where: str, source: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {where or 'the top level'} must be a mapping, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"{source}: unknown key {_join(where, key)}.{_did_you_mean(str(key), fields)} "
                f"Valid keys here: {', '.join(fields)}."
            )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(where, name), source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{source}: missing required key {_join(where, name)}. Add it to {source}.")
    return cls(**kwargs)


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


# --------------------------------------------------------------------------------------------------------------------
# Semantic checks that types alone do not catch.


def _check_values(p: Params, source: str) -> None:
    if not p.models:
        raise ConfigError(f"{source}: models is empty. Add a checkpoint: ghostreview add-model PATH (see README).")
    for name in p.models:
        if not SLUG.match(name) or ".." in name:
            raise ConfigError(
                f"{source}: models.{name!r} is not a valid model name: use a slug of lower-case letters, digits, "
                f"'-' and '_' (no '/', '.', spaces), e.g. {_slugify(name)!r}. The file name goes in 'checkpoint:'."
            )
    for task, n in dataclasses.asdict(p.benchmark.images_per_item).items():
        if n < 1:
            raise ConfigError(
                f"{source}: benchmark.images_per_item.{task} = {n}; it must be at least 1 "
                f"(to leave the {task} task out, remove it from benchmark.tasks)."
            )
    for task in p.benchmark.tasks:
        if task not in TASKS:
            raise ConfigError(f"{source}: benchmark.tasks has {task!r};{_did_you_mean(task, TASKS)} Valid: {TASKS}.")
    g = p.generation
    for key, size in (("width", g.width), ("height", g.height)):
        if size < 8 or size % 8:
            raise ConfigError(
                f"{source}: generation.{key} = {size} is not a positive multiple of 8 (the VAE downsamples by 8); "
                f"use e.g. {max(8, round(size / 8) * 8)}."
            )
    _positive(source, "generation.steps", g.steps)
    _positive(source, "generation.batch_size", g.batch_size)
    if g.ray_workers < 0:
        raise ConfigError(f"{source}: generation.ray_workers = {g.ray_workers}; use 0 (one per GPU) or a positive count.")
    if g.engine != "ray" and (g.ray_address is not None or g.ray_workers):
        raise ConfigError(
            f"{source}: generation.ray_address/ray_workers are set but generation.engine is {g.engine!r}; "
            f"set engine: ray to use the cluster, or remove them."
        )
    _positive(source, "scoring.batch_size", p.scoring.batch_size)
    _positive(source, "scoring.style.image_size", p.scoring.style.image_size)
    _positive(source, "standardize.bootstrap", p.standardize.bootstrap)
    if g.hires.enabled:
        _positive(source, "generation.hires.steps", g.hires.steps)
        if not 0.0 < g.hires.denoising_strength <= 1.0:
            raise ConfigError(f"{source}: generation.hires.denoising_strength must be in (0, 1].")
        for key, size in (("width", g.width), ("height", g.height)):
            if int(size * g.hires.scale) % 8:
                fit = max(8, round(size * g.hires.scale / 8) * 8) / size
                raise ConfigError(
                    f"{source}: generation.{key} × hires.scale = {size * g.hires.scale:g} is not a multiple of 8; "
                    f"use e.g. generation.hires.scale: {fit:g}."
                )
    for name, m in p.models.items():
        if m.clip_skip < 1:
            raise ConfigError(f"{source}: models.{name}.clip_skip = {m.clip_skip}; A1111 numbering starts at 1.")


def _positive(source: str, key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{source}: {key} = {value}; it must be a positive integer.")


def _slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-") or "model"


def parse_params(data: Mapping[str, Any], source: str = "params.yaml") -> Params:
    """Validate plain params data (as read from YAML) and return typed :class:`Params`."""
    params = _build(Params, data, "", source)
    _check_values(params, source)
    return params


class _StrictLoader(yaml.SafeLoader):
    """YAML loader that refuses duplicate keys (PyYAML silently keeps the last one, hiding a duplicate model)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}: each key (and each model name) may appear once", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(path: Path) -> object:
    """Read a YAML file strictly (duplicate keys refused); errors name the file and the line."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file. Run from the project root, where params.yaml lives.")
    return parse_params(read_yaml(path) or {}, str(path))


def check_files(params: Params, root: Path, source: str = "params.yaml") -> None:
    """Check that every file the review reads exists, before any work starts; one error lists every missing file."""
    checks = []
    for name, m in params.models.items():
        checks.append((m.checkpoint, f"models.{name}.checkpoint", "put the checkpoint there or fix the path"))
        if m.vae:
            checks.append((m.vae, f"models.{name}.vae", "put the VAE file there or remove the key"))
        if m.config:
            checks.append((m.config, f"models.{name}.config", "point it at a diffusers config directory"))
    s = params.scoring
    hint = "see README, 'Scorer weights'"
    checks += [(s.clip.weights, "scoring.clip.weights", hint), (s.aesthetic.weights, "scoring.aesthetic.weights", hint),
               (s.style.vgg_weights, "scoring.style.vgg_weights", hint)]
    if s.clip.model_config:
        checks.append((s.clip.model_config, "scoring.clip.model_config", hint))
    problems = []
    for rel, key, fix in checks:
        try:
            _exists(root, rel, key, source, fix)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))


def check_sampler(params: Params, source: str = "params.yaml") -> None:
    """``generation.sampler`` must be a key of ``ghostreview.samplers.SAMPLERS``; otherwise it would only fail when the
    first batch is drawn, after the model has loaded. Imports diffusers (seconds): the generate stage and
    ``ghostreview validate`` call it, the scoring stages do not."""
    from ghostreview.samplers import SAMPLERS, unknown_name_message

    name = params.generation.sampler
    if name not in SAMPLERS:
        raise ConfigError(
            f"{source}: generation.sampler: {unknown_name_message('sampler', name, list(SAMPLERS))}. "
            f"Write one of these A1111 names (case-sensitive) as generation.sampler in {source}."
        )


def check_checkpoint(params: Params, name: str, root: Path, source: str = "params.yaml") -> str:
    """Read the header of model ``name``'s checkpoint (no tensor data) and return its family ("sd15" | "sdxl" | ...).

    Catches, before any model work: zero-byte, truncated or corrupt safetensors files, files that are not Stable
    Diffusion checkpoints (LoRA, VAE, diffusers component, inpainting UNet, ...), and pickle files (refused unless
    ``allow_pickle``; then read with ``torch.load(weights_only=True)``, which refuses code).

    Raises:
        ConfigError: naming ``source``, the key ``models.<name>.checkpoint``, the file, what is wrong and the fix.
    """
    from ghostreview.loading import CheckpointError, detect_family

    m = params.models[name]
    try:
        return detect_family(resolve(root, m.checkpoint), allow_pickle=m.allow_pickle)
    except CheckpointError as exc:
        raise ConfigError(f"{source}: models.{name}.checkpoint = {m.checkpoint!r}: {exc}.") from exc


def _exists(root: Path, rel: str, key: str, source: str, fix: str) -> None:
    path = resolve(root, rel)
    if not path.exists():
        demo = " (demo files: run `ghostreview kit demo/kit` first)" if "demo/kit" in rel else ""
        raise ConfigError(f"{source}: {key} = {rel!r}: file not found at {path}; {fix}{demo}.")


def resolve(root: Path, rel: str) -> Path:
    """A params path: ``~`` expanded, relative paths taken from the project root."""
    path = Path(rel).expanduser()
    return path if path.is_absolute() else root / path


__all__ = [
    "ConfigError",
    "Params",
    "ModelParams",
    "GenerationParams",
    "HiresParams",
    "ScoringParams",
    "load_params",
    "parse_params",
    "check_files",
    "check_sampler",
    "check_checkpoint",
    "resolve",
    "TASKS",
]
