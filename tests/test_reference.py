"""Reference sets (ghostreview.analysis.reference) and standardize's reference mode: scores that stay put."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from ghostreview.analysis.reference import (
    ReferenceError,
    check_benchmark,
    freeze,
    read_reference,
    reference_path,
    write_reference,
)
from ghostreview.analysis.standardize import NOT_IN_REFERENCE, standardize


@dataclass(frozen=True)
class Info:
    """Stand-in for ghostreview.scoring.metric.MetricInfo (only what standardize reads: MetricLike)."""

    higher_is_better: bool
    grouped_by: str


METRICS = {"aesthetic": Info(True, "prompt"), "styleloss": Info(False, "style"), "loraloss": Info(False, "lora")}
TASK = {"aesthetic": "general", "styleloss": "style", "loraloss": "lora"}
BENCH = {"name": "b", "version": "1", "digest": "d" * 16}


def rows_of(rng: np.random.Generator, model: str, family: str, shift: float) -> list[dict]:
    """Score rows of one model: 6 prompts, 3 styles, 2 LoRAs (of its family) x 3 seeds."""
    items = {"aesthetic": [f"p{i}" for i in range(6)], "styleloss": ["s0", "s1", "s2"],
             "loraloss": [f"{family}-l0", f"{family}-l1"]}
    out = []
    for metric, names in items.items():
        for item in names:
            for seed in range(3):
                out.append(dict(model=model, task=TASK[metric], item=item, seed=seed,
                                image_hash=f"{model}-{item}-{seed}", metric=metric,
                                value=float(rng.normal(shift, 1.0)), flags="", metric_version="1",
                                weights_sha256="0" * 64))
    return out


def review(models: dict[str, tuple[str, float]], seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(score rows, models table with sha256) of ``models``: name -> (family, shift); each model's values come
    from its own generator, so a model's rows do not depend on which other models are reviewed."""
    rows = []
    for i, (name, (family, shift)) in enumerate(models.items()):
        rows += rows_of(np.random.default_rng([seed, i]), name, family, shift)
    table = pd.DataFrame({"model": list(models), "family": [f for f, _ in models.values()],
                          "sha256": [f"{i:064x}" for i in range(len(models))]})
    return pd.DataFrame(rows), table


ANCHORS = {"a": ("sd15", 0.0), "b": ("sd15", 0.5), "c": ("sd15", 1.0)}


def frozen(tmp_path):
    scores, models = review(ANCHORS)
    pool = standardize(scores, models, METRICS, {}, n_boot=50)
    pool.meta["benchmark"] = BENCH
    return read_reference(write_reference(freeze(pool, models, "v1"), tmp_path))


def test_adding_a_model_leaves_every_other_score_unchanged_bit_for_bit(tmp_path):
    ref = frozen(tmp_path)
    # d joins the review, and so does e, an SDXL model: a new LoRA pool the anchors never had
    grown = {**ANCHORS, "d": ("sd15", 2.0), "e": ("sdxl", -1.0)}
    before = standardize(*review(ANCHORS), METRICS, {}, n_boot=50, reference=ref.groups)
    after = standardize(*review(grown), METRICS, {}, n_boot=50, reference=ref.groups)
    key = ["model", "metric"]
    old = before.scores.set_index(key)["score"]
    new = after.scores.set_index(key)["score"].loc[old.index]
    registered = old.index.get_level_values("metric").isin(list(METRICS) + ["loraloss_notm"])
    assert (old[registered].to_numpy() == new[registered].to_numpy()).all()  # bit for bit, not approx
    assert np.isfinite(old[registered]).all()
    # the z of every anchor image are the same doubles too
    z_old = before.images.set_index(["image_hash", "metric"])["z"]
    z_new = after.images.set_index(["image_hash", "metric"])["z"].loc[z_old.index]
    assert (z_old.to_numpy() == z_new.to_numpy()).all()
    # the leave-last-out drift (e left out) is exactly 0 on every metric
    drift = after.drift[after.drift["metric"].isin(list(METRICS))]
    assert len(drift) == 4 * len(METRICS) and (drift["shift"] == 0).all()
    # and in pool mode the same addition moves them (the test can fail)
    pool_before = standardize(*review(ANCHORS), METRICS, {}, n_boot=50).scores.set_index(key)["score"]
    pool_after = standardize(*review(grown), METRICS, {}, n_boot=50).scores.set_index(key)["score"]
    assert (pool_before[registered] != pool_after.loc[pool_before.index][registered]).any()


def test_reference_z_is_the_anchor_mean_and_population_std(tmp_path):
    ref = frozen(tmp_path)
    scores, models = review({**ANCHORS, "d": ("sd15", 2.0)})
    r = standardize(scores, models, METRICS, {}, n_boot=20, reference=ref.groups)
    anchors = scores[scores["model"].isin(list(ANCHORS)) & (scores["metric"] == "aesthetic")
                     & (scores["item"] == "p3")]["value"]
    d = r.images[(r.images["model"] == "d") & (r.images["metric"] == "aesthetic") & (r.images["item"] == "p3")]
    np.testing.assert_allclose(d["z"], (d["value"] - anchors.mean()) / anchors.std(ddof=0), rtol=1e-12)
    assert r.meta["standardization"] == "reference"


def test_a_group_the_reference_lacks_is_degenerate_and_named(tmp_path):
    ref = frozen(tmp_path)
    r = standardize(*review({**ANCHORS, "e": ("sdxl", 0.0)}), METRICS, {}, n_boot=20, reference=ref.groups)
    missing = r.degenerate[r.degenerate["reason"] == NOT_IN_REFERENCE]
    assert set(missing["item"]) == {"sdxl-l0", "sdxl-l1"} and set(missing["pool"]) == {"sdxl"}
    e_lora = r.images[(r.images["model"] == "e") & (r.images["metric"] == "loraloss")]
    assert (e_lora["status"] == "degenerate").all() and e_lora["z"].isna().all()


def test_a_model_alone_in_its_pool_is_scored_against_the_reference(tmp_path):
    # in pool mode a one-model LoRA pool is degenerate; against a reference its images have a z
    ref = frozen(tmp_path)
    r = standardize(*review({"c": ANCHORS["c"]}), METRICS, {}, n_boot=20, reference=ref.groups)
    assert r.images["z"].notna().all()


def test_round_trip_is_exact_and_marks_anchor_models(tmp_path):
    scores, models = review(ANCHORS)
    pool = standardize(scores, models, METRICS, {}, n_boot=20)
    pool.meta["benchmark"] = BENCH
    ref = freeze(pool, models, "v1")
    back = read_reference(write_reference(ref, tmp_path))
    pd.testing.assert_frame_equal(back.groups, ref.groups, check_exact=True)
    assert back.anchor_models(pd.DataFrame({"model": ["x", "y"], "sha256": [f"{1:064x}", "f" * 64]})) == ["x"]
    check_benchmark(back, BENCH, "here")
    with pytest.raises(ReferenceError, match="digest"):
        check_benchmark(back, {**BENCH, "digest": "e" * 16}, "here")


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(format="x"), "'format'"),
    (lambda d: d.update(version=9), "'version'"),
    (lambda d: d.update(name="other"), "'name'"),
    (lambda d: d["groups"][0].__setitem__(6, 0.0), r"groups\[0\]"),
    (lambda d: d["groups"][0].__setitem__(4, "3"), r"groups\[0\]"),
    (lambda d: d["groups"].append(list(d["groups"][0])), "repeats"),
    (lambda d: d.update(anchors=d["anchors"][:1]), "'anchors'"),
])
def test_a_broken_file_fails_naming_file_key_and_fix(tmp_path, edit, match):
    path = reference_path(tmp_path, "v1")
    frozen(tmp_path)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ReferenceError, match=match) as info:
        read_reference(path)
    assert str(path) in str(info.value) and "freeze-reference" in str(info.value)


def test_names_and_missing_files(tmp_path):
    for bad in ("pool", "Big", "a/b", ""):
        with pytest.raises(ReferenceError, match="slug"):
            reference_path(tmp_path, bad)
    with pytest.raises(ReferenceError, match="no such reference set"):
        read_reference(tmp_path / "nope.json")


def test_freeze_reference_and_plan_commands(tmp_path):
    from typer.testing import CliRunner

    from ghostreview.cli import app

    scores, models = review(ANCHORS)
    result = standardize(scores, models, METRICS, {}, n_boot=20, n_splits=5)
    result.meta["benchmark"] = BENCH
    result.write(tmp_path / "std")
    for name, sha in zip(models["model"], models["sha256"]):
        (tmp_path / "img" / name).mkdir(parents=True)
        (tmp_path / "img" / name / "model.json").write_text(json.dumps(
            {"family": "sd15", "checkpoint_name": f"{name}.safetensors", "sha256": sha, "autov2": sha[:10],
             "random_weights": True}))
    params = tmp_path / "params.yaml"
    params.write_text("models:\n" + "".join(f"  {m}:\n    checkpoint: {m}.safetensors\n" for m in ANCHORS))
    args = ["freeze-reference", "v1", "--params", str(params), "--standardized", str(tmp_path / "std"),
            "--images", str(tmp_path / "img"), "--out", str(tmp_path / "refs")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    ref = read_reference(tmp_path / "refs" / "v1.json")
    assert [a["model"] for a in ref.anchors] == list(ANCHORS) and len(ref.groups) == 6 + 3 + 2
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "frozen once" in again.output
    planned = CliRunner().invoke(app, ["plan", "--standardized", str(tmp_path / "std"), "--seeds", "1,4",
                                       "--seconds-per-image", "2"])
    assert planned.exit_code == 0, planned.output
    assert "aesthetic (general): variance of z" in planned.output and "gpu_hours" in planned.output
