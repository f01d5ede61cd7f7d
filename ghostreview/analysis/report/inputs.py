"""The report's inputs read compactly: only the columns the report shows, and one text object per distinct text.

At 500 models the report reads 784,000 manifest rows, 2.8 million score rows and as many standardized image rows.
pandas 3's CSV reader gives every row its own str object, even for a column of one value (a family, a task, a
model name: about 50 bytes each, where a shared object costs the row an 8-byte pointer), and each table holds its own
copy of every image hash (113 bytes). ``shared_texts`` makes equal texts of every table the report holds one object
(``sys.intern``), held in pandas' Python string storage (``SHARED_TEXT``) whatever pandas' default is: with pyarrow
installed, pandas 3 reads texts into Arrow buffers, whose values are new objects on every access and cannot be
shared. Infotexts are the largest text of a manifest row (about 700 characters, unique per image: the seed is in
it); ``compact_infotexts`` holds each as its prompt lines and its settings line with the seed marked, both shared by
every image of an item (the prompt lines) or of a model's task (the settings). The columns a report never shows are
not read (manifest ``model``, ``loras``, ``lora_status``; the score tables' provenance columns), and manifests and
score tables are read one model at a time. Measured on a synthetic 500-model review (benchmarks/RESULTS.md 11c).
"""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ghostreview.analysis.aggregate import manifests
from ghostreview.scoring.table import VALUE_COLUMNS, read_scores

# The manifest columns (generation.manifest.MANIFEST_COLUMNS, the contract) the grids and flag lists read
REPORT_COLUMNS = ("family", "task", "item", "seed", "image", "image_hash", "prompt", "negative_prompt", "flags",
                  "infotext")
GRID_COLUMNS = REPORT_COLUMNS + ("width", "height")  # read by the stage: the sizes spare a PNG header read each
SCORE_READ = VALUE_COLUMNS  # what the plots read of the score tables (provenance columns are not shown)
SHARED_TEXT = pd.StringDtype("python", na_value=np.nan)  # pandas' "str" without pyarrow: one Python object per value
SEED_MARK = "{seed}"  # where a settings line (an infotext's last line) takes its image's seed
INFO_HEAD, INFO_SETTINGS = "infotext_head", "infotext_settings"  # compact_infotexts' columns, for "infotext"


def split_infotext(text: str) -> tuple[str, str]:
    """(prompt lines, settings line): A1111 infotexts end with one "Steps: ..." line."""
    head, _, tail = text.rpartition("\n")
    return head, tail


def joined(head: str, settings: str) -> str:
    """The infotext of prompt lines and a settings line (``split_infotext``'s inverse where it rebuilds the text)."""
    return f"{head}\n{settings}" if head else settings


def factored(text: str, seed: str) -> tuple[str | None, str]:
    """(prompt lines, settings line with the seed marked), interned; (None, text) where they would not rebuild
    ``text`` exactly (a literal mark in it, or no prompt line before a line break)."""
    head, tail = split_infotext(text)
    marked = tail.replace(f"Seed: {seed}", f"Seed: {SEED_MARK}", 1)
    if SEED_MARK in tail or joined(head, marked.replace(SEED_MARK, seed, 1)) != text:
        return None, text
    return sys.intern(head), sys.intern(marked)


def infotext_of(row: Mapping[str, object]) -> str:
    """A manifest row's infotext, whether the row holds it whole (``infotext``) or factored (``compact_infotexts``);
    "" where it has none."""
    if INFO_SETTINGS not in row:
        v = row.get("infotext")
        return v if isinstance(v, str) else ""
    head, settings = row[INFO_HEAD], row[INFO_SETTINGS]
    if not isinstance(settings, str):
        return ""
    return joined(head, settings.replace(SEED_MARK, str(row["seed"]), 1)) if isinstance(head, str) else settings


def compact_infotexts(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``infotext`` column replaced, in place, by INFO_HEAD and INFO_SETTINGS (``factored``:
    ``infotext_of`` rebuilds each text exactly); a frame without the column is returned as it is."""
    if "infotext" not in frame.columns:
        return frame
    pairs = [factored(t if isinstance(t, str) else "", str(seed)) for t, seed in zip(frame["infotext"], frame["seed"],
                                                                                      strict=True)]
    at = list(frame.columns).index("infotext")
    out = frame.drop(columns="infotext")
    out.insert(at, INFO_HEAD, pd.Series([p[0] for p in pairs], index=frame.index, dtype=SHARED_TEXT))
    out.insert(at + 1, INFO_SETTINGS, pd.Series([p[1] for p in pairs], index=frame.index, dtype=SHARED_TEXT))
    return out


def shared_texts(frame: pd.DataFrame, skip: Sequence[str] = ()) -> pd.DataFrame:
    """``frame`` with its text columns held as ``SHARED_TEXT`` and their texts interned (but in ``skip``: unique
    texts, where sharing saves nothing), so that equal texts in any table are one object; values, index and the
    other columns unchanged."""
    out = frame.copy(deep=False)
    for name in frame.columns:
        col = frame[name]
        if not (pd.api.types.is_string_dtype(col.dtype) or col.dtype == object):
            continue
        if col.dtype == object and not all(isinstance(v, str) for v in col if v == v):
            continue  # an object column of other values stays as it is
        values = list(col) if name in skip else [sys.intern(v) if isinstance(v, str) else v for v in col]
        out[name] = pd.Series(values, index=frame.index, dtype=SHARED_TEXT, name=name)
    return out


def compact_manifest(frame: pd.DataFrame) -> pd.DataFrame:
    """A manifest as the report holds it: texts shared (``shared_texts``; not the image file names, each unique)
    and infotexts factored (``compact_infotexts``)."""
    return compact_infotexts(shared_texts(frame, skip=("image",)))


def read_manifests(images_dir: Path, names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Each model's manifest, GRID_COLUMNS only, compact (``compact_manifest``), one model at a time."""
    return {n: compact_manifest(manifests(images_dir, [n], GRID_COLUMNS)[n]) for n in names}


def read_report_scores(score_dir: Path, names: Sequence[str]) -> pd.DataFrame:
    """The score rows the report's plots read (SCORE_READ), one model at a time, texts shared."""
    parts = [shared_texts(read_scores(score_dir, [n], SCORE_READ)) for n in names]
    if not parts:
        return pd.DataFrame(columns=list(SCORE_READ))
    return pd.concat(parts, ignore_index=True)
