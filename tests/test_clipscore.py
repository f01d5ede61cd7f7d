"""CLIPScore against a plain cosine loop, and the metric registry."""

from __future__ import annotations

import math

import numpy as np
import pytest

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
    assert set(REGISTRY) == {"aesthetic", "clipscore", "styleloss", "loraloss"}
    assert REGISTRY["clipscore"] is INFO
    assert {n for n, i in REGISTRY.items() if i.higher_is_better} == {"aesthetic", "clipscore"}
    assert [REGISTRY[n].grouped_by for n in ("aesthetic", "clipscore", "styleloss", "loraloss")] == [
        "prompt", "prompt", "style", "lora"]
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
        ("Aesthetic", "higher"), ("CLIPScore", "higher"), ("StyleLoss", "lower"), ("LoRALoss", "lower")]
    assert REGISTRY["aesthetic"].axis_label == "LAION aesthetic"
    with pytest.raises(ValueError, match="label"):
        MetricInfo("x", "1", True, "u", "prompt", "d", label=" ", axis_label="x")
