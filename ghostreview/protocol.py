"""The versioned GhostReview benchmark: load and validate its YAML files, expand it into concrete images.

A benchmark directory (``data/benchmark/v1``) holds five human-edited files:

- ``protocol.yaml``: name, version, per-task counts (items, A1111 batch size x batch count), base seeds;
- ``prompts.yaml``: the general prompts and their shared negative prompt;
- ``styles.yaml``: the style templates (``{subject}``) and the subjects they are applied to;
- ``loras_sd15.yaml``, ``loras_sdxl.yaml``: the LoRA table of each model family;
- ``bases.yaml``: each checkpoint base's prompt prefix, negative prompt and recommended settings (same subjects, same
  seeds for every base: :func:`benchmark_items`' ``base``). A directory without it reviews the plain bases only.

:func:`load_benchmark` reads and checks them all before any GPU work: unknown keys (with "did you mean"), wrong types,
duplicate ids, slug format, counts that disagree with the tables, and ``<lora:...>`` tags naming LoRAs the table lacks.
Every error names the file, the line, the key path (``loras_sd15.yaml:47: loras[3].prompt``) and the fix.

Seeding follows A1111: image ``k`` of every item of a task has seed ``base_seeds[task] + k``. Style images cycle
through the subjects: image ``k`` of a style shows ``subjects[k % len(subjects)]``. Asking for fewer images per item
(:func:`benchmark_items`' ``seeds``) keeps the first ``k``, so a larger count is always a superset of a smaller one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ruamel.yaml import YAML

from ghostreview.errors import UserError
from ghostreview.generation.bases import BASE_FAMILIES, BASES, PLAIN_BASES
from ghostreview.generation.families import BASE_LORA_TABLES, FAMILIES, LORA_FAMILIES, table_family
from ghostreview.generation.infotext import NEGATIVE_PREFIX, format_infotext, parse_infotext
from ghostreview.generation.prompts import extract_lora_tags
from ghostreview.util.names import did_you_mean, table_slug
from ghostreview.util.yamlio import YamlError, read_yaml_lines

TASKS = ("general", "style", "lora")
GROUPS = ("common", "stylized")
PROTOCOL_FILE = "protocol.yaml"
PROMPTS_FILE = "prompts.yaml"
STYLES_FILE = "styles.yaml"
BASES_FILE = "bases.yaml"
MAX_SEED = 2**32 - 1  # A1111 draws its seeds below 2**32; keep the benchmark's inside that range
# The benchmark's reference files (style references, LoRA header images): plain images, any format PIL reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

SLUG = re.compile(r"[a-z0-9_]+")
STYLE_NAME = re.compile(r"[A-Za-z0-9_]+")
# Any A1111 extra-network tag (<lora:...>, <hypernet:...>, <lyco:...>), as ghostreview.generation.prompts
# recognises them; LoRA tags themselves are parsed by ghostreview.generation.prompts.extract_lora_tags, the parser
# generation uses.
NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
# A1111 emphasis with a weight: "(bokeh:1.1)" (prose must have none)
EMPHASIS = re.compile(r"\([^()]*:\s*-?[0-9.]+\s*\)")
# Line breaks other than "\n": A1111 and ghostreview.generation.infotext split an infotext on "\n" only, other readers
# (Python's str.splitlines, many viewers) on these as well, so a prompt holding one reads back differently there.
OTHER_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")

# Header-infotext settings a LoRA entry may record (for the user; the benchmark draws with params.yaml's settings).
SETTINGS_TYPES: Mapping[str, type] = MappingProxyType({
    "sampler": str, "schedule_type": str, "steps": int, "cfg": float, "seed": int, "size": str, "clip_skip": int,
    "denoising_strength": float, "hires_upscale": float, "hires_steps": int, "hires_upscaler": str, "vae": str,
    "lora_hashes": str,
})


class BenchmarkError(UserError, ValueError):
    """A problem in a benchmark file; the message names the file, the line, the key path and the fix."""


# ----------------------------------------------------------------------------------------------------------------
# The benchmark as frozen data


@dataclass(frozen=True)
class GeneralPrompt:
    """One general prompt; ``group`` is "common" (the 25 Civitai subjects) or "stylized" (the 5 style prompts).
    ``prose``: the same subject in plain sentences, for the bases that read natural language (``bases.yaml``'s
    ``prose: true``: Flux.1); empty where the benchmark has none."""

    id: str
    category: str
    prompt: str
    group: str = "common"
    prose: str = ""


@dataclass(frozen=True)
class Style:
    """One style: ``template.format(subject=...)`` is the prompt; its reference images are in
    ``<style_refs>/<reference_dir>``."""

    name: str
    template: str
    negative_prompt: str
    reference_dir: str


@dataclass(frozen=True)
class LoraEntry:
    """One row of a family's LoRA table (see the header of ``loras_sd15.yaml`` for every field)."""

    name: str
    title: str
    file: str
    prompt: str
    negative_prompt: str
    header_images: tuple[str, ...]
    default_weight: float
    made_with: tuple[str, ...]
    settings: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}), hash=False)
    source: str = ""


@dataclass(frozen=True)
class BaseSettings:
    """Generation settings of a base (``bases.yaml``) or a model entry's overrides, as A1111 names them; None where
    the source below decides (a model entry over its base's v-prediction settings, over its base's, over params'
    ``generation`` section). ``hires`` False: no hires pass."""

    sampler: str | None = None
    schedule_type: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    clip_skip: int | None = None
    width: int | None = None
    height: int | None = None
    hires: bool | None = None

    def over(self, below: BaseSettings) -> BaseSettings:
        """These settings where they are set, ``below``'s elsewhere."""
        def pick(name: str) -> Any:
            mine = getattr(self, name)
            return getattr(below, name) if mine is None else mine

        return BaseSettings(**{f.name: pick(f.name) for f in dataclasses.fields(self)})


@dataclass(frozen=True)
class BaseProtocol:
    """One base's entry of ``bases.yaml``: ``prompt_prefix`` goes before every general and style prompt,
    ``negative_prompt`` replaces prompts.yaml's shared one (None: keep it), ``settings`` are the recommended ones and
    ``v_prediction`` what replaces them for the base's v-prediction checkpoints. ``prose``: the general prompts are
    drawn from their natural-language rendering (``GeneralPrompt.prose``) instead of their tags. ``lora_table``: the
    LoRA table its models draw (a key of ``Benchmark.loras``; None: their family's)."""

    prompt_prefix: str = ""
    negative_prompt: str | None = None
    settings: BaseSettings = BaseSettings()
    v_prediction: BaseSettings = BaseSettings()
    prose: bool = False
    lora_table: str | None = None

    def settings_for(self, prediction: str) -> BaseSettings:
        """The settings of a checkpoint of this base with ``prediction`` ("epsilon" | "v_prediction")."""
        return self.v_prediction.over(self.settings) if prediction == "v_prediction" else self.settings


@dataclass(frozen=True)
class TaskCounts:
    """How many items a task has and how many images each item gets (A1111 batch size x batch count)."""

    items: int
    batch_size: int
    n_iter: int

    @property
    def images_per_item(self) -> int:
        return self.batch_size * self.n_iter


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark. ``loras`` maps a table name to its LoRA entries, in file order: a family's ("sd15",
    "sdxl", and "flux" where the benchmark has a Flux table) or a base's ("pony", "illustrious":
    ``generation.families.BASE_LORA_TABLES``; ``model_lora_table`` says which a model draws)."""

    name: str
    version: str
    negative_prompt: str
    general: tuple[GeneralPrompt, ...]
    styles: tuple[Style, ...]
    subjects: tuple[str, ...]
    loras: Mapping[str, tuple[LoraEntry, ...]] = dataclasses.field(hash=False)
    counts: Mapping[str, TaskCounts] = dataclasses.field(hash=False)
    base_seeds: Mapping[str, int] = dataclasses.field(hash=False)
    images_per_checkpoint: int = 0
    bases: Mapping[str, BaseProtocol] = dataclasses.field(default_factory=lambda: MappingProxyType({}), hash=False)


@dataclass(frozen=True)
class BenchmarkItem:
    """One concrete image of the benchmark: image ``index`` of ``item`` in ``task``, drawn with ``seed``.

    ``subject`` is set for style images; ``loras`` holds ``(lora name, weight)`` for LoRA images, and ``prompt`` then
    carries the same LoRAs as A1111 ``<lora:name:weight>`` tags (so the prompt pasted into A1111 reproduces it).
    """

    task: str
    item: str
    index: int
    seed: int
    prompt: str
    negative_prompt: str
    subject: str = ""
    loras: tuple[tuple[str, float], ...] = ()


# ----------------------------------------------------------------------------------------------------------------
# Error locations and strict field readers


@dataclass(frozen=True)
class Loc:
    """Where a value sits: file, key path and (when the YAML parser knows it) 1-based line."""

    file: str
    path: str = ""
    line: int | None = None

    def __str__(self) -> str:
        head = f"{self.file}:{self.line}" if self.line else self.file
        return f"{head}: {self.path}" if self.path else head

    def key(self, container: Any, key: str) -> Loc:
        return Loc(self.file, f"{self.path}.{key}" if self.path else key, _line(container, key) or self.line)

    def item(self, container: Any, index: int) -> Loc:
        return Loc(self.file, f"{self.path}[{index}]", _line(container, index) or self.line)


def _line(container: Any, key: Any) -> int | None:
    """1-based line of a key or list item in a ruamel round-trip container, None when unknown."""
    lc = getattr(container, "lc", None)
    if lc is None:  # not a ruamel round-trip container
        return None
    try:
        pos = lc.key(key) if isinstance(container, dict) else lc.item(key)
    except (AttributeError, KeyError, IndexError, TypeError):
        return None
    return pos[0] + 1 if pos else None


def _fail(loc: Loc, problem: str, fix: str) -> BenchmarkError:
    return BenchmarkError(f"{loc}: {problem}. {fix}")


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    kinds = ((bool, "true/false"), (int, "number"), (float, "number"), (str, "text"), (Mapping, "mapping"),
             (list, "list"))
    kind = next((name for t, name in kinds if isinstance(value, t)), type(value).__name__)
    return f"{kind} {_plain(value)!r}"


def read_str(value: Any, loc: Loc) -> str:
    """A YAML string; numbers and booleans are refused (quote them) so ``1.0`` never silently becomes ``"1.0"``."""
    if not isinstance(value, str):
        raise _fail(loc, f"expected text, got {_describe(value)}", f'Write it as a quoted string, e.g. "{value}".')
    return str(value)


def read_text(value: Any, loc: Loc) -> str:
    """A non-empty string."""
    text = read_str(value, loc)
    if not text.strip():
        raise _fail(loc, "is empty", "Write the text, or remove the entry.")
    return text


def read_prompt(value: Any, loc: Loc, negative: bool = False) -> str:
    """Prompt text (a positive prompt, non-empty; or a ``negative`` one, may be empty) that every image's infotext
    carries intact: no line starting with "Negative prompt:" (A1111 and we read it as the start of the negative
    prompt), no line break but "\\n", and read back unchanged by ``ghostreview.generation.infotext.parse_infotext``."""
    text = read_str(value, loc) if negative else read_text(value, loc)
    odd = OTHER_LINE_BREAKS.search(text)
    if odd:
        raise _fail(loc, f"has the line break {odd.group(0)!r}",
                    "Use a plain newline (\\n) or a space: an image's infotext keeps only plain newlines.")
    if any(line.strip().startswith(NEGATIVE_PREFIX) for line in text.split("\n")):
        raise _fail(loc, f"has a line starting with {NEGATIVE_PREFIX!r}",
                    "An image's infotext would read that line as the start of the negative prompt: put the negative "
                    "prompt in negative_prompt, or reword the line.")
    infotext = format_infotext("x", text, {"Steps": 1}) if negative else format_infotext(text, "", {"Steps": 1})
    back_prompt, back_negative, _ = parse_infotext(infotext)
    back = back_negative if negative else back_prompt
    if back != text:
        raise _fail(loc, f"would be read back from an image's infotext as {back[:60]!r}",
                    "Remove the leading or trailing blank lines.")
    return text


def read_negative(value: Any, loc: Loc) -> str:
    return read_prompt(value, loc, negative=True)


def read_int(value: Any, loc: Loc) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(loc, f"expected a whole number, got {_describe(value)}", "Write an integer such as 20.")
    return int(value)


def read_float(value: Any, loc: Loc) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(loc, f"expected a number, got {_describe(value)}", "Write a number such as 0.8.")
    return float(value)


def read_list(value: Any, loc: Loc) -> list:
    if not isinstance(value, list):
        raise _fail(loc, f"expected a list, got {_describe(value)}",
                    "Write a YAML list, e.g. [a, b] or one '- item' a line.")
    return value


def read_map(value: Any, loc: Loc) -> Mapping:
    if not isinstance(value, Mapping):
        raise _fail(loc, f"expected a mapping (key: value), got {_describe(value)}", "Write it as 'key: value' lines.")
    return value


def read_str_tuple(value: Any, loc: Loc) -> tuple[str, ...]:
    return tuple(read_str(v, loc.item(value, i)) for i, v in enumerate(read_list(value, loc)))


def read_slug(value: Any, loc: Loc, pattern: re.Pattern = SLUG) -> str:
    text = read_str(value, loc)
    if not pattern.fullmatch(text):
        allowed = "lower-case letters, digits and _" if pattern is SLUG else "letters, digits and _"
        suggestion = table_slug(text) if pattern is SLUG else text
        raise _fail(loc, f"{text!r} is not a valid name", f"Use only {allowed}, e.g. {suggestion!r}.")
    return text


def read_fields(
    data: Any, loc: Loc, required: Mapping[str, Callable], optional: Mapping[str, tuple[Callable, Any]] | None = None
) -> dict[str, Any]:
    """Check a mapping's keys against ``required`` and ``optional`` and convert each value with its reader."""
    data, optional = read_map(data, loc), optional or {}
    allowed = [*required, *optional]
    for key in data:
        if key not in allowed:
            fix = f"{did_you_mean(key, allowed)} Allowed keys: {', '.join(allowed)}.".lstrip()
            raise _fail(loc.key(data, key), "unknown key", fix)
    missing = [k for k in required if k not in data]
    if missing:
        raise _fail(loc, f"missing key {missing[0]!r}", f"Add '{missing[0]}:'. Required keys: {', '.join(required)}.")
    out = {k: read(data[k], loc.key(data, k)) for k, read in required.items()}
    out.update({k: read(data[k], loc.key(data, k)) if k in data else d for k, (read, d) in optional.items()})
    return out


def read_task_map(data: Any, loc: Loc, read: Callable[[Any, Loc], Any]) -> dict[str, Any]:
    """A mapping with exactly one entry per task (general, style, lora)."""
    return read_fields(data, loc, {t: read for t in TASKS})


def check_unique(names: Iterable[str], loc: Loc, what: str, key: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            path = f"{loc.path}[{i}]" + (f".{key}" if key else "")
            raise _fail(Loc(loc.file, path), f"duplicate {what} {name!r}",
                        f"Every {what} must be unique; rename one of them.")
        seen.add(name)


# ----------------------------------------------------------------------------------------------------------------
# Reading the files


def read_yaml(path: Path) -> Any:
    """Parse one benchmark file with :func:`ghostreview.util.yamlio.read_yaml_lines` (line numbers kept; duplicate
    keys, alias bombs and non-UTF-8 text refused), as a :class:`BenchmarkError`."""
    if not path.is_file():
        raise BenchmarkError(f"{path}: file not found. A benchmark directory holds {PROTOCOL_FILE}, {PROMPTS_FILE}, "
                             f"{STYLES_FILE}, {', '.join(lora_table_file(f) for f in FAMILIES)}.")
    try:
        return read_yaml_lines(path)
    except YamlError as exc:
        if not exc.syntax:
            raise BenchmarkError(str(exc)) from exc
        raise BenchmarkError(f"{path.name}: invalid YAML: {exc.detail}\nFix the syntax at the line shown (quote text "
                             f"that holds ': ' or starts with a special character).") from exc


def lora_table_file(family: str) -> str:
    return f"loras_{family}.yaml"


def lora_tables(directory: Path) -> tuple[str, ...]:
    """The LoRA tables benchmark ``directory`` holds: every family's of ``FAMILIES`` (their files are required),
    then those of the other ``LORA_FAMILIES`` and of ``BASE_LORA_TABLES`` whose file is there (a benchmark without
    ``loras_flux.yaml`` reviews Flux models without LoRA images)."""
    optional = [t for t in (*LORA_FAMILIES, *BASE_LORA_TABLES) if t not in FAMILIES
                and (Path(directory) / lora_table_file(t)).is_file()]
    return (*FAMILIES, *optional)


def _read_counts(value: Any, loc: Loc) -> TaskCounts:
    fields = read_fields(value, loc, {"items": read_int, "batch_size": read_int, "n_iter": read_int})
    for key, n in fields.items():
        if n < 1:
            raise _fail(loc.key(value, key), f"is {n}", "Use a whole number of at least 1.")
    return TaskCounts(**fields)


def _read_seed(value: Any, loc: Loc) -> int:
    seed = read_int(value, loc)
    if not 0 <= seed <= MAX_SEED:
        raise _fail(loc, f"seed {seed} is out of range", f"Use a seed between 0 and {MAX_SEED}.")
    return seed


def parse_protocol(data: Any, file: str = PROTOCOL_FILE) -> dict[str, Any]:
    """The protocol file as plain fields: name, version, counts, images_per_checkpoint, base_seeds."""
    loc = Loc(file)
    fields = read_fields(data, loc, {
        "name": read_text, "version": read_text, "counts": read_map, "images_per_checkpoint": read_int,
        "base_seeds": read_map,
    })
    fields["counts"] = read_task_map(data["counts"], loc.key(data, "counts"), _read_counts)
    fields["base_seeds"] = read_task_map(data["base_seeds"], loc.key(data, "base_seeds"), _read_seed)
    return fields


def _no_network_tags(text: str, loc: Loc) -> str:
    tag = NETWORK_TAG.search(text)
    if tag:
        raise _fail(loc, f"has the extra-network tag {tag.group(0)!r}",
                    "General prompts and style templates use no LoRA; remove the tag (LoRAs belong in the LoRA "
                    "tables).")
    return text


def _read_group(value: Any, loc: Loc) -> str:
    group = read_str(value, loc)
    if group not in GROUPS:
        raise _fail(loc, f"unknown group {group!r}", f"{did_you_mean(group, GROUPS)} Use one of: {', '.join(GROUPS)}.")
    return group


def _read_prose(value: Any, loc: Loc) -> str:
    """A natural-language rendering: a prompt (:func:`read_prompt`) with no LoRA tag and no A1111 emphasis, which a
    T5 encoder (Flux.1) would read as literal characters."""
    text = _no_network_tags(read_prompt(value, loc), loc)
    weighted = EMPHASIS.search(text)
    if weighted:
        raise _fail(loc, f"has the A1111 emphasis {weighted.group(0)!r}",
                    "Prose is read word for word by the bases that use it (Flux.1's T5 weights no token): write it "
                    "as plain sentences, without (text:weight).")
    return text


def _read_general_prompt(value: Any, loc: Loc) -> GeneralPrompt:
    f = read_fields(value, loc, {"id": read_slug, "group": _read_group, "category": read_slug, "prompt": read_prompt},
                    {"prose": (_read_prose, "")})
    _no_network_tags(f["prompt"], loc.key(value, "prompt"))
    return GeneralPrompt(id=f["id"], category=f["category"], prompt=f["prompt"], group=f["group"], prose=f["prose"])


def parse_prompts(data: Any, file: str = PROMPTS_FILE) -> tuple[str, tuple[GeneralPrompt, ...]]:
    """The shared negative prompt and the general prompts, in file order."""
    loc = Loc(file)
    f = read_fields(data, loc, {"negative_prompt": read_negative, "prompts": read_list})
    items = data["prompts"]
    prompts = tuple(_read_general_prompt(v, loc.key(data, "prompts").item(items, i)) for i, v in enumerate(items))
    check_unique((p.id for p in prompts), Loc(file, "prompts"), "prompt id", "id")
    return f["negative_prompt"], prompts


def _read_template(value: Any, loc: Loc) -> str:
    """A style template: exactly one ``{subject}`` field and no other braces."""
    text = _no_network_tags(read_prompt(value, loc), loc)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise _fail(loc, f"has unbalanced braces ({exc})", "Use braces only in the one {subject} placeholder.") from exc
    if fields != ["subject"]:
        raise _fail(loc, f"has the placeholders {fields}",
                    "A template holds exactly one {subject} and no other braces.")
    return text


def _read_subject(value: Any, loc: Loc) -> str:
    text = _no_network_tags(read_prompt(value, loc), loc)
    if "{" in text or "}" in text:
        raise _fail(loc, "has braces", "Subjects are plain text; remove the braces.")
    return text


def _read_dir_name(value: Any, loc: Loc) -> str:
    text = read_text(value, loc)
    if "/" in text or "\\" in text or text in (".", ".."):
        raise _fail(loc, f"{text!r} is a path", "Give a directory name only (it lives under paths.style_refs).")
    return text


def _read_style(value: Any, loc: Loc) -> Style:
    f = read_fields(value, loc, {
        "name": lambda v, loc: read_slug(v, loc, STYLE_NAME), "template": _read_template,
        "negative_prompt": read_negative,
    }, {"reference_dir": (_read_dir_name, None)})
    return Style(f["name"], f["template"], f["negative_prompt"], f["reference_dir"] or f["name"])


def parse_styles(data: Any, file: str = STYLES_FILE) -> tuple[tuple[str, ...], tuple[Style, ...]]:
    """The subjects and the styles, in file order."""
    loc = Loc(file)
    read_fields(data, loc, {"subjects": read_list, "styles": read_list})
    subjects = tuple(_read_subject(v, loc.key(data, "subjects").item(data["subjects"], i))
                     for i, v in enumerate(data["subjects"]))
    styles = tuple(_read_style(v, loc.key(data, "styles").item(data["styles"], i))
                   for i, v in enumerate(data["styles"]))
    if not subjects:
        raise _fail(loc.key(data, "subjects"), "is empty", "List at least one subject.")
    check_unique(subjects, Loc(file, "subjects"), "subject", "")
    check_unique((s.name for s in styles), Loc(file, "styles"), "style name", "name")
    for i, style in enumerate(styles):  # each part passed; their joins are the prompts drawn
        where = loc.key(data, "styles").item(data["styles"], i).key(data["styles"][i], "template")
        for subject in subjects:
            read_prompt(style.template.format(subject=subject), Loc(where.file, f"{where.path} with subject "
                                                                         f"{subject[:40]!r}", where.line))
    return subjects, styles


def _read_plain_file(value: Any, loc: Loc, suffixes: tuple[str, ...]) -> str:
    name = read_text(value, loc)
    if "/" in name or "\\" in name or not name.lower().endswith(suffixes):
        raise _fail(loc, f"{name!r} is not a plain {'/'.join(suffixes)} file name",
                    f"Give the file name only (no directory), ending in {' or '.join(suffixes)}.")
    return name


def _read_header_images(value: Any, loc: Loc) -> tuple[str, ...]:
    items = read_list(value, loc)
    if not items:
        raise _fail(loc, "is empty", "Name at least one header image (the LoRA loss target).")
    return tuple(_read_plain_file(v, loc.item(items, i), IMAGE_SUFFIXES) for i, v in enumerate(items))


def _read_weight(value: Any, loc: Loc) -> float:
    weight = read_float(value, loc)
    if not -10.0 <= weight <= 10.0:
        raise _fail(loc, f"weight {weight} is implausible", "LoRA weights are usually between 0 and 1.5.")
    return weight


def read_settings(value: Any, loc: Loc) -> Mapping[str, Any]:
    """Header-infotext settings (see :data:`SETTINGS_TYPES`), kept for the user."""
    readers = {str: read_str, int: read_int, float: read_float}
    optional = {k: (readers[t], None) for k, t in SETTINGS_TYPES.items()}
    fields = read_fields(value, loc, {}, optional)
    size = fields.get("size")
    if size is not None and not re.fullmatch(r"\d+x\d+", size):
        raise _fail(loc.key(value, "size"), f"{size!r} is not WIDTHxHEIGHT", 'Write it as A1111 does, e.g. "512x768".')
    return MappingProxyType({k: v for k, v in fields.items() if v is not None})


def lora_entry_from_mapping(data: Any, loc: Loc) -> LoraEntry:
    """One LoRA-table entry, checked field by field (tags are checked against the table by :func:`load_benchmark`)."""
    f = read_fields(data, loc, {
        "name": read_slug, "title": read_text, "file": lambda v, loc: _read_plain_file(v, loc, (".safetensors",)),
        "prompt": read_prompt, "negative_prompt": read_negative, "header_images": _read_header_images,
        "default_weight": _read_weight, "made_with": read_str_tuple,
    }, {"source": (read_str, ""), "settings": (read_settings, MappingProxyType({}))})
    _check_tag_syntax(f["prompt"], loc.key(data, "prompt"))
    return LoraEntry(**f)


def _check_tag_syntax(prompt: str, loc: Loc) -> None:
    """Every extra-network tag is ``<lora:name:weight>`` with a slug name and an explicit numeric weight."""
    for m in NETWORK_TAG.finditer(prompt):
        if m.group(1) != "lora":
            raise _fail(loc, f"has {m.group(0)!r}",
                        "Only LoRA tags (<lora:name:weight>) are supported; remove the tag.")
    try:
        tags = extract_lora_tags(prompt)[1]
    except ValueError as exc:
        raise _fail(loc, str(exc), "Write each tag as <lora:name:weight>.") from None
    for name, weight in tags:
        if not SLUG.fullmatch(name):
            raise _fail(loc, f"<lora:{name}:...> does not use a table name",
                        "Tags use the entry's `name` slug ([a-z0-9_]).")
        if weight is None:
            raise _fail(loc, f"<lora:{name}> has no weight",
                        f"Write the weight, e.g. <lora:{name}:1.0> (1.0 is A1111's default multiplier).")


def parse_lora_table(data: Any, file: str) -> tuple[LoraEntry, ...]:
    """A family's LoRA table, in file order, each entry checked; tags must name entries of the same table."""
    loc = Loc(file)
    read_fields(data, loc, {"loras": read_list})
    items = data["loras"]
    entries = tuple(lora_entry_from_mapping(v, loc.key(data, "loras").item(items, i)) for i, v in enumerate(items))
    check_unique((e.name for e in entries), Loc(file, "loras"), "LoRA name", "name")
    names = {e.name for e in entries}
    for i, entry in enumerate(entries):
        for name, _ in _tags(entry.prompt):
            if name not in names:
                raise _fail(Loc(file, f"loras[{i}].prompt", _line(items[i], "prompt")),
                            f"<lora:{name}:...> names no LoRA of this table{did_you_mean(name, names)}",
                            f"Add an entry named {name!r} (a header prompt with several LoRAs draws with all of them), "
                            f"or remove the tag.")
    return entries


def _read_size(value: Any, loc: Loc) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` with both sides positive multiples of 8 (the VAE's factor)."""
    m = re.fullmatch(r"(\d+)x(\d+)", read_str(value, loc))
    if not m or int(m.group(1)) % 8 or int(m.group(2)) % 8 or not int(m.group(1)) or not int(m.group(2)):
        raise _fail(loc, f"{value!r} is not WIDTHxHEIGHT in positive multiples of 8", 'Write it as "1024x1024".')
    return int(m.group(1)), int(m.group(2))


def _read_bool(value: Any, loc: Loc) -> bool:
    if not isinstance(value, bool):
        raise _fail(loc, f"expected true or false, got {_describe(value)}", "Write true or false.")
    return value


SETTING_READERS: Mapping[str, Callable[[Any, Loc], Any]] = MappingProxyType({
    "sampler": read_text, "schedule_type": read_text, "steps": read_int, "cfg_scale": read_float,
    "clip_skip": read_int, "size": _read_size, "hires": _read_bool,
})


def _settings(fields: Mapping[str, Any]) -> BaseSettings:
    """The :class:`BaseSettings` of read fields (``size`` as width and height)."""
    width, height = fields.get("size") or (None, None)
    return BaseSettings(**{k: fields.get(k) for k in SETTING_READERS if k != "size"}, width=width, height=height)


def _read_v_settings(value: Any, loc: Loc) -> BaseSettings:
    return _settings(read_fields(value, loc, {}, {k: (r, None) for k, r in SETTING_READERS.items()}))


def _read_base(value: Any, loc: Loc) -> BaseProtocol:
    optional: dict[str, tuple[Callable, Any]] = {k: (r, None) for k, r in SETTING_READERS.items()}
    optional |= {"prompt_prefix": (read_negative, ""), "negative_prompt": (read_negative, None),
                 "v_prediction": (_read_v_settings, BaseSettings()), "prose": (_read_bool, False),
                 "lora_table": (read_slug, None)}
    f = read_fields(value, loc, {}, optional)
    return BaseProtocol(f["prompt_prefix"].strip().rstrip(",").strip(), f["negative_prompt"], _settings(f),
                        f["v_prediction"], f["prose"], f["lora_table"])


def parse_bases(data: Any, file: str = BASES_FILE) -> Mapping[str, BaseProtocol]:
    """``bases.yaml``: an entry per base of ``generation.bases.BASES`` (any subset: see :func:`base_protocol`)."""
    loc = Loc(file)
    entries = read_fields(data, loc, {"bases": read_map})["bases"]
    for name in entries:
        if name not in BASES:
            raise _fail(loc.key(data, "bases").key(entries, name), f"unknown base {name!r}",
                        f"{did_you_mean(str(name), BASES)} Bases: {', '.join(BASES)}.".lstrip())
    return MappingProxyType({name: _read_base(v, loc.key(data, "bases").key(entries, name))
                             for name, v in entries.items()})


def base_protocol(b: Benchmark, base: str) -> BaseProtocol:
    """The protocol entry of ``base``; a plain base (sd15, sdxl) without one keeps prompts.yaml and params as they are.

    Raises:
        BenchmarkError: another base that the benchmark has no entry for.
    """
    if base in b.bases:
        return b.bases[base]
    if base in PLAIN_BASES.values():
        return BaseProtocol()
    raise BenchmarkError(f"{BASES_FILE}: no entry for base {base!r} in benchmark {b.name}. Add one (see "
                         f"data/benchmark/v1/{BASES_FILE}), or review the model under a base the benchmark has: "
                         f"{', '.join(b.bases) or ', '.join(PLAIN_BASES)}.")


# ----------------------------------------------------------------------------------------------------------------
# Loading and cross-checks


def load_benchmark(directory: Path) -> Benchmark:
    """Read and validate every file of a benchmark directory; raises :class:`BenchmarkError` on the first problem."""
    directory = Path(directory)
    protocol = parse_protocol(read_yaml(directory / PROTOCOL_FILE))
    negative, general = parse_prompts(read_yaml(directory / PROMPTS_FILE))
    subjects, styles = parse_styles(read_yaml(directory / STYLES_FILE))
    loras = {f: parse_lora_table(read_yaml(directory / lora_table_file(f)), lora_table_file(f))
             for f in lora_tables(directory)}
    bases = parse_bases(read_yaml(directory / BASES_FILE)) if (directory / BASES_FILE).is_file() else {}
    bench = Benchmark(
        name=protocol["name"], version=protocol["version"], negative_prompt=negative, general=general, styles=styles,
        subjects=subjects, loras=MappingProxyType(loras), counts=MappingProxyType(protocol["counts"]),
        base_seeds=MappingProxyType(protocol["base_seeds"]), images_per_checkpoint=protocol["images_per_checkpoint"],
        bases=MappingProxyType(dict(bases)),
    )
    _check_counts(bench)
    _check_names_across_families(bench)
    _check_prose(bench)
    _check_base_tables(bench)
    return bench


def _check_base_tables(b: Benchmark) -> None:
    """A base's ``lora_table`` is a table of the benchmark, for its own family's LoRA files."""
    for base, conv in b.bases.items():
        if conv.lora_table is None:
            continue
        if conv.lora_table not in b.loras:
            raise BenchmarkError(f"{BASES_FILE}: bases.{base}.lora_table: {conv.lora_table!r} is no LoRA table of "
                                 f"benchmark {b.name} ({', '.join(b.loras)}).{did_you_mean(conv.lora_table, b.loras)} "
                                 f"Add {lora_table_file(conv.lora_table)}, or remove the line (the family's table).")
        if table_family(conv.lora_table) != BASE_FAMILIES[base]:
            raise BenchmarkError(f"{BASES_FILE}: bases.{base}.lora_table: {conv.lora_table!r} holds "
                                 f"{table_family(conv.lora_table)} LoRAs, but {base} is an {BASE_FAMILIES[base]} "
                                 f"base. Name a table of {BASE_FAMILIES[base]} LoRAs.")


def model_lora_table(b: Benchmark, family: str, base: str | None = None) -> str | None:
    """The LoRA table a model of ``family`` and ``base`` draws: its base's ``lora_table``, else its family's; None
    when the benchmark has none for it (Flux without ``loras_flux.yaml``: no LoRA images). An unknown family fails
    with the valid ones."""
    if family not in LORA_FAMILIES:
        raise BenchmarkError(f"unknown model family {family!r}.{did_you_mean(family, LORA_FAMILIES)} "
                             f"Valid: {', '.join(LORA_FAMILIES)}.")
    table = base_protocol(b, base).lora_table if base is not None else None
    table = table or family
    return table if table in b.loras else None


def _check_prose(b: Benchmark) -> None:
    """A base with ``prose: true`` needs every general prompt's prose."""
    prose_bases = [name for name, conv in b.bases.items() if conv.prose]
    missing = [p.id for p in b.general if not p.prose]
    if prose_bases and missing:
        raise BenchmarkError(f"{PROMPTS_FILE}: prompt {missing[0]!r} has no prose"
                             f"{f' (nor {len(missing) - 1} more)' if len(missing) > 1 else ''}, which {BASES_FILE}'s "
                             f"{', '.join(prose_bases)} (prose: true) draw from. Add a `prose:` line to each prompt "
                             f"(the same subject in plain sentences), or remove `prose: true` from those bases.")


def cut_benchmark(source: Path, dest: Path, general: int, styles: int, loras: int) -> Benchmark:
    """Copy benchmark ``source`` to ``dest`` keeping only the first ``general`` prompts, ``styles`` styles and
    ``loras`` LoRAs per family: a smoke-test subset with the same schema, seeds and per-item image counts.

    LoRA entries whose header prompt pulls in other LoRAs (``<lora:...>`` tags) are left out so the cut tables stay
    self-contained. The protocol is renamed ``<name>-cut`` so its results are never mistaken for the full benchmark's.
    Comments and order of the YAML files are kept.
    """
    source, dest = Path(source), Path(dest)
    load_benchmark(source)  # a broken source is reported against its own files
    if dest.exists():
        raise BenchmarkError(f"{dest}: already exists. Pick a new directory for the cut benchmark, or delete it.")
    for key, n in (("general", general), ("styles", styles), ("loras", loras)):
        if n < 1:
            raise BenchmarkError(f"cut benchmark: {key} = {n}; keep at least 1 item of each task.")
    dest.mkdir(parents=True)
    yaml = YAML(typ="rt")
    yaml.width = 4096

    def edit(name: str, change: Callable[[Any], None]) -> None:
        doc = read_yaml(source / name)
        change(doc)
        with open(dest / name, "w", encoding="utf-8") as fh:
            yaml.dump(doc, fh)

    kept: dict[str, int] = {}

    def keep(key: str, n: int, wanted: Callable[[Any], bool] = lambda entry: True) -> Callable[[Any], None]:
        def change(doc: Any) -> None:
            entries = [e for e in doc[key] if wanted(e)][:n]
            del doc[key][:]
            doc[key].extend(entries)
            kept[key] = min(kept.get(key, n), len(entries))
        return change

    edit(PROMPTS_FILE, keep("prompts", general))
    edit(STYLES_FILE, keep("styles", styles))
    self_contained = lambda e: not NETWORK_TAG.search(str(e["prompt"]))  # noqa: E731
    # both families' tables need the same count: cut to what the poorer one has
    tables = lora_tables(source)
    loras = min([loras] + [sum(map(self_contained, read_yaml(source / lora_table_file(f))["loras"])) for f in tables])
    if loras < 1:
        raise BenchmarkError(f"{source}: a LoRA table has no entry without <lora:...> tags in its prompt; the cut "
                             f"benchmark needs one per family.")
    for family in tables:
        edit(lora_table_file(family), keep("loras", loras, self_contained))

    def protocol(doc: Any) -> None:
        doc["name"] = f"{doc['name']}-cut"
        for task, key in (("general", "prompts"), ("style", "styles"), ("lora", "loras")):
            doc["counts"][task]["items"] = kept[key]
        c = doc["counts"]
        doc["images_per_checkpoint"] = sum(c[t]["items"] * c[t]["batch_size"] * c[t]["n_iter"] for t in TASKS)

    edit(PROTOCOL_FILE, protocol)
    for extra in sorted(source.iterdir()):  # README and anything else that documents the benchmark
        if not (dest / extra.name).exists():
            (shutil.copytree if extra.is_dir() else shutil.copy2)(extra, dest / extra.name)
    return load_benchmark(dest)


def _check_counts(b: Benchmark) -> None:
    """The protocol's counts agree with the tables, spread evenly over subjects, and keep seeds in range."""
    found = [("general", len(b.general), PROMPTS_FILE), ("style", len(b.styles), STYLES_FILE)]
    found += [("lora", len(entries), lora_table_file(f)) for f, entries in b.loras.items()]
    for task, n, file in found:
        expected = b.counts[task].items
        if n != expected:
            raise BenchmarkError(f"{PROTOCOL_FILE}: counts.{task}.items: the protocol says {expected} but {file} has "
                                 f"{n}. Make the table hold {expected} items, or change the protocol (a new benchmark "
                                 f"version).")
    per_style = b.counts["style"].images_per_item
    if per_style % len(b.subjects):
        raise BenchmarkError(f"{STYLES_FILE}: subjects: {per_style} images per style do not spread evenly over "
                             f"{len(b.subjects)} subjects. Use a number of subjects that divides {per_style}.")
    total = sum(c.items * c.images_per_item for c in b.counts.values())
    if total != b.images_per_checkpoint:
        raise BenchmarkError(f"{PROTOCOL_FILE}: images_per_checkpoint is {b.images_per_checkpoint} but the counts give "
                             f"{total}. Write images_per_checkpoint: {total}, or fix the counts.")
    for task, seed in b.base_seeds.items():
        if seed + b.counts[task].images_per_item - 1 > MAX_SEED:
            raise BenchmarkError(f"{PROTOCOL_FILE}: base_seeds.{task}: {seed} + images per item passes {MAX_SEED}. "
                                 f"Use a smaller base seed.")


def _check_names_across_families(b: Benchmark) -> None:
    """LoRA names are item ids, so the same name must not mean two different LoRAs in two families."""
    tables = list(b.loras)
    for i, later in enumerate(tables):
        for earlier in tables[:i]:
            shared = sorted({e.name for e in b.loras[earlier]} & {e.name for e in b.loras[later]})
            if shared:
                raise BenchmarkError(f"{lora_table_file(later)}: LoRA name {shared[0]!r} is also in "
                                     f"{lora_table_file(earlier)}. LoRA names are benchmark item ids; give the "
                                     f"{later} entry its own name (e.g. {shared[0] + '_' + later!r}).")


# ----------------------------------------------------------------------------------------------------------------
# Expansion into concrete images


def lora_table(b: Benchmark, table: str) -> tuple[LoraEntry, ...]:
    """One LoRA table (a family's, or a base's: ``BASE_LORA_TABLES``); an unknown one fails with the valid ones."""
    if table not in b.loras:
        raise BenchmarkError(f"unknown LoRA table {table!r}.{did_you_mean(table, b.loras)} "
                             f"Valid: {', '.join(b.loras)}.")
    return b.loras[table]


def images_per_item(b: Benchmark, seeds: Mapping[str, int] | None = None) -> dict[str, int]:
    """Images per item of each task: the protocol's, or fewer where ``seeds`` asks (0 leaves a task out)."""
    counts = {t: b.counts[t].images_per_item for t in TASKS}
    for task, n in (seeds or {}).items():
        if task not in counts:
            raise BenchmarkError(f"images per item: unknown task {task!r}.{did_you_mean(task, TASKS)} "
                                 f"Valid: {', '.join(TASKS)}.")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= counts[task]:
            raise BenchmarkError(f"images per item: {task} = {n!r}; {b.name} allows 0 to {counts[task]} "
                                 f"(it fixes the seeds of the first {counts[task]}). Use a count in that range.")
        counts[task] = n
    return counts


def lora_tags(entry: LoraEntry) -> list[tuple[str, float]]:
    """``(lora name, weight)`` of every ``<lora:...>`` tag of the header prompt, in prompt order; a prompt with no tag
    gets the entry's own LoRA at ``default_weight`` (the article's rule). A tag with no weight reads as the entry's
    ``default_weight`` (the loader refuses such tags, so only hand-built entries have them)."""
    tags = _tags(entry.prompt)
    if not tags:
        return [(entry.name, entry.default_weight)]
    return [(name, entry.default_weight if w is None else w) for name, w in tags]


def _tags(prompt: str) -> list[tuple[str, float | None]]:
    """``(name, weight or None)`` of each ``<lora:...>`` tag of a prompt, in order."""
    return extract_lora_tags(prompt)[1]


def lora_prompt(entry: LoraEntry) -> str:
    """The header prompt as drawn: unchanged when it has tags, else with ``<lora:name:default_weight>`` appended."""
    if _tags(entry.prompt):
        return entry.prompt
    return f"{entry.prompt} <lora:{entry.name}:{entry.default_weight:g}>"


def _join_negatives(*parts: str) -> str:
    return ", ".join(p.strip().strip(",").strip() for p in parts if p.strip())


def _prefixed(prefix: str, prompt: str) -> str:
    return f"{prefix}, {prompt}" if prefix else prompt


def _shared_negative(b: Benchmark, conv: BaseProtocol) -> str:
    return b.negative_prompt if conv.negative_prompt is None else conv.negative_prompt


def general_items(b: Benchmark, n: int, conv: BaseProtocol = BaseProtocol()) -> list[BenchmarkItem]:
    """Image k of a prompt has seed ``base + k``; ``conv`` (the model's base) prefixes it (its prose instead, for a
    base that reads prose) and picks its negative."""
    seed, negative = b.base_seeds["general"], _shared_negative(b, conv)
    return [BenchmarkItem("general", p.id, k, seed + k, _prefixed(conv.prompt_prefix, p.prose if conv.prose else
                                                                 p.prompt), negative)
            for p in b.general for k in range(n)]


def style_items(b: Benchmark, n: int, conv: BaseProtocol = BaseProtocol()) -> list[BenchmarkItem]:
    """Image k of a style shows ``subjects[k % len(subjects)]`` with seed ``base + k``; ``conv`` as for
    :func:`general_items` (the style's own negative stays first)."""
    seed = b.base_seeds["style"]
    rows = []
    for s in b.styles:
        negative = _join_negatives(s.negative_prompt, _shared_negative(b, conv))
        for k in range(n):
            subject = b.subjects[k % len(b.subjects)]
            prompt = _prefixed(conv.prompt_prefix, s.template.format(subject=subject))
            rows.append(BenchmarkItem("style", s.name, k, seed + k, prompt, negative, subject))
    return rows


def lora_items(b: Benchmark, table: str, n: int) -> list[BenchmarkItem]:
    seed = b.base_seeds["lora"]
    return [BenchmarkItem("lora", e.name, k, seed + k, lora_prompt(e), e.negative_prompt, "", tuple(lora_tags(e)))
            for e in lora_table(b, table) for k in range(n)]


def benchmark_items(b: Benchmark, family: str, seeds: Mapping[str, int] | None = None,
                    base: str | None = None, prose: bool | None = None) -> list[BenchmarkItem]:
    """Every image of the benchmark for one model family: general, then style, then LoRA, each in file order, image
    index ascending. ``seeds`` maps a task to fewer images per item (the first k of the protocol's). ``base`` (a key
    of ``bases.yaml``; None: the family's plain base) applies its prompt prefix and negative prompt to the general
    and style images: the same subjects and seeds for every base, and picks the LoRA table
    (:func:`model_lora_table`). LoRA header prompts stay the LoRA's own. ``prose`` (a model entry's ``prose``; None:
    the base's) draws the general prompts from their prose, or from their tags.

    Raises:
        BenchmarkError: ``prose`` asked of a benchmark whose prompts lack it; an unknown family or base.
    """
    n = images_per_item(b, seeds)
    conv = base_protocol(b, base) if base is not None else BaseProtocol()
    if prose is not None and prose != conv.prose:
        missing = [p.id for p in b.general if not p.prose]
        if prose and missing:
            raise BenchmarkError(f"{PROMPTS_FILE}: prompt {missing[0]!r} has no prose, which a model with `prose: "
                                 f"true` is drawn from. Add a `prose:` line to each prompt of benchmark {b.name}, or "
                                 f"remove prose from the model entry.")
        conv = dataclasses.replace(conv, prose=prose)
    table = model_lora_table(b, family, base)
    return [*general_items(b, n["general"], conv), *style_items(b, n["style"], conv),
            *(lora_items(b, table, n["lora"]) if n["lora"] and table else ())]  # 0 or no table: no LoRA images


# ----------------------------------------------------------------------------------------------------------------
# Provenance and file checks


def _plain(value: Any) -> Any:
    """Dataclasses, mappings and tuples as JSON-ready plain data (mapping keys sorted by json.dumps)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def benchmark_digest(b: Benchmark) -> str:
    """sha256 hex of the benchmark's canonical content: comments and formatting of the YAML files do not change it,
    any prompt, count, seed or table edit does. Reports record it next to ``name`` and ``version``."""
    text = json.dumps(_plain(b), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
