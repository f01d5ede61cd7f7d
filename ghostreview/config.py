"""Typed, strict view of ``params.yaml``: the params dataclasses and :func:`parse_params`.

Config flows one way: ``params.yaml`` -> a stage script -> ``ghostreview.validate.load`` -> these frozen dataclasses
-> plain function arguments. Unknown keys and wrong types stop :func:`parse_params`; each dataclass checks its own
values (the bounds declared next to each field, and the rules that span fields) in ``__post_init__``. Every refusal
is a :class:`ConfigError` naming the file, the key and the fix; one run of :func:`parse_params` reports every key's
problem at once (``ConfigError.problems``, a line each), not the first one only.

This module is a leaf: it imports nothing of the project. Reading the file, and the checks that need the files,
devices and libraries it names, live in ``ghostreview.validate``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

# \A...\Z, not ^...$: "$" also matches before a trailing newline, and a model name with one splits DVC's command line.
SLUG = re.compile(r"\A[a-z0-9][a-z0-9_-]*\Z")
# Copied from ghostreview.protocol.TASKS (config is a leaf); tests/test_vocabulary.py keeps the copies equal.
TASKS = ("general", "style", "lora")
# The device names params allow. Copied as ghostreview.util.runtime.DEVICE (pick_device refuses any other name too;
# this leaf may not import it): tests/test_config.py keeps the two equal. Availability: runtime.pick_device.
DEVICE = re.compile(r"auto|cpu|mps|cuda(?::([0-9]{1,2}))?")
MAX_SEED = 2**32 - 1  # numpy's and A1111's seed range


class ConfigError(ValueError):
    """A problem in params data; the message names the file, the key and the fix.

    ``problems`` holds one message per refused key (the message is those lines joined); :func:`parse_params` raises one
    error listing every key's problem. Not a ``UserError`` (this module imports nothing of the project):
    ``ghostreview.validate`` raises it as a ``ParamsError``, which the stages print as ``error:`` lines.
    """

    def __init__(self, message: str, problems: typing.Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) if problems is not None else (message,)

    @classmethod
    def listing(cls, problems: typing.Sequence[str]) -> ConfigError:
        """One error for every problem found (a line each)."""
        return cls("\n".join(problems), problems)


def _problems(exc: ConfigError) -> tuple[str, ...]:
    return getattr(exc, "problems", (str(exc),))


class Invalid(ConfigError):
    """Values a params dataclass refuses in ``__post_init__`` (one render per refused field).

    A dataclass does not know where it sits in params.yaml, so each message is ``render(at, source)``: ``at`` is its
    own key with a trailing dot ("generation.hires.", "" at the top), ``source`` the file; :func:`parse_params` fills
    them in (:meth:`lines`). Constructed directly (``GenerationParams(width=500)``), the messages name keys relative
    to the dataclass.
    """

    def __init__(self, *renders: Callable[[str, str], str]) -> None:
        self.renders = renders
        super().__init__("\n".join(self.lines("", "params")), self.lines("", "params"))

    def lines(self, at: str, source: str) -> list[str]:
        """Each refused field's message, its key placed at ``at`` in ``source``."""
        return [render(at, source) for render in self.renders]


# --------------------------------------------------------------------------------------------------------------------
# Bounds, declared next to each field and checked by each dataclass (every float must also be finite: _scalar).


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


def _field_problem(f: dataclasses.Field, value: Any) -> Callable[[str, str], str] | None:
    """The message render of a value outside the bounds field ``f`` declares (:func:`ranged`, :func:`matching`), or
    None when it is inside; None (an unset optional) has no bounds."""
    if value is None:
        return None
    name = f.name
    bounds: Range | None = f.metadata.get("range")
    broken = bounds.violated(value) if bounds else None
    if bounds and broken:
        lead, text = (f"{bounds.why}. It" if bounds.why else "it"), bounds.text(name)
        return lambda at, src: (f"{at}{name} = {_show(value)}; {lead} must be {broken} ({text}). "
                                f"Fix the value of {at}{name} in {src}.")
    pattern, allowed = f.metadata.get("pattern", (None, ""))
    if pattern is not None and not pattern.fullmatch(value):
        return lambda at, src: f"{at}{name} = {_show(value)} is not allowed; use {allowed}."
    return None


class Checked:
    """Base of the params dataclasses: ``__post_init__`` checks every field's declared bounds and refuses all the
    fields outside them at once; a dataclass with rules that span its fields extends it (calling
    ``super().__post_init__()`` first, so those rules see fields that are each in bounds)."""

    def __post_init__(self) -> None:
        fields = dataclasses.fields(self)  # type: ignore[arg-type]  # every subclass is a dataclass
        renders = [r for f in fields if (r := _field_problem(f, getattr(self, f.name))) is not None]
        if renders:
            raise Invalid(*renders)


# --------------------------------------------------------------------------------------------------------------------
# The params tree. Bounds of numbers taken from A1111 are its sliders' ranges.

DEVICES = "auto, cpu, cuda, cuda:N or mps"
LEAVE_OUT = "to leave the {task} task out, remove it from benchmark.tasks instead"


@dataclass(frozen=True)
class ImagesPerItem(Checked):
    """Images drawn per benchmark item; the full v1 protocol is general 32, style 32, lora 20."""

    general: int = ranged(32, 1, 1000, why=LEAVE_OUT.format(task="general"))
    style: int = ranged(32, 1, 1000, why=LEAVE_OUT.format(task="style"))
    lora: int = ranged(20, 1, 1000, why=LEAVE_OUT.format(task="lora"))


@dataclass(frozen=True)
class BenchmarkParams(Checked):
    dir: str = "data/benchmark/v1"
    images_per_item: ImagesPerItem = ImagesPerItem()
    tasks: tuple[str, ...] = TASKS

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [task for task in self.tasks if task not in TASKS]
        if unknown:
            task = unknown[0]
            raise Invalid(lambda at, src: f"{at}tasks has {task!r};{_did_you_mean(task, TASKS)} Valid: {TASKS}.")


@dataclass(frozen=True)
class FamilyPaths(Checked):
    """A directory per family with a LoRA table (``generation.families.LORA_FAMILIES``)."""

    sd15: str = "loras/sd15"
    sdxl: str = "loras/sdxl"
    flux: str = "loras/flux"


@dataclass(frozen=True)
class PathParams(Checked):
    loras: FamilyPaths = FamilyPaths()
    lora_headers: FamilyPaths = FamilyPaths("lora_headers/sd15", "lora_headers/sdxl", "lora_headers/flux")
    style_refs: str = "style_refs"
    image_store: str = "~/.cache/ghostreview/images"
    cache: str = "~/.cache/ghostreview"


@dataclass(frozen=True)
class HiresParams(Checked):
    enabled: bool = True
    scale: float = ranged(2.0, 1, 4)
    steps: int = ranged(10, 0, 150)  # and at least 1 when enabled
    denoising_strength: float = ranged(0.5, 0, 1, lo_open=True)
    upscaler: Literal["Latent", "Lanczos"] = "Latent"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.enabled and self.steps < 1:
            raise Invalid(lambda at, src: f"{at}steps = {self.steps}; it must be a positive integer when hires is "
                                          f"enabled.")


@dataclass(frozen=True)
class GenerationParams(Checked):
    sampler: str = "DPM++ 2M Karras"  # a name of ghostreview.generation.samplers.SAMPLERS: validate.check_sampler
    # A1111 >= 1.9 "Schedule type", folded into the sampler name (generation.plan.sampler_name, checked by
    # validate.check_sampler): one of plan.SCHEDULE_TYPES; None: the sampler name alone decides (as before 1.9).
    schedule_type: str | None = None
    steps: int = ranged(25, 1, 150)
    cfg_scale: float = ranged(7.0, 1, 30)
    width: int = ranged(512, 8, 2048)  # and a multiple of 8
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

    def __post_init__(self) -> None:
        super().__post_init__()
        odd = [(key, size) for key, size in (("width", self.width), ("height", self.height)) if size % 8]
        if odd:
            key, size = odd[0]
            raise Invalid(lambda at, src: f"{at}{key} = {size} is not a positive multiple of 8 (the VAE downsamples by "
                                          f"8); use e.g. {max(8, round(size / 8) * 8)}.")
        if self.engine != "ray" and (self.ray_address is not None or self.ray_workers):
            raise Invalid(lambda at, src: f"{at}ray_address/ray_workers are set but {at}engine is {self.engine!r}; "
                                          f"set engine: ray to use the cluster, or remove them.")
        if self.hires.enabled:
            self._check_hires_sizes()

    def _check_hires_sizes(self) -> None:
        scale = self.hires.scale
        odd = [(key, size) for key, size in (("width", self.width), ("height", self.height)) if int(size * scale) % 8]
        if odd:
            key, size = odd[0]
            fit = max(8, round(size * scale / 8) * 8) / size
            raise Invalid(lambda at, src: f"{at}{key} × hires.scale = {size * scale:g} is not a multiple of 8; use "
                                          f"e.g. {at}hires.scale: {fit:g}.")


@dataclass(frozen=True)
class ClipParams(Checked):
    arch: str = "ViT-L-14-quickgelu"
    weights: str = "weights/open_clip_vit_l14_quickgelu.bin"
    model_config: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class AestheticParams(Checked):
    weights: str = "weights/sac+logos+ava1-l14-linearMSE.pth"
    sha256: str | None = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
    good_threshold: float = ranged(6.0, 0, 10, why="the LAION predictor rates images from 1 to 10")


@dataclass(frozen=True)
class StyleParams(Checked):
    vgg_weights: str = "weights/vgg19-dcbb9e9d.pth"
    sha256: str | None = None
    # not `size`: DVC's run cache ignores params of that name (treeverse/dvc#10296). At least 16: relu5_1 sits after
    # four 2x2 pools; at most 2048 (4x Gatys' 512): with references up to 4:1 that is 16.8 M positions per VGG layer.
    image_size: int = ranged(512, 16, 2048)


@dataclass(frozen=True)
class HpsParams(Checked):
    """The HPSv2.1 judge (``ghostreview.scoring.hpsv21``): open_clip arch, weights file, its config JSON for an arch
    open_clip lacks (the kit's stand-in), the sha256 the weights must have (None: not checked)."""

    arch: str = "ViT-H-14"  # copied from scoring.hpsv21.ARCH (config is a leaf); tests/test_judges.py keeps them equal
    weights: str = "weights/HPS_v2.1_compressed.pt"
    model_config: str | None = None
    # HPS_v2.1_compressed.pt as published: copied from scoring.hpsv21.PUBLISHED_SHA256 (tests/test_judges.py)
    sha256: str | None = "c57a38fb4a2f7e7c15bf00da2ea377cdf165448b4dd1052a484c215a998c9837"


@dataclass(frozen=True)
class PickParams(Checked):
    """The PickScore judge (``ghostreview.scoring.pickscore``): the model folder (config.json + one weights file), the
    processor folder of laion/CLIP-ViT-H-14-laion2B-s32B-b79K, the sha256 the weights file must have."""

    model_dir: str = "weights/PickScore_v1"
    processor_dir: str = "weights/CLIP-ViT-H-14-laion2B-s32B-b79K"
    # model.safetensors as published: copied from scoring.pickscore.PUBLISHED_SHA256 (tests/test_judges.py)
    sha256: str | None = "ef31ef6fc5ff4d9bb90dd232df4e145887ba62c5a03aa2841415f8c25f18d52e"


# What a review computes when params name no judges: the article's four metrics. The names are those of
# ghostreview.scoring.registry (this leaf may not import it): validate.check_judges refuses any other.
JUDGES = ("aesthetic", "clipscore", "styleloss", "loraloss")


@dataclass(frozen=True)
class ScoringParams(Checked):
    judges: tuple[str, ...] = JUDGES
    clip: ClipParams = ClipParams()
    aesthetic: AestheticParams = AestheticParams()
    style: StyleParams = StyleParams()
    hpsv21: HpsParams = HpsParams()
    pickscore: PickParams = PickParams()
    batch_size: int = ranged(16, 1, 1024)
    device: str = matching("auto", DEVICE, DEVICES)
    cpu_threads: int = ranged(0, 0, 1024, why="0 keeps torch's default")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.judges:
            raise Invalid(lambda at, src: f"{at}judges is empty; list the metrics to compute, e.g. "
                                          f"[{', '.join(JUDGES)}] (the default when the key is left out).")
        twice = sorted({j for j in self.judges if self.judges.count(j) > 1})
        if twice:
            listed = ", ".join(map(repr, twice))
            raise Invalid(lambda at, src: f"{at}judges lists {listed} more than once; each judge is computed once: "
                                          f"remove the repeats from {at}judges in {src}.")


@dataclass(frozen=True)
class StandardizeParams(Checked):
    """The bootstrap's resamples, seed and interval level, and ``combined``: the judges the combined rank averages
    (None, the key left out: the article's four, ``JUDGES``, that scoring.judges lists, or all it lists when none of
    them; ``validate.combined_judges`` resolves it, and ``validate.check_combined`` refuses a name that is no judge or
    that scoring.judges does not list: this leaf knows neither), and ``reference``: ``pool`` or a reference set's
    name."""

    bootstrap: int = ranged(1000, 1, 1_000_000)
    seed: int = ranged(0, 0, MAX_SEED)
    confidence: float = ranged(0.95, 0, 1, lo_open=True, hi_open=True)
    combined: tuple[str, ...] | None = None
    # "pool": z relative to the models reviewed; else a reference set's name (references/<name>.json, checked by
    # ghostreview.analysis.reference when the stage reads it)
    reference: str = "pool"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.combined is not None and not self.combined:
            raise Invalid(lambda at, src: f"{at}combined is empty; list the judges the combined rank averages, e.g. "
                                          f"[{', '.join(JUDGES)}] (the default when the key is left out).")
        names = self.combined or ()
        twice = sorted({j for j in names if names.count(j) > 1})
        if twice:
            listed = ", ".join(map(repr, twice))
            raise Invalid(lambda at, src: f"{at}combined lists {listed} more than once: remove the repeats from "
                                          f"{at}combined in {src}.")


# Copied from ghostreview.generation.bases.BASES (config is a leaf); tests/test_bases.py keeps the copies equal.
BASES = ("sd15", "sdxl", "pony", "illustrious", "noobai", "flux1-dev", "flux1-schnell")


@dataclass(frozen=True)
class ModelParams(Checked):
    """One reviewed checkpoint. ``config`` overrides the shipped diffusers config directory of its family.

    ``base`` (one of ``BASES``; None: read from the file, else the family's plain base) picks the benchmark's prompt
    conventions and settings (``bases.yaml``); ``prediction`` None: the file's (its ``v_pred`` marker), else epsilon.
    ``sampler`` ... ``height`` override the base's settings (None: the base's, else the generation section's);
    ``prose`` whether its general prompts are drawn in prose (None: as its base says; bases.yaml's ``prose``).
    """

    checkpoint: str
    vae: str | None = None
    base: str | None = None
    clip_skip: int | None = ranged(None, 1, 12, why="A1111 numbering starts at 1 and its slider ends at 12")
    prediction: Literal["epsilon", "v_prediction"] | None = None
    sampler: str | None = None  # checked with generation.sampler's rule (validate / the generate stage)
    schedule_type: str | None = None
    steps: int | None = ranged(None, 1, 150)
    cfg_scale: float | None = ranged(None, 1, 30)
    width: int | None = ranged(None, 8, 2048)  # and a multiple of 8
    height: int | None = ranged(None, 8, 2048)
    prose: bool | None = None  # a model trained on natural-language captions: its general prompts in prose
    config: str | None = None
    allow_pickle: bool = False
    title: str | None = None
    # Flux (docs/flux.md): the separate files of a transformer-only checkpoint (``vae`` is its ae.safetensors), and
    # for a real-size model the T5 tokenizer folder (tokenizer_2 of FLUX.1-dev); the kit's stand-ins need none.
    clip_l: str | None = None
    t5xxl: str | None = None
    t5_tokenizer: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base is not None and self.base not in BASES:
            base = self.base
            raise Invalid(lambda at, src: f"{at}base = {_show(base)} is not a base GhostReview knows;"
                                          f"{_did_you_mean(base, BASES)} Valid: {', '.join(BASES)}.")
        odd = [(key, size) for key, size in (("width", self.width), ("height", self.height)) if size and size % 8]
        if odd:
            key, size = odd[0]
            raise Invalid(lambda at, src: f"{at}{key} = {size} is not a positive multiple of 8 (the VAE downsamples by "
                                          f"8); use e.g. {max(8, round(size / 8) * 8)}.")


@dataclass(frozen=True)
class Params(Checked):
    models: dict[str, ModelParams]
    benchmark: BenchmarkParams = BenchmarkParams()
    paths: PathParams = PathParams()
    generation: GenerationParams = GenerationParams()
    scoring: ScoringParams = ScoringParams()
    standardize: StandardizeParams = StandardizeParams()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.models:
            raise Invalid(lambda at, src: f"{at}models is empty. Add a checkpoint: ghostreview add-model PATH (see "
                                          f"README).")
        bad = [name for name in self.models if not SLUG.fullmatch(name)]
        if bad:
            name = bad[0]
            raise Invalid(lambda at, src: (
                f"{at}models.{_show(name)} is not a valid model name: use a slug of lower-case letters, digits, '-' "
                f"and '_' (no '/', '.', spaces, newlines), e.g. {_slugify(name)!r}. The file name goes in "
                f"'checkpoint:'."))


def _slugify(name: str) -> str:
    """Copied from ghostreview.util.names.model_slug (default "model"); tests/test_vocabulary.py keeps them equal."""
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-") or "model"


# --------------------------------------------------------------------------------------------------------------------
# Strict conversion of plain YAML data into the dataclasses above.


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    """Copied from ghostreview.util.names.did_you_mean; tests/test_vocabulary.py keeps them equal."""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f' Did you mean "{close[0]}"?' if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)  # type: ignore[arg-type]
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
        return dict(_converted([(str(k), args[1], v, f"{where}.{k}") for k, v in value.items()], source))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {where} must be a list, got {type(value).__name__} ({_show(value)}).")
        return tuple(v for _, v in _converted([(i, args[0], v, f"{where}[{i}]") for i, v in enumerate(value)],
                                              source))
    return _scalar(tp, value, where, source)


def _convert_each(items: typing.Iterable[tuple[Any, Any, Any, str]],
                  source: str) -> tuple[list[tuple[Any, Any]], list[str]]:
    """``([(key, converted value)], problems)`` of ``(key, type, value, where)`` items: the items that convert, and
    the problems of those that do not."""
    out: list[tuple[Any, Any]] = []
    problems: list[str] = []
    for key, tp, value, where in items:
        try:
            out.append((key, _convert(tp, value, where, source)))
        except ConfigError as exc:
            problems += _problems(exc)
    return out, problems


def _converted(items: typing.Iterable[tuple[Any, Any, Any, str]], source: str) -> list[tuple[Any, Any]]:
    """:func:`_convert_each`, every item's problem raised in one error."""
    out, problems = _convert_each(items, source)
    if problems:
        raise ConfigError.listing(problems)
    return out


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
        raise ConfigError(f"{source}: {where} = {value!r} is not a finite number. Fix the value of {where} in "
                          f"{source}.")
    return value


def _build(cls: type, data: Any, where: str, source: str) -> Any:
    """``cls(**data)`` with every key known, every value of its field's type; ``cls``'s own check names the key."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {where or 'the top level'} must be a mapping, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = [f"{source}: unknown key {_join(where, key)}.{_did_you_mean(str(key), fields)} Valid keys here: "
                f"{', '.join(fields)}." for key in data if key not in fields]
    problems += [f"{source}: missing required key {_join(where, name)}. Add it to {source}."
                 for name, f in fields.items() if name not in data and f.default is dataclasses.MISSING
                 and f.default_factory is dataclasses.MISSING]
    converted, wrong = _convert_each([(n, hints[n], data[n], _join(where, n)) for n in fields if n in data], source)
    kwargs = dict(converted)
    if problems or wrong:  # every key's problem at once: the bounds of the values that converted too
        at = _join(where, "")
        bounds = [r for n, v in kwargs.items() if (r := _field_problem(fields[n], v)) is not None]
        raise ConfigError.listing(problems + wrong + [f"{source}: {r(at, source)}" for r in bounds])
    try:
        return cls(**kwargs)
    except Invalid as exc:
        raise ConfigError.listing([f"{source}: {line}" for line in exc.lines(_join(where, ""), source)]) from None


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def parse_params(data: Mapping[str, Any], source: str = "params.yaml") -> Params:
    """Validate plain params data (as read from YAML) and return typed :class:`Params`.

    Raises:
        ConfigError: unknown keys, wrong types or refused values, every one found (``problems``, a line each); each
            names ``source``, the key and the fix.
    """
    return _build(Params, data, "", source)


__all__ = [
    "ConfigError",
    "Params",
    "ModelParams",
    "BenchmarkParams",
    "PathParams",
    "GenerationParams",
    "HiresParams",
    "ScoringParams",
    "ClipParams",
    "HpsParams",
    "PickParams",
    "AestheticParams",
    "StyleParams",
    "StandardizeParams",
    "parse_params",
    "BASES",
    "DEVICE",
    "JUDGES",
    "SLUG",
    "TASKS",
]
