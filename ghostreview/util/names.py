"""Names: the one slug rule and the one "did you mean" hint.

Slugs: lower-case ASCII letters and digits stay, every run of anything else becomes one separator, separators at
either end go. What a caller may keep varies with where the name goes, so each kind of name has its preset:

- :func:`model_slug` for params keys (``models.<name>``): letters, digits, ``_`` and ``-``, never ``.``: a key holding
  a dot breaks DVC's params paths (``models.a.b`` reads as two levels);
- :func:`table_slug` for LoRA table names and ``<lora:name:w>`` tags: letters, digits and ``_``.

``ghostreview/config.py`` is a leaf that imports nothing of the project, so it keeps a marked copy of
:func:`model_slug` and :func:`did_you_mean`; tests/test_vocabulary.py checks that the copies agree.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

CUTOFF = 0.6  # difflib's own default similarity for get_close_matches
_ENDS = "-_"


def slug(text: str, keep: str = "", sep: str = "_", lower: bool = True, default: str = "") -> str:
    """``text`` as a slug: each run of characters other than ASCII letters, digits and ``keep`` becomes ``sep``.

    Upper case is lowered first unless ``lower`` is False. ``-`` and ``_`` are stripped from both ends (a name must
    start with a letter or digit). Returns ``default`` when nothing is left (``"+++"``, ``""``).
    """
    text = text.lower() if lower else text
    letters = "a-z0-9" if lower else "A-Za-z0-9"
    out = re.sub(f"[^{letters}{re.escape(keep)}]+", sep, text).strip(_ENDS)
    return out or default


def model_slug(text: str, default: str = "") -> str:
    """A params-key name (``[a-z0-9][a-z0-9_-]*``): ``"DreamShaper 8.5"`` -> ``"dreamshaper-8-5"``."""
    return slug(text, keep="_-", sep="-", default=default)


def table_slug(text: str, default: str = "") -> str:
    """A LoRA table name (``[a-z0-9_]+``): ``"MoXin v1.0"`` -> ``"moxin_v1_0"`` (runs of ``_`` become one)."""
    return slug(text, sep="_", default=default)


def closest(word: object, options: Iterable[str], cutoff: float = CUTOFF) -> str | None:
    """The option most similar to ``word`` (difflib ratio of at least ``cutoff``), or None.

    ``word`` may be any YAML key (a number, a boolean): it is compared as ``str(word)``.
    """
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(word: object, options: Iterable[str], cutoff: float = CUTOFF, quote: str = '"') -> str:
    """``' Did you mean "x"?'`` for the closest option, or ``""`` when none is close: append it to a sentence.

    ``quote`` wraps the suggestion: ``"`` for keys (config, benchmark files), ``'`` for names (metrics, samplers).
    """
    match = closest(word, options, cutoff)
    return f" Did you mean {quote}{match}{quote}?" if match is not None else ""
