"""Tests of ghostreview.analysis.report.inputs: the report stage's compact reads give the plain reads' values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from ghostreview.analysis.aggregate import manifests
from ghostreview.analysis.report import write_report
from ghostreview.analysis.report.inputs import (
    GRID_COLUMNS,
    INFO_HEAD,
    INFO_SETTINGS,
    SCORE_READ,
    SHARED_TEXT,
    compact_infotexts,
    factored,
    infotext_of,
    read_manifests,
    read_report_scores,
    shared_texts,
)
from ghostreview.generation.manifest import MANIFEST_COLUMNS
from ghostreview.scoring.table import SCORE_COLUMNS, read_scores
from tests.test_report import METRICS, make_demo


def write_review(tmp_path, demo=None):
    """make_demo's manifests and score tables written where the stages write them."""
    _, scores, tables, _, images_root = demo or make_demo(tmp_path)
    score_dir = tmp_path / "scores"
    for model, m in tables.items():
        m.loc[:, list(MANIFEST_COLUMNS)].to_csv(images_root / model / "manifest.csv", index=False)
        (score_dir / model).mkdir(parents=True)
        scores[scores["model"] == model].loc[:, list(SCORE_COLUMNS)].to_csv(score_dir / model / "all.csv",
                                                                            index=False)
    return list(tables), images_root, score_dir


def hash_text(frame: pd.DataFrame) -> pd.DataFrame:
    """A plain read with its texts in the report's storage (a no-op where pandas' default is already Python's)."""
    return frame.astype({c: SHARED_TEXT for c in frame.columns if pd.api.types.is_string_dtype(frame[c].dtype)})


def test_compact_reads_equal_the_plain_reads_and_share_each_hash(tmp_path):
    names, images_root, score_dir = write_review(tmp_path)
    grids = read_manifests(images_root, names)
    plain = manifests(images_root, names)
    for n in names:
        factored_columns = [c for c in MANIFEST_COLUMNS if c in GRID_COLUMNS and c != "infotext"]
        assert [c for c in grids[n].columns if c not in (INFO_HEAD, INFO_SETTINGS)] == factored_columns
        pdt.assert_frame_equal(grids[n].loc[:, factored_columns], hash_text(plain[n].loc[:, factored_columns]))
        rebuilt = [infotext_of(r) for r in grids[n].to_dict(orient="records")]
        assert rebuilt == plain[n]["infotext"].tolist() and any(rebuilt)  # every infotext, exactly
        assert grids[n][INFO_HEAD].notna().all()  # the demo's infotexts all factor (none kept whole)
        heads = grids[n].groupby("item")[INFO_HEAD].nunique()
        assert (heads == 1).all()  # one prompt text per item, shared by its seeds
        assert grids[n][INFO_SETTINGS].nunique() < len(grids[n])  # settings lines shared across seeds
    scores = read_report_scores(score_dir, names)
    pdt.assert_frame_equal(scores, hash_text(read_scores(score_dir, names).loc[:, list(SCORE_READ)]))
    by_hash = {h: h for m in grids.values() for h in m["image_hash"]}
    assert all(h is by_hash[h] for h in scores["image_hash"])  # one object per hash across the tables
    separate = read_scores(score_dir, names)
    assert not any(h is by_hash.get(h) for h in separate["image_hash"])  # the plain read holds its own copies
    for frame, unique in [*((g, {"image"}) for g in grids.values()), (scores, set())]:
        for c in frame.columns:
            if pd.api.types.is_string_dtype(frame[c].dtype):  # equal texts are one object, but the file names
                distinct = {id(v) for v in frame[c]}
                assert len(distinct) == (frame[c].nunique() if c not in unique else len(frame)), c
    models = {v for g in grids.values() for v in g["family"]} | set(scores["model"])
    assert len({id(v) for g in grids.values() for v in g["task"]} | {id(v) for v in scores["task"]}) == \
        scores["task"].nunique() and models  # one object per task across manifests and scores


@pytest.mark.parametrize("storage", ["python", "pyarrow"])
def test_shared_texts_keeps_values_and_index_and_shares_under_either_storage(storage):
    if storage == "pyarrow":
        pytest.importorskip("pyarrow")  # pandas 3 reads texts into Arrow where pyarrow is installed
    frame = pd.DataFrame({"image_hash": ["a" * 64, "b" * 64, ""], "value": [1.0, 2.0, 3.0]}, index=[5, 7, 9])
    frame["image_hash"] = frame["image_hash"].astype(pd.StringDtype(storage, na_value=np.nan))
    out, again = shared_texts(frame), shared_texts(frame.copy(deep=True))
    pdt.assert_frame_equal(out, hash_text(frame))
    assert all(a is b for a, b in zip(out["image_hash"], again["image_hash"], strict=True))
    assert shared_texts(frame[["value"]]) is not None and "image_hash" not in shared_texts(frame[["value"]])
    if storage == "python":  # equal texts made at run time are distinct objects until shared (but in skip)
        made = pd.DataFrame({"t": ["".join(["ab", "c"]) for _ in range(3)]}, dtype=SHARED_TEXT)
        assert len({id(v) for v in made["t"]}) == 3 and len({id(v) for v in shared_texts(made)["t"]}) == 1
        assert len({id(v) for v in shared_texts(made, skip=("t",))["t"]}) == 3
    mixed = pd.DataFrame({"o": pd.Series([1, "a", None], dtype=object)})
    pdt.assert_frame_equal(shared_texts(mixed), mixed)  # an object column of other values stays as it is


@pytest.mark.parametrize("text,seed", [
    ("a cat\nNegative prompt: dog\nSteps: 20, Seed: 7, Size: 64x64", "7"),
    ("a cat\nSteps: 20, Seed: 70, Seed: 7", "7"),  # the first "Seed: 7" is marked (inside "Seed: 70"): still exact
    ("Steps: 20, Seed: 7", "7"),  # no prompt line
    ("\nSteps: 20, Seed: 7", "7"),  # an empty prompt line: kept whole (the join would drop it)
    ("a {seed} cat\nSteps: 20, Seed: {seed}, Seed: 7", "7"),  # a literal mark: kept whole
    ("a cat\nSteps: 20", "7"),  # no seed in it
    ("", "7"),
])
def test_factored_infotexts_rebuild_exactly(text, seed):
    head, settings = factored(text, seed)
    assert infotext_of({INFO_HEAD: head, INFO_SETTINGS: settings, "seed": seed}) == text
    assert infotext_of({"infotext": text, "seed": seed}) == text  # a row holding it whole


def test_compact_infotexts_shares_the_prompt_and_settings_texts():
    texts = [f"a cat\nSteps: 20, Seed: {s}, Model: m" for s in (1, 2, 3)]
    frame = pd.DataFrame({"seed": ["1", "2", "3"], "infotext": texts, "flags": ["", "", ""]})
    out = compact_infotexts(frame)
    assert list(out.columns) == ["seed", INFO_HEAD, INFO_SETTINGS, "flags"]
    assert [infotext_of(r) for r in out.to_dict(orient="records")] == texts
    assert len({id(v) for v in out[INFO_HEAD]}) == 1 and len({id(v) for v in out[INFO_SETTINGS]}) == 1
    assert compact_infotexts(frame[["seed"]]) is not None and list(compact_infotexts(frame[["seed"]])) == ["seed"]


def test_a_report_from_the_compact_reads_equals_one_from_the_plain_reads_byte_for_byte(tmp_path):
    demo = make_demo(tmp_path)
    result, _, _, models, images_root = demo
    names, _, score_dir = write_review(tmp_path, demo)
    plain, compact = tmp_path / "plain", tmp_path / "compact"
    write_report(result, read_scores(score_dir, names), manifests(images_root, names), models, images_root, plain,
                 metrics=METRICS)
    write_report(result, read_report_scores(score_dir, names), read_manifests(images_root, names), models,
                 images_root, compact, metrics=METRICS)
    pages = sorted(p.relative_to(plain) for p in plain.rglob("*.html"))
    assert len(pages) > 1 and pages == sorted(p.relative_to(compact) for p in compact.rglob("*.html"))
    assert all((plain / p).read_bytes() == (compact / p).read_bytes() for p in pages)
