"""CLIPScore against a plain cosine loop, and the metric registry (a registered judge a review does not compute changes
nothing downstream)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ghostreview.scoring import hpsv21, pickscore
from ghostreview.scoring.clipscore import INFO, clip_scores
from ghostreview.scoring.metric import MetricInfo
from ghostreview.scoring.registry import REGISTRY, get_metric


def plain_clipscore(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    cos = dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
    return 100.0 * max(cos, 0.0)


def test_matches_plain_cosine():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(6, 768)), rng.normal(size=(6, 768))
    txt[0] = img[0] * 3.0  # cos = 1
    txt[1] = -img[1]  # cos = -1 -> clamped to 0
    txt[2] = 0.7 * img[2] + rng.normal(size=768) * 0.1  # strongly positive
    got = clip_scores(img.astype(np.float32), txt.astype(np.float32))
    want = [plain_clipscore(list(a), list(b)) for a, b in zip(img, txt)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert got[0] == pytest.approx(100.0, abs=1e-4) and got[1] == 0.0 and got[2] > 80
    assert got.dtype == np.float32 and got.shape == (6,)


def test_clamp_is_per_image():
    img = np.array([[1.0, 0.0], [1.0, 0.0]])
    txt = np.array([[1.0, 0.0], [-1.0, 0.1]])
    got = clip_scores(img, txt)
    assert got[0] == pytest.approx(100.0) and got[1] == 0.0  # a mean-then-clamp would give ~0.25 for both


def test_shape_mismatch_and_zero_rows():
    with pytest.raises(ValueError, match="pair row by row"):
        clip_scores(np.ones((2, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="zero norm"):
        clip_scores(np.ones((2, 4)), np.zeros((2, 4)))


def test_registry_directions_and_groups():
    assert list(REGISTRY) == ["aesthetic", "clipscore", "styleloss", "loraloss", "hpsv21", "pickscore", "diversity"]
    assert REGISTRY["clipscore"] is INFO
    assert REGISTRY["hpsv21"] is hpsv21.INFO and REGISTRY["pickscore"] is pickscore.INFO
    assert {n for n, i in REGISTRY.items() if i.higher_is_better} == {"aesthetic", "clipscore", "hpsv21", "pickscore",
                                                                      "diversity"}
    assert [i.grouped_by for i in REGISTRY.values()] == ["prompt", "prompt", "style", "lora", "prompt", "prompt",
                                                         "prompt"]
    assert all(isinstance(i, MetricInfo) and i.name == n and i.version for n, i in REGISTRY.items())


def test_get_metric_did_you_mean():
    assert get_metric("styleloss").higher_is_better is False
    with pytest.raises(ValueError, match=r"Did you mean 'clipscore'\?.*Available"):
        get_metric("clip_score")
    with pytest.raises(ValueError, match="Available"):
        get_metric("zzz")


def test_metricinfo_rejects_unknown_grouping():
    with pytest.raises(ValueError, match="grouped_by"):
        MetricInfo("x", "1", True, "u", "model", "d", label="X", axis_label="x")


def test_registry_declares_the_report_labels():
    """The labels the report's columns, buttons and plots show, one per metric, declared in the metric modules."""
    assert [(i.label, i.better) for i in REGISTRY.values()] == [
        ("Aesthetic", "higher"), ("CLIPScore", "higher"), ("StyleLoss", "lower"), ("LoRALoss", "lower"),
        ("HPSv2.1", "higher"), ("PickScore", "higher"), ("Diversity", "higher")]
    assert REGISTRY["aesthetic"].axis_label == "LAION aesthetic"
    with pytest.raises(ValueError, match="label"):
        MetricInfo("x", "1", True, "u", "prompt", "d", label=" ", axis_label="x")


ARTICLE = ("aesthetic", "clipscore", "styleloss", "loraloss")


def test_a_registered_judge_without_score_rows_changes_nothing_downstream(tmp_path):
    """A review that computes only the article's four metrics (scoring.judges' default) has no HPSv2.1 or PickScore
    rows: standardized with the whole registry or with the four alone, every table, the meta, the undrawn rows, the
    leaderboard files, the report page and the plots' data are the same, and no judge's label shows anywhere."""
    import pandas as pd
    from test_report import make_demo

    from ghostreview.analysis.aggregate import undrawn_rows
    from ghostreview.analysis.report.display import shown_metrics
    from ghostreview.analysis.report.html import write_html
    from ghostreview.analysis.report.plots import plot_data
    from ghostreview.analysis.report.tables import write_tables
    from ghostreview.analysis.standardize import TABLES, standardize

    article = {n: REGISTRY[n] for n in ARTICLE}
    full, scores, manifests, models, images_root = make_demo(tmp_path / "demo", metrics=REGISTRY)
    assert not scores["metric"].isin(["hpsv21", "pickscore"]).any()
    four = standardize(scores, models, article, {"L1": ["alpha"]}, n_boot=50, seed=0, good_threshold=6.0)
    for table in TABLES:
        pd.testing.assert_frame_equal(getattr(full, table), getattr(four, table))
    assert full.meta == four.meta and full.meta["combined_over"] == ["aesthetic", "clipscore", "styleloss"]
    # only LoRA jobs go undrawn (plan.image_jobs: a job's status comes from its LoRAs), so a prompt-grouped judge
    # never gets undrawn rows; with a general image undrawn it would, for every registered prompt metric
    undrawn = {m: t.assign(image=t["image"].where(t["task"] != "lora", "")) for m, t in manifests.items()}
    assert sum(len(t[t["image"] == ""]) for t in undrawn.values()) == 6
    pd.testing.assert_frame_equal(undrawn_rows(undrawn, REGISTRY), undrawn_rows(undrawn, article))
    files = {}
    for name, result, metrics in (("full", full, REGISTRY), ("four", four, article)):
        out = tmp_path / name
        tables = write_tables(result, models, out, metrics=metrics)
        page = write_html(result, scores, manifests, models, images_root, out, metrics=metrics, plot_pngs={})
        files[name] = [p.read_bytes() for p in (*tables.values(), page)]
    assert files["full"] == files["four"]
    shown = {n: shown_metrics(r, m) for n, r, m in (("full", full, REGISTRY), ("four", four, article))}
    assert shown["full"] == shown["four"]
    tables = {n: plot_data(r, scores, shown[n]) for n, r in (("full", full), ("four", four))}
    assert tables["full"].keys() == tables["four"].keys()  # the plots' data: the same tables, the same rows
    for stem, table in tables["full"].items():
        pd.testing.assert_frame_equal(table, tables["four"][stem])
    assert not [t for t in files["full"] if b"HPSv2.1" in t or b"PickScore" in t]
