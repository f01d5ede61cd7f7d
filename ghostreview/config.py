"""Typed, strict view of ``params.yaml``.

Config flows one way: ``params.yaml`` -> a stage script -> :func:`load_params` -> frozen dataclasses -> plain function
arguments. Unknown keys, wrong types and bad values stop with a :class:`ConfigError` that names the file, the key and
the fix, before any expensive work starts. Nothing in the library reads ``params.yaml`` except through here, and only
stage scripts and the CLI call it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from ghostreview.errors import UserError

# \A...\Z, not ^...$: "$" also matches before a trailing newline, and a model name with one splits DVC's command line.
SLUG = re.compile(r"\A[a-z0-9][a-z0-9_-]*\Z")
TASKS = ("general", "style", "lora")
DEVICE = re.compile(r"auto|cpu|mps|cuda(?::([0-9]{1,2}))?")  # availability: ghostreview.util.runtime.pick_device
MAX_SEED = 2**32 - 1  # numpy's and A1111's seed range
# A params file of 1,000 models composes to ~15,000 YAML nodes; an alias bomb ("billion laughs") expands a few lines
# into billions, which anything that walks or prints the value (the error message's repr) would run out of memory on.
MAX_YAML_NODES = 100_000


class ConfigError(UserError, ValueError):
    """A problem in params.yaml; the message names the file, the key and the fix."""


# --------------------------------------------------------------------------------------------------------------------
# Bounds, declared next to each field and checked generically by _build (every float must also be finite).


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: ``lo <= v <= hi`` (``lo < v`` when ``lo_open``, ``v < hi`` when ``hi_open``)."""

    lo: int | float
    hi: int | float
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""

    def violated(self, v: int | float) -> str | None:
        """What ``v`` breaks ("at least 1", "less than 1"), or None when it is inside."""
        if v < self.lo or (self.lo_open and v == self.lo):
            return f"{'greater than' if self.lo_open else 'at least'} {self.lo}"
        if v > self.hi or (self.hi_open and v == self.hi):
            return f"{'less than' if self.hi_open else 'at most'} {self.hi}"
        return None

    def text(self, name: str) -> str:
        """``1 <= steps <= 150``."""
        return f"{self.lo} {'<' if self.lo_open else '<='} {name} {'<' if self.hi_open else '<='} {self.hi}"


def ranged(default: Any, lo: int | float, hi: int | float, *, lo_open: bool = False, hi_open: bool = False,
           why: str = "") -> Any:
    """A dataclass field whose value must lie in the :class:`Range` (lo, hi); ``why`` is shown in the error."""
    return dataclasses.field(default=default, metadata={"range": Range(lo, hi, lo_open, hi_open, why)})


def matching(default: Any, pattern: re.Pattern, allowed: str) -> Any:
    """A string field that must fully match ``pattern``; ``allowed`` says what does, in the error."""
    return dataclasses.field(default=default, metadata={"pattern": (pattern, allowed)})


_SHORT = reprlib.Repr()  # values in messages: a huge (or alias-shared) value is shown in a line, never expanded
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 80, 80, 4, 4, 2


def _show(value: Any) -> str:
    return _SHORT.repr(value)


DEVICES = "auto, cpu, cuda, cuda:N or mps"
LEAVE_OUT = "to leave the {task} task out, remove it from benchmark.tasks instead"


@dataclass(frozen=True)
class ImagesPerItem:
    """Images drawn per benchmark item; the full v1 protocol is general 32, style 32, lora 20."""

    general: int = ranged(32, 1, 1000, why=LEAVE_OUT.format(task="general"))
    style: int = ranged(32, 1, 1000, why=LEAVE_OUT.format(task="style"))
    lora: int = ranged(20, 1, 1000, why=LEAVE_OUT.format(task="lora"))


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
    scale: float = ranged(2.0, 1, 4)  # bounds of numbers taken from A1111: its sliders' ranges
    steps: int = ranged(10, 0, 150)  # at least 1 when enabled (_check_values)
    denoising_strength: float = ranged(0.5, 0, 1, lo_open=True)
    upscaler: Literal["Latent", "Lanczos"] = "Latent"


@dataclass(frozen=True)
class GenerationParams:
    sampler: str = "DPM++ 2M Karras"
    steps: int = ranged(25, 1, 150)  # steps, cfg_scale, the maximum size: A1111's sliders' ranges
    cfg_scale: float = ranged(7.0, 1, 30)
    width: int = ranged(512, 8, 2048)  # and a multiple of 8 (_check_values)
    height: int = ranged(512, 8, 2048)
    batch_size: int = ranged(4, 1, 256)
    hires: HiresParams = HiresParams()
    device: str = matching("auto", DEVICE, DEVICES)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    cpu_threads: int = ranged(0, 0, 1024, why="0 keeps torch's default")
    # Where missing images are drawn: "local" (the stage's process) or "ray" (workers of a Ray cluster sharing the
    # image store's filesystem; pip install -e '.[ray]'). ray_address: None starts Ray on this machine;
    # ray_workers: 0 = one per GPU of the cluster (or per cpu_threads CPUs when it has none).
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_workers: int = ranged(0, 0, 1024, why="0 starts one per GPU")


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
    good_threshold: float = ranged(6.0, 0, 10, why="the LAION predictor rates images from 1 to 10")


@dataclass(frozen=True)
class StyleParams:
    vgg_weights: str = "weights/vgg19-dcbb9e9d.pth"
    sha256: str | None = None
    # not `size`: DVC's run cache ignores params of that name (treeverse/dvc#10296). At least 16: relu5_1 sits after
    # four 2x2 pools; at most 2048 (4x Gatys' 512): with references up to 4:1 that is 16.8 M positions per VGG layer.
    image_size: int = ranged(512, 16, 2048)


@dataclass(frozen=True)
class ScoringParams:
    clip: ClipParams = ClipParams()
    aesthetic: AestheticParams = AestheticParams()
    style: StyleParams = StyleParams()
    batch_size: int = ranged(16, 1, 1024)
    device: str = matching("auto", DEVICE, DEVICES)
    cpu_threads: int = ranged(0, 0, 1024, why="0 keeps torch's default")


@dataclass(frozen=True)
class StandardizeParams:
    bootstrap: int = ranged(1000, 1, 1_000_000)
    seed: int = ranged(0, 0, MAX_SEED)
    confidence: float = ranged(0.95, 0, 1, lo_open=True, hi_open=True)


@dataclass(frozen=True)
class ModelParams:
    """One reviewed checkpoint. ``config`` overrides the shipped diffusers config directory of its family."""

    checkpoint: str
    vae: str | None = None
    clip_skip: int = ranged(1, 1, 12, why="A1111 numbering starts at 1 and its slider ends at 12")
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
            raise ConfigError(f"{source}: {where} = {_show(value)} is not allowed; use one of {allowed}.")
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {where} must be a mapping, got {type(value).__name__}.")
        return {str(k): _convert(args[1], v, f"{where}.{k}", source) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {where} must be a list, got {type(value).__name__} ({_show(value)}).")
        return tuple(_convert(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value))
    return _scalar(tp, value, where, source)


def _scalar(tp: type, value: Any, where: str, source: str) -> Any:
    ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = (float(value), True) if abs(value) < 2**1000 else (value, False)
    if not ok:
        raise ConfigError(
            f"{source}: {where} must be {_type_name(tp)}, got {type(value).__name__} ({_show(value)}). "
            f"Fix the value of {where} in {source}."
        )
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{source}: {where} = {value!r} is not a finite number. Fix the value of {where} in {source}.")
    return value


def _check_field(f: dataclasses.Field, value: Any, where: str, source: str) -> None:
    """The bounds a field declares (:func:`ranged`, :func:`matching`); None (an unset optional) has none."""
    if value is None:
        return
    bounds: Range | None = f.metadata.get("range")
    broken = bounds.violated(value) if bounds else None
    if broken:
        lead = f"{bounds.why}. It" if bounds.why else "it"
        raise ConfigError(f"{source}: {where} = {_show(value)}; {lead} must be {broken} ({bounds.text(f.name)}). "
                          f"Fix the value of {where} in {source}.")
    pattern, allowed = f.metadata.get("pattern", (None, ""))
    if pattern is not None and not pattern.fullmatch(value):
        raise ConfigError(f"{source}: {where} = {_show(value)} is not allowed; use {allowed}.")


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
            _check_field(f, kwargs[name], _join(where, name), source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{source}: missing required key {_join(where, name)}. Add it to {source}.")
    return cls(**kwargs)


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


# --------------------------------------------------------------------------------------------------------------------
# Semantic checks that span fields (each field's own range is declared next to it and checked by _build).


def _check_values(p: Params, source: str) -> None:
    if not p.models:
        raise ConfigError(f"{source}: models is empty. Add a checkpoint: ghostreview add-model PATH (see README).")
    for name in p.models:
        if not SLUG.fullmatch(name):
            raise ConfigError(
                f"{source}: models.{_show(name)} is not a valid model name: use a slug of lower-case letters, digits, "
                f"'-' and '_' (no '/', '.', spaces, newlines), e.g. {_slugify(name)!r}. The file name goes in "
                f"'checkpoint:'."
            )
    for task in p.benchmark.tasks:
        if task not in TASKS:
            raise ConfigError(f"{source}: benchmark.tasks has {task!r};{_did_you_mean(task, TASKS)} Valid: {TASKS}.")
    g = p.generation
    for key, size in (("width", g.width), ("height", g.height)):  # the range (8 to 2048) is checked by _build
        if size % 8:
            raise ConfigError(
                f"{source}: generation.{key} = {size} is not a positive multiple of 8 (the VAE downsamples by 8); "
                f"use e.g. {max(8, round(size / 8) * 8)}."
            )
    if g.engine != "ray" and (g.ray_address is not None or g.ray_workers):
        raise ConfigError(
            f"{source}: generation.ray_address/ray_workers are set but generation.engine is {g.engine!r}; "
            f"set engine: ray to use the cluster, or remove them."
        )
    if g.hires.enabled:
        _positive(source, "generation.hires.steps", g.hires.steps)
        for key, size in (("width", g.width), ("height", g.height)):
            if int(size * g.hires.scale) % 8:
                fit = max(8, round(size * g.hires.scale / 8) * 8) / size
                raise ConfigError(
                    f"{source}: generation.{key} × hires.scale = {size * g.hires.scale:g} is not a multiple of 8; "
                    f"use e.g. generation.hires.scale: {fit:g}."
                )


def _positive(source: str, key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{source}: {key} = {value}; it must be a positive integer when hires is enabled.")


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
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: its keys may be overridden here
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, typing.Hashable):
            raise yaml.constructor.ConstructorError(None, None, "a list or mapping as a key", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}: each key (and each model name) may appear once", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def expanded_size(root: yaml.Node) -> int | None:
    """How many nodes the YAML document holds once every alias is expanded; None when an alias contains itself.

    Aliases share one node object, so each node is sized once (memoized, iterative): linear in the file, whatever
    the expansion.
    """
    sizes: dict[int, int] = {}
    open_: set[int] = {id(root)}
    stack = [(root, iter(_children(root)))]
    while stack:
        node, todo = stack[-1]
        child = next(todo, None)
        if child is None:
            stack.pop()
            open_.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in _children(node)), MAX_YAML_NODES + 1)
        elif id(child) in open_:
            return None
        elif id(child) not in sizes:
            open_.add(id(child))
            stack.append((child, iter(_children(child))))
    return sizes[id(root)]


def read_yaml(path: Path) -> object:
    """Read a YAML file strictly; errors name the file and the line.

    Refused: duplicate keys, and aliases that expand to more than :data:`MAX_YAML_NODES` nodes or into themselves
    (checked on the composed node graph, before anything is built from it). Merge keys (``<<: *defaults``) work.
    """
    loader = None
    try:
        loader = _StrictLoader(path.read_text(encoding="utf-8"))  # the reader refuses unprintable characters here
        node = loader.get_single_node()
        if node is None:
            return None
        size = expanded_size(node)
        if size is None or size > MAX_YAML_NODES:
            what = "an alias that contains itself" if size is None else f"more than {MAX_YAML_NODES:,} values"
            raise ConfigError(f"{path}: its YAML aliases (*name) expand to {what} (an alias bomb?). Write the "
                              f"values out, or use fewer aliases.")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to read (thousands of levels); params.yaml needs a few.") \
            from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8.") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file. Run from the project root, where params.yaml lives.")
    return parse_params(read_yaml(path) or {}, str(path))


def check_files(params: Params, root: Path, source: str = "params.yaml") -> None:
    """Check that every file the review reads exists and is of its kind (a file, or a directory for a model's
    ``config``), before any work starts; one error lists every problem."""
    checks = []
    for name, m in params.models.items():
        checks.append((m.checkpoint, f"models.{name}.checkpoint", "put the checkpoint there or fix the path", "file"))
        if m.vae:
            checks.append((m.vae, f"models.{name}.vae", "put the VAE file there or remove the key", "file"))
        if m.config:
            checks.append((m.config, f"models.{name}.config", "point it at a diffusers config directory", "dir"))
    s = params.scoring
    hint = "see README, 'Scorer weights'"
    checks += [(rel, key, hint, "file") for key, rel in _scorer_weights(params)]
    if s.clip.model_config:
        checks.append((s.clip.model_config, "scoring.clip.model_config", hint, "file"))
    problems = []
    for rel, key, fix, kind in checks:
        try:
            _exists(root, rel, key, source, fix, kind)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))


def _scorer_weights(params: Params) -> list[tuple[str, str]]:
    s = params.scoring
    return [("scoring.clip.weights", s.clip.weights), ("scoring.aesthetic.weights", s.aesthetic.weights),
            ("scoring.style.vgg_weights", s.style.vgg_weights)]


def check_weights(params: Params, root: Path, source: str = "params.yaml") -> None:
    """Every scorer weights file reads as tensors only: a safetensors header, or a torch file that
    ``torch.load(weights_only=True)`` accepts (memory-mapped: no tensor data read; see
    ``metrics.weights.check_state_dict_file``). A pickle payload (never run) or a corrupt file is an error naming the
    key here, before any model loads. Imports torch; missing files are left to :func:`check_files`."""
    from ghostreview.scoring.weights import WeightsError, check_state_dict_file

    problems = []
    for key, rel in _scorer_weights(params):
        if resolve(root, rel).is_file():
            try:
                check_state_dict_file(resolve(root, rel))
            except WeightsError as exc:
                problems.append(f"{source}: {key} = {rel!r}: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))


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
    if problems:
        raise ConfigError("\n".join(problems))


def check_sampler(params: Params, source: str = "params.yaml") -> None:
    """``generation.sampler`` must be a key of ``ghostreview.generation.samplers.SAMPLERS``; otherwise it would only fail when the
    first batch is drawn, after the model has loaded. Imports diffusers (seconds): the generate stage and
    ``ghostreview validate`` call it, the scoring stages do not."""
    from ghostreview.generation.samplers import SAMPLERS, unknown_name_message

    name = params.generation.sampler
    if name not in SAMPLERS:
        raise ConfigError(
            f"{source}: generation.sampler: {unknown_name_message('sampler', name, list(SAMPLERS))}. "
            f"Write one of these A1111 names (case-sensitive) as generation.sampler in {source}."
        )


def check_checkpoint(params: Params, name: str, root: Path, source: str = "params.yaml") -> str:
    """Read the header of model ``name``'s checkpoint (no tensor data) and return its family ("sd15" | "sdxl"); check
    its ``vae`` file's header and its ``config`` directory too.

    Catches, before any model work: zero-byte, truncated or corrupt safetensors files, files that are not Stable
    Diffusion checkpoints (LoRA, VAE, diffusers component, inpainting UNet, ...), SD2.x checkpoints (not reviewable),
    pickle files (refused unless ``allow_pickle``; then read with ``torch.load(weights_only=True)``, which refuses
    code), a ``vae`` that is not a readable VAE file, and a ``config`` directory that names other classes than the
    family's pipeline (which would make diffusers import them) or points at a hub repository
    (``loading.check_config_dir``). A ``vae`` that is no file, or a ``config`` that does not exist, is left to
    ``check_files``.

    Raises:
        ConfigError: naming ``source``, the key (``models.<name>.checkpoint``, ``.vae`` or ``.config``), the file,
            what is wrong and the fix.
    """
    from ghostreview.generation.loading import CheckpointError, check_config_dir, check_vae_file, detect_family

    m = params.models[name]
    try:
        family = detect_family(resolve(root, m.checkpoint), allow_pickle=m.allow_pickle)
    except CheckpointError as exc:
        raise ConfigError(f"{source}: models.{name}.checkpoint = {m.checkpoint!r}: {exc}.") from exc
    checks = (("vae", m.vae, Path.is_file, lambda p: check_vae_file(p, allow_pickle=m.allow_pickle)),
              ("config", m.config, Path.exists, lambda p: check_config_dir(p, family)))
    for key, rel, present, check in checks:
        if rel is not None and present(resolve(root, rel)):
            try:
                check(resolve(root, rel))
            except CheckpointError as exc:
                raise ConfigError(f"{source}: models.{name}.{key} = {rel!r}: {exc}.") from exc
    return family


def _exists(root: Path, rel: str, key: str, source: str, fix: str, kind: str = "file") -> None:
    """``rel`` exists and is a ``kind``: "file" or "dir"."""
    path = resolve(root, rel)
    if not path.exists():
        demo = " (demo files: run `ghostreview kit demo/kit` first)" if "demo/kit" in rel else ""
        raise ConfigError(f"{source}: {key} = {rel!r}: file not found at {path}; {fix}{demo}.")
    if kind == "dir" and not path.is_dir():
        raise ConfigError(f"{source}: {key} = {rel!r}: {path} is a file, not a directory; {fix}.")
    if kind != "dir" and path.is_dir():
        raise ConfigError(f"{source}: {key} = {rel!r}: {path} is a directory, not a file; {fix}.")


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
    "check_devices",
    "check_weights",
    "check_sampler",
    "check_checkpoint",
    "resolve",
    "TASKS",
]
