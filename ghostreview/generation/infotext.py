"""A1111 "infotext": the generation parameters stored in a PNG's ``parameters`` text chunk.

Layout (A1111's, so that A1111, civitai and other readers understand our images)::

    <prompt, possibly several lines>
    Negative prompt: <negative prompt, possibly several lines>     (omitted when empty)
    Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, Lora hashes: "a: 0123"

A value containing a comma, colon, newline or double quote is written as a JSON string (A1111 quotes on comma,
colon and newline; quoting on ``"`` too keeps values that start with a quote round-trippable).

Samplers: GhostReview's sampler names are A1111's combined names ("DPM++ 2M Karras"), as A1111 wrote them before
1.9. Since 1.9 A1111 writes the sigma schedule as its own field (``Sampler: DPM++ 2M, Schedule type: Karras``) and
reads "Automatic" (or a missing field) as the sampler's own default, which for DPM++ 2M is Karras.
:func:`a1111_sampler_fields` writes the split form with the schedule always explicit; :func:`read_a1111_sampler`
reads either form.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

PNG_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"
# key: "json string" | plain value up to the next comma; keys start with a word character.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY = re.compile(r"\w[\w \-/]+")
# A last line is taken as the parameter line when it parses fully and has at least this many entries (A1111's rule),
# or when it starts with "Steps:" (every generation writes Steps first).
MIN_PARAMS_WITHOUT_STEPS = 3

# A1111's schedule-type labels (sd_schedulers); a combined sampler name ends in one of them.
SCHEDULE_LABELS = ("Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                   "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")
UNIFORM, AUTOMATIC = "Uniform", "Automatic"  # Uniform: the model's own sigmas, what a plain name meant before 1.9
# What "Schedule type: Automatic" means in A1111 >= 1.9 (its samplers' "scheduler" option); any other: Uniform.
A1111_AUTOMATIC_SCHEDULES = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2S a": "Karras",
                             "DPM++ 2M SDE": "Exponential", "DPM++ 2M SDE Heun": "Exponential",
                             "DPM++ 3M SDE": "Exponential", "DPM2": "Karras", "DPM2 a": "Karras",
                             "Restart": "Karras"}
# A1111's time-step samplers (sd_samplers_timesteps) have no sigma schedule: it writes "Automatic" for them.
TIMESTEP_SAMPLERS = ("DDIM", "PLMS", "UniPC")


def format_value(value: object) -> str:
    """A parameter value as A1111 writes it: floats without a trailing ``.0`` and at full precision, bools and
    everything else through ``str``; quoted as a JSON string when it holds ``,`` ``:`` newline or ``"``."""
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    if any(c in text for c in ',:\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_lora_hashes(hashes: Mapping[str, str]) -> str:
    """A1111's ``Lora hashes`` value: ``"name: hash, name: hash"`` (``:`` and ``,`` removed from names)."""
    return ", ".join(f"{re.sub('[:,]', '', name)}: {h}" for name, h in hashes.items())


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The infotext of one image; ``params`` in the order given (A1111: Steps, Sampler, CFG scale, Seed, Size, ...).

    None values are skipped.

    Raises:
        ValueError: a key A1111's parser cannot read back (must match ``\\w[\\w -/]+``), fewer than 3 parameters
            without Steps first (the line would be read back as prompt), or a prompt line starting with
            "Negative prompt:" (it would be read back as the negative prompt).
    """
    entries = [(k, v) for k, v in params.items() if v is not None]
    keys = [k for k, _ in entries]
    if len(keys) < MIN_PARAMS_WITHOUT_STEPS and keys[:1] != ["Steps"]:
        raise ValueError(f"infotext needs Steps first or at least {MIN_PARAMS_WITHOUT_STEPS} parameters to be read "
                         f"back as parameters, got {keys}")
    for key in keys:
        if not _KEY.fullmatch(key):
            raise ValueError(f"infotext key {key!r}: use letters, digits, spaces, '-', '/' (at least 2 characters)")
    if any(line.lstrip().startswith(NEGATIVE_PREFIX) for line in prompt.split("\n")):
        raise ValueError(f"prompt has a line starting with {NEGATIVE_PREFIX!r}; it would be read back as the "
                         "negative prompt")
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {negative_prompt}")
    lines.append(", ".join(f"{k}: {format_value(v)}" for k, v in entries))
    return "\n".join(lines)


def parse_params_line(line: str) -> dict[str, str] | None:
    """``{key: value}`` of a ``Key: value, Key: "quoted, value"`` line, or None when the line is not one."""
    params: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        match = _PARAM.match(line, pos)
        if match is None or match.end() == pos:
            return None
        key, value = match.group(1).strip(), match.group(2).strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            with contextlib.suppress(json.JSONDecodeError):  # not JSON: kept as written, quotes and all
                value = json.loads(value)
        params[key] = value
        pos = match.end()
    return params or None


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """``(prompt, negative_prompt, params)`` from an infotext; values stay strings (quotes removed).

    The last line is the parameter line when it parses as one and either has at least 3 entries or starts with
    ``Steps:`` (A1111's heuristic); otherwise the whole text is prompt. Lines from the first one starting with
    ``Negative prompt:`` belong to the negative prompt.
    """
    lines = text.strip("\n").split("\n")
    params = parse_params_line(lines[-1].strip())
    if params is not None and (len(params) >= MIN_PARAMS_WITHOUT_STEPS or lines[-1].lstrip().startswith("Steps:")):
        lines = lines[:-1]
    else:
        params = {}
    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in lines:
        if negative_lines is None and line.lstrip().startswith(NEGATIVE_PREFIX):
            rest = line.lstrip()[len(NEGATIVE_PREFIX) :]
            negative_lines = [rest[1:] if rest.startswith(" ") else rest]
        elif negative_lines is None:
            prompt_lines.append(line)
        else:
            negative_lines.append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines or []), params


def split_schedule(name: str) -> tuple[str, str | None]:
    """A combined sampler name's sampler and schedule: "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"); a name without a
    schedule label -> (name, None)."""
    for label in sorted(SCHEDULE_LABELS, key=len, reverse=True):  # "SGM Uniform" before "Uniform"
        if name.endswith(" " + label):
            return name[: -len(label) - 1], label
    return name, None


def a1111_sampler_fields(name: str) -> tuple[str, str]:
    """``(Sampler, Schedule type)`` as A1111 >= 1.9 writes them for our sampler ``name``.

    "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"); "DPM++ 2M" -> ("DPM++ 2M", "Uniform"), never "Automatic" (A1111
    >= 1.9 reads that as Karras for DPM++ 2M); time-step samplers -> ("DDIM", "Automatic").
    """
    sampler, schedule = split_schedule(name)
    if sampler in TIMESTEP_SAMPLERS:
        return sampler, AUTOMATIC
    return sampler, schedule or UNIFORM


def read_a1111_sampler(sampler: str, schedule_type: str | None) -> tuple[str, str]:
    """``(sampler, schedule)`` an infotext's ``Sampler`` and ``Schedule type`` fields say the image was drawn with.

    A schedule at the end of the name wins, as in A1111. Without a Schedule type field (A1111 before 1.9 wrote none)
    a plain name is Uniform; "Automatic" is the sampler's default in A1111 >= 1.9 (``A1111_AUTOMATIC_SCHEDULES``).
    Time-step samplers keep "Automatic": they have no schedule.
    """
    sampler, named = split_schedule(sampler.strip())
    schedule = named or (schedule_type or "").strip() or UNIFORM
    if sampler in TIMESTEP_SAMPLERS:
        return sampler, AUTOMATIC
    if schedule == AUTOMATIC:
        return sampler, A1111_AUTOMATIC_SCHEDULES.get(sampler, UNIFORM)
    return sampler, schedule


def combined_sampler_name(sampler: str, schedule: str) -> str:
    """Our (and pre-1.9 A1111's) name for a sampler and schedule: ("DPM++ 2M", "Karras") -> "DPM++ 2M Karras";
    Uniform and Automatic add nothing."""
    return sampler if schedule in (UNIFORM, AUTOMATIC) else f"{sampler} {schedule}"


# Forge's fields for Flux: CFG stays 1 (no unconditional pass), the distilled guidance is its own field, the
# schedule is "Simple"; "Shift" is the flow-matching shift the sigmas were drawn with (e^mu for dev's dynamic shift).
DISTILLED_CFG = "Distilled CFG Scale"
FLUX_SCHEDULE = "Simple"
SHIFT = "Shift"


def flux_fields(guidance: float | None, shift: float) -> dict[str, object]:
    """The infotext fields of a Flux image ({"Schedule type", "CFG scale", "Distilled CFG Scale", "Shift"});
    schnell (``guidance`` None: no guidance embedder) writes no Distilled CFG Scale."""
    return {"Schedule type": FLUX_SCHEDULE, "CFG scale": 1, DISTILLED_CFG: guidance, SHIFT: shift}


def read_flux_fields(params: Mapping[str, str]) -> tuple[float | None, float | None]:
    """``(distilled guidance, shift)`` of a parsed infotext's parameters (None where the field is absent)."""
    def number(key: str) -> float | None:
        return float(params[key]) if key in params else None

    return number(DISTILLED_CFG), number(SHIFT)


def pnginfo(text: str) -> PngInfo:
    """A ``PngInfo`` holding ``text`` under the ``parameters`` key (iTXt when it is not Latin-1)."""
    info = PngInfo()
    info.add_text(PNG_KEY, text)
    return info


def read_png_infotext(path: Path) -> str | None:
    """The ``parameters`` text of a PNG, or None when it has none."""
    with Image.open(path) as image:
        value = image.info.get(PNG_KEY)
    return value if isinstance(value, str) else None
