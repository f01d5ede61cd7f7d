"""AUTOMATIC1111 prompt syntax: emphasis weights, BREAK, extra-network tags, and a plain-text view for CLIPScore.

Written from A1111's documented behaviour (the examples in its prompt-parser docstring and wiki), not from its code.

Emphasis rules, as A1111 applies them:
    ``(x)``      multiplies the weight of ``x`` by 1.1, ``[x]`` divides it by 1.1; nesting multiplies.
    ``(x:1.3)``  multiplies the weight by 1.3 instead of 1.1 (so at top level it *sets* 1.3).
    ``\\( \\) \\[ \\] \\\\``  are literal characters; a lone backslash is dropped.
    Brackets still open at the end of the prompt are closed there; a stray ``)`` or ``]`` is literal text.
    ``BREAK`` (upper case, a separate word) ends the current 75-token chunk.
Deliberate differences: A1111 multiplies the BREAK marker's weight when it sits inside brackets, which turns it into
the literal word "BREAK" with a negative weight; here BREAK always stays a chunk break. A1111 fails on a malformed
weight such as ``(x:1.2.3)``; here the weight is kept as text and the bracket acts as a plain ``(x)``.
"""

from __future__ import annotations

import re

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK = "BREAK"
BREAK_MARKER: tuple[str, float] = (BREAK, -1.0)

# One alternative per token kind, tried in order: escapes, a lone backslash, opening brackets, a weighted close
# "(...:1.3)", plain closes, plain text, a lone colon.
_ATTENTION_TOKEN = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\])
  | (?P<backslash>\\)
  | (?P<open>[(\[])
  | (?P<weighted>:\s*(?P<weight>[+-]?[.\d]+)\s*\))
  | (?P<close>[)\]])
  | (?P<text>[^\\()\[\]:]+)
  | (?P<colon>:)
    """,
    re.VERBOSE,
)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)
# A1111 extra networks: "<type:arg1:arg2...>", e.g. <lora:name:0.7>, <hypernet:name:1>, <lyco:name>.
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split an A1111 prompt into ``(text, weight)`` segments.

    Segments with equal weights next to each other are merged; empty segments are dropped (they carry no tokens).
    A BREAK appears as the marker ``("BREAK", -1.0)``. An empty prompt gives ``[("", 1.0)]``.

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    segments: list[list] = []  # [text, weight, is_break]; mutable so that closing brackets can rescale a range
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for seg in segments[start:]:
            if not seg[2]:
                seg[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(text):
        kind, token = match.lastgroup, match.group(0)
        weight = _as_float(match.group("weight"))
        if kind == "escape":
            segments.append([token[1], 1.0, False])
        elif kind == "backslash":
            continue
        elif kind == "open":
            (round_open if token == "(" else square_open).append(len(segments))
        elif kind == "weighted" and round_open and weight is not None:
            scale_from(round_open.pop(), weight)
        elif kind == "weighted" and round_open:  # "(x:1.2.3)": the bad number is text, the ")" still closes
            segments.extend(_split_breaks(token[:-1]))
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == ")" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            segments.extend(_split_breaks(token))
    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)
    return _tidy_segments(segments)


def _as_float(value: str | None) -> float | None:
    """``float(value)``, or None when absent or not a number."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _split_breaks(text: str) -> list[list]:
    """Plain text at weight 1.0, with a break segment wherever the word BREAK stands."""
    out: list[list] = []
    for i, part in enumerate(_BREAK_SPLIT.split(text)):
        if i > 0:
            out.append([BREAK, BREAK_MARKER[1], True])
        out.append([part, 1.0, False])
    return out


def _tidy_segments(segments: list[list]) -> list[tuple[str, float]]:
    """Merge neighbours of equal weight (before dropping empties, as A1111 does), then drop empty segments."""
    merged: list[list] = []
    for seg in segments:
        if merged and not seg[2] and not merged[-1][2] and merged[-1][1] == seg[1]:
            merged[-1][0] += seg[0]
        else:
            merged.append(list(seg))
    out = [BREAK_MARKER if seg[2] else (seg[0], seg[1]) for seg in merged if seg[2] or seg[0]]
    return out or [("", 1.0)]


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float | None]]]:
    """Remove every A1111 extra-network tag from ``prompt``; report the LoRA ones.

    ``<lora:name:0.7>`` gives ``("name", 0.7)``; ``<lora:name>`` gives ``("name", None)`` (the caller's default
    weight). Other tags (``<hypernet:...>``, ``<lyco:...>``, ...) are removed and not reported. The text around a
    tag is left exactly as written (A1111 does not tidy it either, and the tokens decide the pixels).

    Raises:
        ValueError: a LoRA tag with separate text-encoder/UNet weights (``<lora:name:0.5:0.8>``), named arguments,
            or a weight that is not a number.
    """
    loras: list[tuple[str, float | None]] = []
    for match in _EXTRA_NETWORK.finditer(prompt):
        if match.group(1) == "lora":
            loras.append(_parse_lora_args(match.group(0), match.group(2)))
    return _EXTRA_NETWORK.sub("", prompt), loras


def _parse_lora_args(tag: str, args: str) -> tuple[str, float | None]:
    parts = args.split(":")
    if len(parts) > 2 or "=" in args:
        raise ValueError(f"LoRA tag {tag!r}: only <lora:name> and <lora:name:weight> are supported")
    name = parts[0].strip()
    if not name:
        raise ValueError(f"LoRA tag {tag!r} has no name")
    if len(parts) == 1:
        return name, None
    try:
        return name, float(parts[1])
    except ValueError:
        raise ValueError(f"LoRA tag {tag!r}: weight {parts[1]!r} is not a number, e.g. <lora:{name}:0.8>") from None


def plain_text(prompt: str) -> str:
    """The words of an A1111 prompt, for text encoders that know no A1111 syntax (CLIPScore).

    Extra-network tags, emphasis brackets and ``:weight`` suffixes and BREAK are removed, escapes resolved,
    whitespace collapsed, and commas tidied (no space before a comma, no empty or leading/trailing commas).

    >>> plain_text("a (red:1.2) [cat], BREAK , <lora:x:1> \\\\(sitting\\\\)")
    'a red cat, (sitting)'
    """
    text, _ = extract_lora_tags(prompt)
    words = "".join(" " if seg == BREAK_MARKER else seg[0] for seg in parse_prompt_attention(text))
    words = re.sub(r"\s+", " ", words)
    words = re.sub(r"\s*,[\s,]*", ", ", words)  # runs of commas/spaces -> one ", "
    return words.strip(" ,")
