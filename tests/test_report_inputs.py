"""Tests of ghostreview.analysis.report.inputs: the report stage's compact reads give the plain reads' values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from ghostreview.analysis.aggregate import manifests
from ghostreview.analysis.report.inputs import (
    GRID_COLUMNS,
    HASH_TEXT,
    SCORE_READ,
    read_manifests,
    read_report_scores,
    shared_hashes,
)
from ghostreview.generation.manifest import MANIFEST_COLUMNS
from ghostreview.scoring.table import SCORE_COLUMNS, read_scores
from tests.test_report import make_demo


def write_review(tmp_path):
    """make_demo's manifests and score tables written where the stages write them."""
    _, scores, tables, _, images_root = make_demo(tmp_path)
    score_dir = tmp_path / "scores"
    for model, m in tables.items():
        m.loc[:, list(MANIFEST_COLUMNS)].to_csv(images_root / model / "manifest.csv", index=False)
        (score_dir / model).mkdir(parents=True)
        scores[scores["model"] == model].loc[:, list(SCORE_COLUMNS)].to_csv(score_dir / model / "all.csv",
                                                                            index=False)
    return list(tables), images_root, score_dir


def hash_text(frame: pd.DataFrame) -> pd.DataFrame:
    """A plain read with its hashes in the report's storage (a no-op where pandas' default is already Python's)."""
    return frame.astype({"image_hash": HASH_TEXT})


def test_compact_reads_equal_the_plain_reads_and_share_each_hash(tmp_path):
    names, images_root, score_dir = write_review(tmp_path)
    grids = read_manifests(images_root, names)
    plain = manifests(images_root, names)
    for n in names:
        assert list(grids[n].columns) == [c for c in MANIFEST_COLUMNS if c in GRID_COLUMNS]
        pdt.assert_frame_equal(grids[n], hash_text(plain[n].loc[:, list(grids[n].columns)]))
    scores = read_report_scores(score_dir, names)
    pdt.assert_frame_equal(scores, hash_text(read_scores(score_dir, names).loc[:, list(SCORE_READ)]))
    by_hash = {h: h for m in grids.values() for h in m["image_hash"]}
    assert all(h is by_hash[h] for h in scores["image_hash"])  # one object per hash across the tables
    separate = read_scores(score_dir, names)
    assert not any(h is by_hash.get(h) for h in separate["image_hash"])  # the plain read holds its own copies


@pytest.mark.parametrize("storage", ["python", "pyarrow"])
def test_shared_hashes_keeps_values_and_index_and_shares_under_either_storage(storage):
    if storage == "pyarrow":
        pytest.importorskip("pyarrow")  # pandas 3 reads texts into Arrow where pyarrow is installed
    frame = pd.DataFrame({"image_hash": ["a" * 64, "b" * 64, ""], "value": [1.0, 2.0, 3.0]}, index=[5, 7, 9])
    frame["image_hash"] = frame["image_hash"].astype(pd.StringDtype(storage, na_value=np.nan))
    out, again = shared_hashes(frame), shared_hashes(frame.copy(deep=True))
    pdt.assert_frame_equal(out, hash_text(frame))
    assert all(a is b for a, b in zip(out["image_hash"], again["image_hash"], strict=True))
    assert shared_hashes(frame[["value"]]) is not None and "image_hash" not in shared_hashes(frame[["value"]])
