"""Turn LoRA header images (PNGs saved by A1111 with their ``parameters`` text) into LoRA-table entries.

A header PNG's infotext holds what a table entry needs: the prompt with its ``<lora:...>`` tags, the negative prompt,
the settings and the checkpoint it was made with. :func:`lora_entry_from_png` reads it into a plain dict in table
order; :func:`append_entries` adds such dicts to a ``loras_<family>.yaml`` table, keeping its comments and order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from ghostreview.errors import UserError
from ghostreview.generation.infotext import combined_sampler_name, parse_infotext, read_a1111_sampler, read_png_infotext
from ghostreview.generation.prompts import extract_lora_tags
from ghostreview.protocol import (
    SLUG,
    BenchmarkError,
    Loc,
    lora_entry_from_mapping,
)
from ghostreview.scoring.styleloss import ImageLimitError, open_checked_image
from ghostreview.util.atomic import write_atomic
from ghostreview.util.names import table_slug
from ghostreview.util.yamlio import YamlError, read_yaml_lines

DEFAULT_NAME = "lora"  # the table name of a LoRA whose name has no letter or digit
DEFAULT_WEIGHT = 0.8  # the article's weight for a header prompt with no LoRA tag
A1111_MULTIPLIER = 1.0  # A1111's default for <lora:name> written without a weight

# A1111 infotext key -> (settings key, converter, (lo, hi) for numbers). The benchmark draws with params.yaml's
# settings; these are recorded so a user can compare with the header image. Sampler and Schedule type:
# :func:`sampler_settings`. The bounds are wider than A1111's sliders (other UIs write these fields too) and only
# keep out what no generator writes: seeds are 64-bit at most (A1111 draws below 2**32, ComfyUI/Forge below 2**64).
SETTINGS_FROM_INFOTEXT: Mapping[str, tuple[str, Callable[[str], Any], tuple[float, float] | None]] = {
    "Steps": ("steps", int, (1, 1000)),
    "CFG scale": ("cfg", float, (0, 100)),
    "Seed": ("seed", int, (0, 2**64 - 1)),
    "Size": ("size", str, None),
    "Clip skip": ("clip_skip", int, (1, 12)),
    "Denoising strength": ("denoising_strength", float, (0, 1)),
    "Hires upscale": ("hires_upscale", float, (1, 8)),
    "Hires steps": ("hires_steps", int, (0, 1000)),
    "Hires upscaler": ("hires_upscaler", str, None),
    "VAE": ("vae", str, None),
    "Lora hashes": ("lora_hashes", str, None),
}
INTEGER = re.compile(r"[+-]?[0-9]{1,20}(\.0*)?")  # "20", and "20.0" as some UIs write it


class ImportInfotextError(UserError, ValueError):
    """A header image or table that cannot be imported; the message names the file and the fix."""


def _parse(text: str, convert: Callable[[str], Any]) -> Any:
    """``text`` as ``convert`` (int, float or str); ValueError for a non-number, an int with a fraction, inf or nan."""
    if convert is int:
        if not INTEGER.fullmatch(text):
            raise ValueError(text)
        return int(text.split(".")[0])
    value = convert(text)
    if convert is float and not math.isfinite(value):
        raise ValueError(text)
    return value


def _number(value: Any, convert: Callable[[str], Any], bounds: tuple[float, float] | None, key: str,
            path: Path) -> Any:
    """One infotext value, converted and inside ``bounds`` (lo, hi); else an error naming the file and key."""
    text = str(value).strip()
    fix = "Fix the value in the entry by hand, or import another copy of the image."
    try:
        number = _parse(text, convert)
    except ValueError:
        kinds: dict[Callable[[str], Any], str] = {int: "a whole number", float: "a finite number"}
        kind = kinds.get(convert, convert.__name__)
        raise ImportInfotextError(f"{path}: infotext {key}: {text[:80]!r} is not {kind}. {fix}") from None
    if bounds is not None and not bounds[0] <= number <= bounds[1]:
        raise ImportInfotextError(f"{path}: infotext {key}: {text[:80]!r} is out of range (allowed {bounds[0]} to "
                                  f"{bounds[1]}). {fix}")
    return number


def sampler_settings(fields: Mapping[str, Any]) -> dict[str, str]:
    """``sampler`` as GhostReview (and A1111 before 1.9) names it, from the old combined form ("DPM++ 2M Karras") or
    the split one ("DPM++ 2M" + "Schedule type: Karras"); ``schedule_type`` (resolved: "Automatic" is the sampler's
    default in A1111 >= 1.9) when the infotext has that field."""
    sampler = str(fields.get("Sampler", "")).strip()
    if not sampler:
        return {}
    stated = str(fields.get("Schedule type", "")).strip() or None
    name, schedule = read_a1111_sampler(sampler, stated)
    out = {"sampler": combined_sampler_name(name, schedule)}
    return out | {"schedule_type": schedule} if stated else out


def noise_note(fields: Mapping[str, Any]) -> str | None:
    """Why GhostReview cannot redraw the image bit-for-bit when A1111 drew its noise elsewhere than on the CPU.

    A1111 writes ``RNG`` only when the noise source is not its default, the GPU; GhostReview draws CPU noise.
    """
    rng = str(fields.get("RNG", "")).strip()
    if rng.upper() == "CPU":
        return None
    source = f"{rng} noise" if rng else "A1111's default GPU noise (no RNG field)"
    return f"drawn with {source}: GhostReview draws CPU noise, so that image cannot be reproduced bit-for-bit"


def settings_from_fields(fields: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The recorded settings of a header image, from its infotext ``Key: value`` fields."""
    out: dict[str, Any] = sampler_settings(fields)
    for key, (name, convert, bounds) in SETTINGS_FROM_INFOTEXT.items():
        if key in fields and str(fields[key]).strip():
            out[name] = _number(fields[key], convert, bounds, key, path)
    return out


def made_with_from_fields(fields: Mapping[str, Any]) -> list[str]:
    """The checkpoint name and AutoV2 hash the header image was made with (whichever the infotext has)."""
    found = [str(fields[k]).strip() for k in ("Model", "Model hash") if str(fields.get(k, "")).strip()]
    return list(dict.fromkeys(found))


def _own_tag(tags: list[tuple[str, float | None]], name: str | None) -> str | None:
    """The tag that is the imported LoRA itself: the one whose slug is ``name``, else the first; None without tags."""
    if not tags:
        return None
    by_slug = [t for t, _ in tags if table_slug(t, DEFAULT_NAME) == name]
    return by_slug[0] if by_slug else tags[0][0]


def rename_tags(prompt: str, renames: Mapping[str, str]) -> str:
    """Rewrite ``<lora:Original:w>`` tags as ``<lora:slug:w>`` with an explicit weight (A1111's 1.0 when absent)."""

    def one(match: re.Match) -> str:
        tag = match.group(0)
        _, tags = extract_lora_tags(tag)
        if not tags:  # another extra network (<hypernet:...>): left for the table check to report
            return tag
        original, weight = tags[0]
        w = A1111_MULTIPLIER if weight is None else weight
        return f"<lora:{renames.get(original, table_slug(original, DEFAULT_NAME))}:{w:g}>"

    return re.sub(r"<\w+:[^>]+>", one, prompt)


def lora_entry_from_png(path: Path, name: str | None = None) -> dict:
    """A LoRA-table entry (a plain dict in table order) from a header PNG's A1111 ``parameters`` text.

    ``name`` (a slug) names the entry; by default the slug of the first ``<lora:...>`` tag, else of the file name.
    The tag that is this LoRA (the one whose slug is ``name``, else the first) is renamed to ``name`` and gives
    ``file`` (A1111 names a tag after the file, so ``<lora:MoXin_v1:0.8>`` is ``MoXin_v1.safetensors``); other tags
    keep their slugged names and need entries of their own. Tags without a weight get A1111's 1.0.
    """
    path = Path(path)
    try:
        open_checked_image(path).close()  # the pixel and aspect limits, from the header, before Pillow reads more
        text = read_png_infotext(path)
    except ImageLimitError as exc:
        raise ImportInfotextError(str(exc)) from None
    except OSError as exc:
        raise ImportInfotextError(f"{path}: cannot read it as an image ({exc}). Give the header PNG itself.") from None
    if not text or not text.strip():
        raise ImportInfotextError(f"{path}: this image carries no A1111 parameters (saved from a site that strips "
                                  f"metadata?). Download the original PNG from the model page, or write the entry "
                                  f"by hand (see docs/benchmark.md).")
    prompt, negative, fields = parse_infotext(text)
    try:
        tags = extract_lora_tags(prompt)[1]
    except ValueError as exc:
        raise ImportInfotextError(f"{path}: {exc}. Edit the tag in the entry after importing.") from None
    own = _own_tag(tags, name)
    name = name or table_slug(own or path.stem, DEFAULT_NAME)
    if not SLUG.fullmatch(name):
        raise ImportInfotextError(f"{path}: name {name!r} is not a slug. Use lower-case letters, digits and _, "
                                  f"e.g. {table_slug(name, DEFAULT_NAME)!r}.")
    return {
        "name": name,
        "title": own or path.stem,
        "file": f"{own or name}.safetensors",
        "prompt": rename_tags(prompt, {own: name} if own else {}),
        "negative_prompt": negative,
        "header_images": [path.name],
        "default_weight": DEFAULT_WEIGHT,
        "made_with": made_with_from_fields(fields),
        "source": "; ".join(filter(None, [f"imported from the infotext of {path.name}", noise_note(fields)])),
        "settings": settings_from_fields(fields, path),
    }


# --------------------------------------------------------------------------------------------------------------------
# Writing into a table, comments preserved


def _yaml() -> YAML:
    """Round-trip YAML matching the shipped tables' layout (2-space maps, '- ' lists indented by 2, no wrapping)."""
    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # long prompts stay on one line
    yaml.preserve_quotes = True
    return yaml


def _flow_seq(items: Iterable[Any]) -> CommentedSeq:
    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


QUOTED_KEYS = ("prompt", "negative_prompt", "source")  # free text that may hold ': ' or start with '('


def _as_yaml_entry(entry: Mapping[str, Any]) -> CommentedMap:
    """An entry dict as the tables write it: prompts quoted, lists and settings inline, one key a line."""
    out = CommentedMap()
    for key, value in entry.items():
        if key in QUOTED_KEYS and isinstance(value, str):
            value = DoubleQuotedScalarString(value)
        elif isinstance(value, (list, tuple)):
            value = _flow_seq(value)
        elif isinstance(value, Mapping):
            value = CommentedMap(value)
            value.fa.set_flow_style()
        out[key] = value
    return out


def _check_entries(entries: list[Mapping[str, Any]], table_yaml: Path, start: int) -> None:
    for i, entry in enumerate(entries):
        try:
            lora_entry_from_mapping(entry, Loc(f"{table_yaml.name} (new entry)", f"loras[{start + i}]"))
        except BenchmarkError as exc:
            raise ImportInfotextError(str(exc)) from None


def unresolved_tags(table: Iterable[Mapping[str, Any]]) -> list[str]:
    """Messages for tags that name no entry of the table (a multi-LoRA header imported before its partners)."""
    table = list(table)
    names = {str(e["name"]) for e in table}
    return [f"{e['name']}: <lora:{n}:...> names no entry yet; import or add {n!r}, or remove the tag"
            for e in table for n, _ in extract_lora_tags(str(e["prompt"]))[1] if n not in names]


def append_entries(table_yaml: Path, entries: Iterable[Mapping[str, Any]], replace: bool = False) -> list[str]:
    """Add entries to a LoRA table file, keeping its comments and order; returns warnings (tags naming no entry).

    An entry whose name is already in the table is an error, unless ``replace`` is set: then it takes that slot in
    place. Each entry is checked like the loader checks it before anything is written; the file is replaced
    atomically.
    """
    table_yaml = Path(table_yaml)
    entries = [dict(e) for e in entries]
    try:
        data = read_yaml_lines(table_yaml, _yaml())
    except (OSError, YamlError) as exc:
        why = exc.problem if isinstance(exc, YamlError) else exc
        raise ImportInfotextError(f"{table_yaml}: cannot read the table: {why}") from None
    if not isinstance(data, dict) or not isinstance(data.get("loras"), list):
        raise ImportInfotextError(f"{table_yaml}: not a LoRA table (no top-level 'loras:' list). Point at a "
                                  f"loras_<family>.yaml file of a benchmark directory.")
    rows = data["loras"]
    _check_entries(entries, table_yaml, len(rows))
    _merge(rows, entries, replace, table_yaml)
    _write(table_yaml, data)
    return unresolved_tags(rows)


def _merge(rows: list, entries: list[Mapping[str, Any]], replace: bool, table_yaml: Path) -> None:
    index = {str(r.get("name")): i for i, r in enumerate(rows) if isinstance(r, Mapping)}
    for entry in entries:
        at = index.get(entry["name"])
        if at is not None and not replace:
            raise ImportInfotextError(f"{table_yaml}: loras[{at}] is already named {entry['name']!r}. Choose "
                                      f"another name, or replace that slot (replace=True).")
        if at is None:
            index[entry["name"]] = len(rows)
            rows.append(_as_yaml_entry(entry))
        else:
            rows[at] = _as_yaml_entry(entry)


def _write(table_yaml: Path, data: Any) -> None:
    """Replace the table file atomically (a killed import never leaves half a table)."""
    write_atomic(table_yaml, lambda f: _yaml().dump(data, f))
