"""Tests of ghostreview.analysis.report.metrics: the metrics.json that `dvc exp show/diff` compares."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass

import pandas as pd
import pytest

from ghostreview.analysis.report.metrics import ALL, metrics_json, write_metrics_json
from ghostreview.analysis.standardize import Standardized, standardize


@dataclass(frozen=True)
class Info:
    """What standardize reads of a MetricInfo (MetricLike); the registry itself would import torch."""

    higher_is_better: bool
    grouped_by: str


METRICS = {"aesthetic": Info(True, "prompt"), "clipscore": Info(True, "prompt"), "styleloss": Info(False, "style"),
           "loraloss": Info(False, "lora")}
TASK = {"aesthetic": "general", "clipscore": "general", "styleloss": "style", "loraloss": "lora"}
MODELS = pd.DataFrame({"model": ["m-b", "m-a", "m-x"], "family": ["sd1", "sd1", "sdxl"]})  # params order, not sorted
BASE = {"m-a": 5.0, "m-b": 6.2, "m-x": 5.6}


def row(model, metric, item, seed, value, flags=""):
    return dict(model=model, task=TASK[metric], item=item, seed=seed, image_hash=f"{model}-{item}-{seed}",
                metric=metric, value=value, flags=flags, metric_version="1", weights_sha256="0" * 64)


def score_rows(gain: float = 0.0) -> pd.DataFrame:
    """Three models on 3 prompts, 2 styles, 2 LoRAs, 2 seeds; ``gain`` improves every image of every model: aesthetic
    and CLIPScore up by ``gain``, StyleLoss and LoRALoss scaled down by 1 / (1 + gain)."""
    rows = []
    for k, (m, base) in enumerate(BASE.items()):
        for i in range(3):
            for s in range(2):
                wobble = 0.3 * ((i + k) % 3) + 0.1 * s
                rows.append(row(m, "aesthetic", f"p{i}", s, base + wobble + gain))
                rows.append(row(m, "clipscore", f"p{i}", s, 20 + 2 * k - wobble + gain))
        for i in range(2):
            for s in range(2):
                rows.append(row(m, "styleloss", f"st{i}", s, (1 + k + 0.5 * i + 0.2 * s) / (1 + gain)))
                rows.append(row(m, "loraloss", f"L{i}", s, (3 - k + 0.4 * i + 0.1 * s) / (1 + gain)))
    out = pd.DataFrame(rows)
    flagged = (out["model"] == "m-a") & (out["item"] == "p2") & (out["seed"] == 1)
    out.loc[flagged, "flags"] = "black"  # both scores of that image: excluded from every raw figure
    trunc = (out["model"] == "m-b") & (out["item"] == "p0") & (out["seed"] == 0)
    out.loc[trunc, "flags"] = "prompt_truncated"  # a flag that excludes nothing, still a flagged image
    return out


def result_for(scores: pd.DataFrame) -> Standardized:
    return standardize(scores, MODELS, METRICS, {}, n_boot=50, seed=0, good_threshold=6.0)


def usable(scores: pd.DataFrame, metric: str, model: str | None = None) -> list[float]:
    """Plain selection of the raw values a figure averages: the metric, its task, no excluding flag, finite."""
    rows = scores[(scores["metric"] == metric) & (scores["task"] == TASK[metric]) & (scores["flags"] != "black")]
    if model is not None:
        rows = rows[rows["model"] == model]
    return [v for v in rows["value"] if math.isfinite(v)]


def test_layout_is_small_flat_per_group_and_in_params_order():
    doc = metrics_json(result_for(score_rows()), MODELS["model"])
    assert list(doc) == [ALL, "m-b", "m-a", "m-x"]
    assert list(doc[ALL]) == ["aesthetic_mean", "aesthetic_std", "aesthetic_good_rate", "clipscore_mean",
                              "styleloss_mean", "loraloss_mean", "flagged_images"]
    for model in ("m-b", "m-a", "m-x"):
        assert list(doc[model]) == ["combined", "rank", "aesthetic_mean", "clipscore_mean", "styleloss_mean",
                                    "loraloss_mean"]
    columns = [f"{g}.{k}" for g, d in doc.items() for k in d]
    assert len(columns) == 7 + 3 * 6  # what `dvc exp show` gets: a column per key, nothing nested deeper
    assert all(v is None or type(v) in (int, float) for d in doc.values() for v in d.values())


def test_absolute_figures_are_the_raw_values_overall_and_per_model():
    scores = score_rows()
    r = result_for(scores)
    doc = metrics_json(r, MODELS["model"])
    everyone = usable(scores, "aesthetic")
    assert len(everyone) == 3 * 3 * 2 - 1
    assert doc[ALL]["aesthetic_mean"] == pytest.approx(statistics.fmean(everyone), abs=1e-12)
    assert doc[ALL]["aesthetic_std"] == pytest.approx(statistics.pstdev(everyone), abs=1e-12)
    assert doc[ALL]["aesthetic_good_rate"] == pytest.approx(sum(v >= 6.0 for v in everyone) / len(everyone))
    for metric in ("clipscore", "styleloss", "loraloss"):
        assert doc[ALL][f"{metric}_mean"] == pytest.approx(statistics.fmean(usable(scores, metric)), abs=1e-12)
    assert doc[ALL]["flagged_images"] == 2  # the black one and the truncated one, each counted once
    for model in BASE:
        for metric in ("aesthetic", "clipscore", "styleloss"):
            expected = statistics.fmean(usable(scores, metric, model))
            assert doc[model][f"{metric}_mean"] == pytest.approx(expected, abs=1e-12), (model, metric)
    combined = r.scores[r.scores["metric"] == "combined"].set_index("model")
    for model in BASE:
        assert doc[model]["combined"] == pytest.approx(combined.loc[model, "score"], abs=1e-15)
        assert doc[model]["rank"] == combined.loc[model, "rank"] and isinstance(doc[model]["rank"], int)


def test_every_model_improving_moves_the_absolute_figures_while_the_z_scores_stay_put():
    """The issue's finding: under every sampler the combined scores summed to about the same. An experiment where
    every image gets better must show it in metrics.json."""
    before, after = (metrics_json(result_for(score_rows(gain)), MODELS["model"]) for gain in (0.0, 0.5))
    for model in BASE:
        assert after[model]["combined"] == pytest.approx(before[model]["combined"], abs=1e-9)  # z: relative
        assert after[model]["rank"] == before[model]["rank"]
        assert after[model]["aesthetic_mean"] == pytest.approx(before[model]["aesthetic_mean"] + 0.5)
        assert after[model]["clipscore_mean"] == pytest.approx(before[model]["clipscore_mean"] + 0.5)
        assert after[model]["styleloss_mean"] == pytest.approx(before[model]["styleloss_mean"] / 1.5)
    assert after[ALL]["aesthetic_mean"] == pytest.approx(before[ALL]["aesthetic_mean"] + 0.5)
    assert after[ALL]["aesthetic_good_rate"] > before[ALL]["aesthetic_good_rate"]
    assert after[ALL]["styleloss_mean"] < before[ALL]["styleloss_mean"]  # a loss: lower is the better direction
    assert after[ALL]["aesthetic_std"] == pytest.approx(before[ALL]["aesthetic_std"])


def test_missing_values_are_null_and_the_file_is_strict_json(tmp_path):
    scores = score_rows()
    scores.loc[(scores["model"] == "m-x") & (scores["metric"] == "loraloss"), "flags"] = "lora_incompatible"
    r = result_for(scores)
    r.write(tmp_path / "std")  # what the report stage reads: the CSV round trip of standardize's output
    path = write_metrics_json(Standardized.read(tmp_path / "std"), MODELS["model"], tmp_path / "out" / "metrics.json")
    text = path.read_text()
    assert "NaN" not in text and text.endswith("}\n")
    doc = json.loads(text)
    assert doc["m-x"]["loraloss_mean"] is None and doc["m-a"]["loraloss_mean"] is not None
    assert doc == json.loads(json.dumps(metrics_json(r, MODELS["model"])))  # the round trip changes nothing
    assert doc[ALL]["flagged_images"] == 2 + 4  # and m-x's 4 LoRA images (2 LoRAs x 2 seeds), now flagged


def test_no_combined_rank_is_null_not_a_number():
    scores = score_rows()
    drop = (((scores["model"] == "m-a") & (scores["task"] == "general"))
            | ((scores["model"] == "m-b") & (scores["task"] == "style")))
    r = standardize(scores[~drop], MODELS, METRICS, {}, n_boot=20)  # m-x has no LoRA score: no metric is shared
    assert r.meta["combined_over"] == []
    doc = metrics_json(r, MODELS["model"])
    assert all(doc[m]["combined"] is None and doc[m]["rank"] is None for m in BASE)
    assert doc["m-a"]["aesthetic_mean"] is None and doc["m-a"]["styleloss_mean"] is not None


def test_bad_model_lists_fail_naming_the_problem():
    r = result_for(score_rows())
    with pytest.raises(ValueError, match="ghost.*rerun dvc repro standardize"):
        metrics_json(r, ["m-a", "ghost"])
    with pytest.raises(ValueError, match="'_all'.*rename"):
        metrics_json(r, ["m-a", ALL])
