"""Turn LoRA header images (saved by A1111 with their parameters) into LoRA-table entries.

A header image's infotext holds what a table entry needs: the prompt with its ``<lora:...>`` tags, the negative
prompt, the settings and the checkpoint it was made with. A1111 stores it as the PNG text chunk ``parameters``, and in
JPEG and WebP files as the EXIF UserComment (:func:`read_infotext`). :func:`lora_entry_from_png` reads it into a plain
dict in table order; :func:`append_entries` adds such dicts to a ``loras_<family>.yaml`` table as text: the lines of
the other entries, the comments and the indentation stay byte for byte.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from PIL import ExifTags, Image
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from ghostreview.errors import UserError
from ghostreview.generation.infotext import PNG_KEY, combined_sampler_name, parse_infotext, read_a1111_sampler
from ghostreview.generation.prompts import extract_lora_tags
from ghostreview.protocol import (
    SLUG,
    BenchmarkError,
    Loc,
    lora_entry_from_mapping,
)
from ghostreview.util.atomic import write_text_atomic
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

# EXIF UserComment (tag 0x9286 in the Exif IFD): an 8-byte character code, then the text (EXIF 2.32, 4.6.5). A1111
# saves a JPEG's or WebP's parameters with piexif's UserComment.dump(text, encoding="unicode"): "UNICODE\0" and
# UTF-16 big-endian, without a byte order mark.
EXIF_CHARSETS = {b"UNICODE\0": "utf-16", b"ASCII\0\0\0": "ascii", b"JIS\0\0\0\0\0": "shift_jis",
                 b"\0" * 8: "utf-8"}  # "undefined": read as UTF-8, as exiftool does
NO_PARAMETERS = ("this image carries no A1111 parameters (saved from a site that strips metadata?)")


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


def decode_user_comment(raw: bytes | str | None) -> str | None:
    """The text of an EXIF UserComment value (its character code read, trailing NULs dropped); None when empty.

    UTF-16 without a byte order mark is read big-endian, as piexif (A1111) writes it, unless its zero bytes sit at odd
    offsets, which is how mostly-ASCII text looks in little-endian (written by other tools). A comment without a known
    character code is read as UTF-8.
    """
    if raw is None:
        return None
    if isinstance(raw, str):  # a writer that stored it as ASCII type
        text = raw
    else:
        charset = EXIF_CHARSETS.get(raw[:8])
        body = raw[8:] if charset else raw
        if charset == "utf-16" and body[:2] not in (b"\xfe\xff", b"\xff\xfe"):
            charset = "utf-16-le" if body[1::2].count(0) > body[0::2].count(0) else "utf-16-be"
        text = body.decode(charset or "utf-8", errors="replace")
    text = text.rstrip("\0")
    return text if text.strip() else None


def read_infotext(image: Image.Image) -> str | None:
    """An image's A1111 infotext: the PNG text chunk ``parameters``, else the EXIF UserComment (JPEG, WebP; a PNG
    converted by another tool may carry one too). None when it has neither."""
    text = image.info.get(PNG_KEY)
    if isinstance(text, str) and text.strip():
        return text
    exif = image.getexif().get_ifd(ExifTags.IFD.Exif)
    return decode_user_comment(exif.get(ExifTags.Base.UserComment))


def read_header_infotext(path: Path) -> str:
    """The infotext of the header image at ``path``, its size checked first (the reference images' limits).

    Raises:
        ImportInfotextError: over the image limits, not an image, or without A1111 parameters.
    """
    # scoring.styleloss owns the image limits; it imports torch, so only an import that reads an image loads it
    from ghostreview.scoring.styleloss import ImageLimitError, open_checked_image

    try:
        with open_checked_image(path) as image:  # the pixel and aspect limits, from the header; no pixel decoded
            text = read_infotext(image)
    except ImageLimitError as exc:
        raise ImportInfotextError(str(exc)) from None
    except OSError as exc:
        raise ImportInfotextError(f"{path}: cannot read it as an image ({exc}). Give the header image itself (PNG, "
                                  f"JPEG or WebP, as saved by A1111).") from None
    if text is None:
        raise ImportInfotextError(f"{path}: {NO_PARAMETERS}: no PNG 'parameters' text and no EXIF UserComment. "
                                  f"Download the original image from the model page, or write the entry by hand "
                                  f"(see docs/benchmark.md).")
    return text


def lora_entry_from_png(path: Path, name: str | None = None) -> dict:
    """A LoRA-table entry (a plain dict in table order) from a header image's A1111 parameters (PNG, JPEG or WebP:
    :func:`read_infotext`).

    ``name`` (a slug) names the entry; by default the slug of the first ``<lora:...>`` tag, else of the file name.
    The tag that is this LoRA (the one whose slug is ``name``, else the first) is renamed to ``name`` and gives
    ``file`` (A1111 names a tag after the file, so ``<lora:MoXin_v1:0.8>`` is ``MoXin_v1.safetensors``); other tags
    keep their slugged names and need entries of their own. Tags without a weight get A1111's 1.0.
    """
    path = Path(path)
    text = read_header_infotext(path)
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


def _check_entries(entries: Sequence[Mapping[str, Any]], table_yaml: Path, start: int) -> None:
    for i, entry in enumerate(entries):
        try:
            lora_entry_from_mapping(entry, Loc(f"{table_yaml.name} (new entry)", f"loras[{start + i}]"))
        except BenchmarkError as exc:
            raise ImportInfotextError(str(exc)) from None


def placement(entry: Mapping[str, Any], family: str | None = None) -> str:
    """Where an imported entry's files go, and which file its tag draws: the entry's ``<lora:name:w>`` tag draws
    ``file`` (the file of the header's own tag, or ``<name>.safetensors`` when the header had none). ``family`` (from
    the table's file name) fills in the params keys."""
    name, file, fam = entry["name"], entry["file"], family or "<family>"
    headers = ", ".join(entry["header_images"])
    where = f"put {file} in paths.loras.{fam} and {headers} in paths.lora_headers.{fam}/{name}/"
    if f"<lora:{name}:" in str(entry["prompt"]):
        return f"{name}: its tag <lora:{name}:...> draws {file} (the LoRA file of the header's tag): {where}"
    return (f"{name}: the header prompt has no LoRA tag, so the entry draws {file} at default_weight "
            f"{entry['default_weight']}: {where} (your LoRA file under that name, or edit file: in the entry)")


def table_family(table_yaml: Path) -> str | None:
    """The family whose folders hold a ``loras_<table>.yaml`` table's files, from its file name (``loras_pony.yaml``:
    sdxl; None for another name)."""
    from ghostreview.generation.families import table_family as family_of

    match = re.fullmatch(r"loras_([a-z0-9]+)\.ya?ml", Path(table_yaml).name)
    return family_of(match.group(1)) if match else None


def unresolved_tags(table: Iterable[Mapping[str, Any]]) -> list[str]:
    """Messages for tags that name no entry of the table (a multi-LoRA header imported before its partners)."""
    table = list(table)
    names = {str(e["name"]) for e in table}
    return [f"{e['name']}: <lora:{n}:...> names no entry yet; import or add {n!r}, or remove the tag"
            for e in table for n, _ in extract_lora_tags(str(e["prompt"]))[1] if n not in names]


def append_entries(table_yaml: Path, entries: Iterable[Mapping[str, Any]], replace: bool = False) -> list[str]:
    """Add entries to a LoRA table file; returns warnings (tags naming no entry).

    The file is edited as text: a new entry's lines go after the last entry, a replaced entry's lines take the place
    of the old ones, written with the table's own list indentation; every other byte (comments, blank lines, the other
    entries' layout and quoting) stays as it was. An entry whose name is already in the table is an error, unless
    ``replace`` is set (``--replace``). Each entry is checked like the loader checks it before anything is written;
    the file is replaced atomically.
    """
    table_yaml = Path(table_yaml)
    new: list[dict[str, Any]] = [dict(e) for e in entries]
    try:
        data = read_yaml_lines(table_yaml, _yaml())
        text = table_yaml.read_bytes().decode("utf-8")  # as is: no newline translation
    except (OSError, YamlError) as exc:
        why = exc.problem if isinstance(exc, YamlError) else exc
        raise ImportInfotextError(f"{table_yaml}: cannot read the table: {why}") from None
    if not isinstance(data, dict) or not isinstance(data.get("loras"), list):
        raise ImportInfotextError(f"{table_yaml}: not a LoRA table (no top-level 'loras:' list). Point at a "
                                  f"loras_<family>.yaml file of a benchmark directory.")
    rows = data["loras"]
    _check_entries(new, table_yaml, len(rows))
    slots = _slots(rows, new, replace, table_yaml)
    if rows and not rows.fa.flow_style():
        new_text = _edited(text, data, slots, new)
    else:  # an empty or one-line ([...]) list has no entry lines to keep: write the whole document
        new_text = _dumped(data, slots, new)
    _check_written(new_text, table_yaml, slots, new)
    write_text_atomic(table_yaml, new_text)
    merged = list(rows) + [None] * sum(at is None for at in slots)
    for at, entry in zip(_positions(slots, len(rows)), new):
        merged[at] = entry
    return unresolved_tags(merged)


def _slots(rows: list, entries: list[dict[str, Any]], replace: bool, table_yaml: Path) -> list[int | None]:
    """For each new entry, the index of the table entry it replaces, or None to append it."""
    names = [str(e["name"]) for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ImportInfotextError(f"{table_yaml}: {len(names)} images give entries named {twice[0]!r}. Import them "
                                  f"one at a time, each with its own --name.")
    index = {str(r.get("name")): i for i, r in enumerate(rows) if isinstance(r, Mapping)}
    slots = []
    for name in names:
        at = index.get(name)
        if at is not None and not replace:
            raise ImportInfotextError(f"{table_yaml}: loras[{at}] is already named {name!r}. Choose another name "
                                      f"(--name), or replace that slot (--replace).")
        slots.append(at)
    return slots


def _positions(slots: list[int | None], n_rows: int) -> list[int]:
    """Where each new entry ends up in the list: its replaced slot, or after the table's entries, in order."""
    appended = iter(range(n_rows, n_rows + len(slots)))
    return [next(appended) if at is None else at for at in slots]


def _blank_or_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def _entry_spans(lines: list[str], rows: Any) -> list[tuple[int, int]]:
    """[start, end) line ranges of the list's entries: from an entry's ``-`` line to its last line of content. Comment
    and blank lines after an entry are outside its range (they may introduce the next one)."""
    dashes = []
    for i in range(len(rows)):
        line = rows.lc.item(i)[0]
        while not lines[line].lstrip().startswith("-"):  # an entry whose first key is on the line after its dash
            line -= 1
        dashes.append(line)
    dash_col = len(lines[dashes[0]]) - len(lines[dashes[0]].lstrip())
    spans = []
    for i, start in enumerate(dashes):
        end = dashes[i + 1] if i + 1 < len(dashes) else next(
            (j for j in range(start + 1, len(lines)) if not _blank_or_comment(lines[j])
             and len(lines[j]) - len(lines[j].lstrip()) <= dash_col), len(lines))
        while end > start + 1 and _blank_or_comment(lines[end - 1]):
            end -= 1
        spans.append((start, end))
    return spans


def _rendered(entry: Mapping[str, Any], parent_col: int, dash_col: int, key_col: int, newline: str) -> list[str]:
    """An entry's lines as the table writes its entries, at the table's own columns for ``-`` and the keys."""
    writer = _yaml()
    writer.indent(mapping=2, sequence=key_col - parent_col, offset=dash_col - parent_col)
    out = io.StringIO()
    writer.dump({"loras": [_as_yaml_entry(entry)]}, out)
    body = out.getvalue().splitlines()[1:]  # below "loras:"
    return [" " * parent_col + line + newline for line in body]


def _edited(text: str, data: Any, slots: list[int | None], entries: list[dict[str, Any]]) -> str:
    """``text`` with the new entries' lines spliced in (see :func:`append_entries`); nothing else changes."""
    rows = data["loras"]
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if "\r\n" in text else "\n"
    spans = _entry_spans(lines, rows)
    first = lines[spans[0][0]]
    dash_col = len(first) - len(first.lstrip())
    line0, key_col = rows.lc.item(0)
    if line0 != spans[0][0]:
        key_col = dash_col + 2
    parent_col = data.lc.key("loras")[1]
    render = [_rendered(e, parent_col, dash_col, key_col, newline) for e in entries]
    # bottom up, so that the line numbers of the spans still to edit stay valid
    end_of_list = spans[-1][1]
    appended = [line for at, lines_ in zip(slots, render) if at is None for line in lines_]
    if appended:
        if not lines[end_of_list - 1].endswith(("\n", "\r")):
            lines[end_of_list - 1] += newline
        lines[end_of_list:end_of_list] = appended
    for at, lines_ in sorted(((at, r) for at, r in zip(slots, render) if at is not None), reverse=True):
        start, end = spans[at]
        lines[start:end] = lines_
    return "".join(lines)


def _dumped(data: Any, slots: list[int | None], entries: list[dict[str, Any]]) -> str:
    """The whole document dumped with the new entries merged in (for a table whose list has no entry lines)."""
    rows = data["loras"]
    for at, entry in zip(slots, entries):
        if at is None:
            rows.append(_as_yaml_entry(entry))
        else:
            rows[at] = _as_yaml_entry(entry)
    out = io.StringIO()
    _yaml().dump(data, out)
    return out.getvalue()


def _check_written(text: str, table_yaml: Path, slots: list[int | None], entries: list[dict[str, Any]]) -> None:
    """The edited text reads back with each new entry, as given, at its place (a guard on the splicing)."""
    rows = (yaml.safe_load(text) or {}).get("loras") or []
    n_rows = len(rows) - sum(at is None for at in slots)
    for at, entry in zip(_positions(slots, n_rows), entries):
        if at >= len(rows) or rows[at] != json.loads(json.dumps(entry)):
            raise AssertionError(f"{table_yaml}: the edited table does not read back entry {entry['name']!r} at "
                                 f"loras[{at}]; nothing was written")
