"""Per-base pools (issue 17): models whose base draws other prompts or settings are z-scored among their own base."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ghostreview.analysis.reference import Reference, review_meta
from ghostreview.analysis.report import format_leaderboard
from ghostreview.analysis.report.display import shown_metrics
from ghostreview.analysis.report.html import leaderboard_note
from ghostreview.analysis.report.tables import reference_line, reference_of, write_tables
from ghostreview.analysis.standardize import ALL_POOL, NOT_IN_REFERENCE, group_summary, protocol_pool, standardize
from ghostreview.protocol import load_benchmark
from stages.standardize import model_protocol
from tests.test_report import METRICS as REPORT_METRICS
from tests.test_report import make_demo
from tests.test_standardize import METRICS, lora_rows, plain_z, synthetic


def models(protocols: dict[str, str], family: str = "sdxl") -> pd.DataFrame:
    return pd.DataFrame({"model": list(protocols), "family": family, "protocol": list(protocols.values())})


def test_protocol_pool_plain_bases_share_the_v1_pool_and_vpred_splits_only_with_its_own_settings():
    assert protocol_pool("sdxl", "epsilon", plain=True, v_settings=False) == ALL_POOL
    assert protocol_pool("", "", plain=True, v_settings=False) == ALL_POOL  # drawn before bases existed
    assert protocol_pool("pony", "epsilon", plain=False, v_settings=False) == "pony"
    assert protocol_pool("pony", "v_prediction", plain=False, v_settings=False) == "pony"
    assert protocol_pool("noobai", "v_prediction", plain=False, v_settings=True) == "noobai-vpred"
    assert protocol_pool("noobai", "epsilon", plain=False, v_settings=True) == "noobai"


def test_general_and_style_rows_are_zscored_within_their_protocol_only():
    scores = synthetic(np.random.default_rng(3), models=("a", "b", "c", "d"))
    scores.loc[scores["model"].isin(["c", "d"]) & (scores["metric"] == "aesthetic"), "value"] += 50.0  # pony's
    r = standardize(scores, models({"a": ALL_POOL, "b": ALL_POOL, "c": "pony", "d": "pony"}), METRICS, {},
                    n_boot=10)
    ok = r.images[r.images["status"] == "ok"]
    assert dict(ok.groupby("model")["pool"].unique().map(tuple)) == {
        "a": (ALL_POOL,), "b": (ALL_POOL,), "c": ("pony",), "d": ("pony",)}
    for (metric, item, pool), g in ok.groupby(["metric", "item", "pool"]):
        assert g["z"].tolist() == pytest.approx(plain_z(g["value"].tolist()), abs=1e-12), (metric, item, pool)
    # pony's +50 shift would make c and d the two best on aesthetic in one pool; within pools each pair centres on 0
    s = r.scores[r.scores["metric"] == "aesthetic"].set_index("model")["score"]
    assert s["a"] + s["b"] == pytest.approx(0, abs=1e-12) and s["c"] + s["d"] == pytest.approx(0, abs=1e-12)
    assert "protocol" not in r.images.columns  # the pool column names it


def test_without_a_protocol_column_the_pools_are_those_of_v1():
    scores = synthetic(np.random.default_rng(4))
    plain = pd.DataFrame({"model": ["a", "b", "c"], "family": "sd1"})
    tagged = plain.assign(protocol=ALL_POOL)
    r1 = standardize(scores, plain, METRICS, {}, n_boot=10, seed=1)
    r2 = standardize(scores, tagged, METRICS, {}, n_boot=10, seed=1)
    pd.testing.assert_frame_equal(r1.images, r2.images)
    pd.testing.assert_frame_equal(r1.scores, r2.scores)
    assert set(r1.images.loc[r1.images["status"] == "ok", "pool"]) == {ALL_POOL}


def test_lora_rows_pool_by_family_and_protocol():
    fams = {"a": "sdxl", "b": "sdxl", "c": "sdxl", "d": "sdxl"}
    scores = lora_rows(np.random.default_rng(5), fams, {"X1": "sdxl", "X2": "sdxl"})
    r = standardize(scores, models({"a": ALL_POOL, "b": ALL_POOL, "c": "illustrious", "d": "illustrious"}),
                    METRICS, {}, n_boot=10)
    ok = r.images[r.images["status"] == "ok"]
    assert set(ok.loc[ok["model"].isin(["a", "b"]), "pool"]) == {"sdxl"}
    assert set(ok.loc[ok["model"].isin(["c", "d"]), "pool"]) == {"sdxl/illustrious"}
    for _, g in ok.groupby(["item", "pool"]):
        assert len(set(g["model"])) == 2
        assert statistics.fmean(g["z"]) == pytest.approx(0, abs=1e-12)


def test_the_stage_reads_each_models_pool_from_its_model_json_and_bases_yaml(tmp_path):
    """sd15/sdxl (and a model drawn before bases) share the v1 pool; each other base has its own, NoobAI's
    v-prediction checkpoints apart from its eps ones (bases.yaml gives them other settings)."""
    bench = load_benchmark(Path(__file__).resolve().parents[1] / "data" / "benchmark" / "v1")
    cases = {"old": ("", "epsilon"), "xl": ("sdxl", "epsilon"), "one5": ("sd15", "epsilon"),
             "pony": ("pony", "epsilon"), "noob": ("noobai", "epsilon"), "noobv": ("noobai", "v_prediction"),
             "flux": ("flux1-dev", "epsilon")}
    for name, (base, prediction) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.json").write_text(f'{{"base": "{base}", "prediction": "{prediction}"}}')
    got = {name: model_protocol(tmp_path, name, bench) for name in cases}
    assert got == {"old": ALL_POOL, "xl": ALL_POOL, "one5": ALL_POOL, "pony": "pony", "noob": "noobai",
                   "noobv": "noobai-vpred", "flux": "flux1-dev"}


def test_the_leaderboard_names_each_models_pool_and_warns_that_ranks_cross_pools(tmp_path):
    result, _, _, table, _ = make_demo(tmp_path / "demo")
    names = table["model"].astype(str).tolist()
    out = tmp_path / "reports"
    write_tables(result, table, out, metrics=REPORT_METRICS)  # one pool: nothing said, old bytes
    assert "Pools:" not in (out / "leaderboard.md").read_text()
    assert "protocols" not in json.loads((out / "leaderboard.json").read_text())
    protocols = {m: ("pony" if i == 0 else ALL_POOL) for i, m in enumerate(names)}
    result = dataclasses.replace(result, meta={**result.meta, "protocols": protocols})
    write_tables(result, table, out, metrics=REPORT_METRICS)
    md = (out / "leaderboard.md").read_text()
    assert f"pony: {names[0]}" in md and f"v1 (sd15, sdxl): {', '.join(names[1:])}" in md
    assert "A rank across pools compares" in md
    assert f"| {names[0]} [pony] |" in md and f"| {names[1]} |" in md
    doc = json.loads((out / "leaderboard.json").read_text())
    assert doc["protocols"] == protocols and list(doc)[-1] == "protocols"
    text = format_leaderboard(out / "leaderboard.csv")
    assert f"{names[0]} [pony]" in text and "A rank across pools compares" in text


def test_against_a_reference_a_model_outside_the_anchors_pools_gets_no_z_and_its_groups_are_listed():
    """Reference mode keeps the pools: the anchors' table is per (metric, task, item, pool), so a pony model scored
    against v1-only anchors has no group to be z-scored in (rather than being measured against other prompts)."""
    scores = synthetic(np.random.default_rng(6), models=("a", "b", "c"))
    anchors = scores[scores["model"].isin(["a", "b"])]
    frozen = standardize(anchors, models({"a": ALL_POOL, "b": ALL_POOL}), METRICS, {}, n_boot=10)
    r = standardize(scores, models({"a": ALL_POOL, "b": ALL_POOL, "c": "pony"}), METRICS, {}, n_boot=10,
                    reference=group_summary(frozen.images))
    c = r.images[r.images["model"] == "c"]
    assert len(c) and (c["status"] == "degenerate").all() and (c["pool"] == "pony").all()
    assert set(r.degenerate.loc[r.degenerate["pool"] == "pony", "reason"]) == {NOT_IN_REFERENCE}
    a = r.images[(r.images["model"] == "a") & (r.images["status"] == "ok")]
    assert len(a) and np.isfinite(a["z"]).all()


def test_the_html_leaderboard_note_names_the_pools(tmp_path):
    result, *_ = make_demo(tmp_path / "demo")
    meta = {**result.meta, "protocols": {"x": "pony", "y": ALL_POOL}}
    shown = shown_metrics(result, REPORT_METRICS)
    assert "A rank across pools compares" in leaderboard_note(meta, shown)
    assert "Pools:" not in leaderboard_note(result.meta, shown)


def test_a_review_against_a_reference_names_the_models_outside_the_anchors_pools():
    scores = synthetic(np.random.default_rng(7), models=("a", "b", "c"))
    anchors = models({"a": ALL_POOL, "b": ALL_POOL}).assign(sha256=["a" * 64, "b" * 64])
    frozen = standardize(scores[scores["model"].isin(["a", "b"])], anchors, METRICS, {}, n_boot=10)
    ref = Reference("v1", {}, (), group_summary(frozen.images))
    reviewed = models({"a": ALL_POOL, "b": ALL_POOL, "c": "pony"}).assign(sha256=["a" * 64, "b" * 64, "c" * 64])
    assert review_meta(ref, reviewed)["outside_pools"] == ["c"]
    assert "outside_pools" not in review_meta(ref, anchors)  # none outside: the meta keeps its keys
    line = reference_line(reference_of({"reference": review_meta(ref, reviewed)}))
    assert "Outside the anchors' pools" in line and line.endswith(": c.")
