"""The report's inputs read compactly: only the columns the report shows, and one text object per image hash.

At 500 models the report reads 784,000 manifest rows, 1.3 million score rows and as many standardized image rows.
pandas' CSV reader already makes equal texts of one file one object (a prompt, an item, a model name cost a pointer
per row), but each table read holds its own copy of every image hash (113 bytes as a Python str): three copies of
784,000 hashes. ``shared_hashes`` makes the ``image_hash`` texts of every table the report holds the same objects
(``sys.intern``), held in pandas' Python string storage (``HASH_TEXT``) whatever pandas' default is: with pyarrow
installed, pandas 3 reads texts into Arrow buffers, whose values are new objects on every access and cannot be
shared. The columns a report never shows are not read (manifest ``model``, ``loras``, ``lora_status``; the
score tables' provenance columns), and manifests and score tables are read one model at a time.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
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
HASH_TEXT = pd.StringDtype("python", na_value=np.nan)  # pandas' "str" without pyarrow: one Python object per value


def shared_hashes(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``image_hash`` texts interned (equal hashes, in any table, are one object) and held as
    ``HASH_TEXT``; values and index unchanged. A frame without the column is returned as it is."""
    if "image_hash" not in frame.columns:
        return frame
    col = frame["image_hash"]
    out = frame.copy(deep=False)
    out["image_hash"] = pd.Series([sys.intern(v) if isinstance(v, str) else v for v in col], index=frame.index,
                                  dtype=HASH_TEXT, name="image_hash")
    return out


def read_manifests(images_dir: Path, names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Each model's manifest, GRID_COLUMNS only, image hashes interned (``shared_hashes``), one model at a time."""
    return {n: shared_hashes(manifests(images_dir, [n], GRID_COLUMNS)[n]) for n in names}


def read_report_scores(score_dir: Path, names: Sequence[str]) -> pd.DataFrame:
    """The score rows the report's plots read (SCORE_READ), one model at a time, image hashes interned."""
    parts = [shared_hashes(read_scores(score_dir, [n], SCORE_READ)) for n in names]
    if not parts:
        return pd.DataFrame(columns=list(SCORE_READ))
    return pd.concat(parts, ignore_index=True)
