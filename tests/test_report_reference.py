"""The leaderboard names what its z-scores are relative to (standardize.reference) and marks anchor models."""

from __future__ import annotations

import dataclasses
import json

from ghostreview.analysis.report import format_leaderboard
from ghostreview.analysis.report.tables import ANCHOR_MARK, write_tables
from tests.test_report import METRICS, make_demo


def leaderboard(tmp_path, reference=None):
    result, _, _, models, _ = make_demo(tmp_path / "demo")
    if reference is not None:
        result = dataclasses.replace(result, meta={**result.meta, "reference": reference})
    out = tmp_path / "reports"
    write_tables(result, models, out, metrics=METRICS)
    return out, models["model"].astype(str).tolist()


def test_a_reference_set_is_named_and_its_anchors_marked_in_every_leaderboard_file(tmp_path):
    out, names = leaderboard(tmp_path)
    anchor, other = names[0], names[1]
    ref = {"name": "v1-anchors", "anchors": [{"model": anchor, "family": "sd15", "sha256": "ab" * 32},
                                              {"model": "not-reviewed", "family": "sd15", "sha256": "cd" * 32}],
           "anchors_reviewed": [anchor]}
    out, _ = leaderboard(tmp_path / "ref", ref)
    md = (out / "leaderboard.md").read_text()
    assert "reference set v1-anchors (anchors: " + f"{anchor}, not-reviewed)" in md
    assert f"| {anchor} {ANCHOR_MARK} |" in md and f"| {other} |" in md
    assert "against the anchors of reference set v1-anchors" in md
    doc = json.loads((out / "leaderboard.json").read_text())
    assert doc["reference"] == {"name": "v1-anchors", "anchors": [anchor, "not-reviewed"], "anchors_reviewed": [anchor]}
    assert list(doc)[-1] == "reference"  # after models: the older keys keep their bytes
    text = format_leaderboard(out / "leaderboard.csv")
    assert f"{anchor} {ANCHOR_MARK}" in text and "reference set v1-anchors" in text
    assert f"{other} {ANCHOR_MARK}" not in text


def test_the_pool_is_named_and_nothing_is_marked(tmp_path):
    out, names = leaderboard(tmp_path, {"name": "pool", "anchors": [], "anchors_reviewed": []})
    md, text = (out / "leaderboard.md").read_text(), format_leaderboard(out / "leaderboard.csv")
    assert "Standardization: pool" in md and "Standardization: pool" in text and ANCHOR_MARK not in md + text
    assert json.loads((out / "leaderboard.json").read_text())["reference"]["name"] == "pool"
    out, _ = leaderboard(tmp_path / "old")  # standardize output without a reference record: the pool
    assert "Standardization: pool" in (out / "leaderboard.md").read_text()
