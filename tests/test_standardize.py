"""Tests of ghostreview.analysis.standardize against hand-computed values and plain re-implementations."""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

import ghostreview.analysis.standardize as standardize_module
from ghostreview.analysis.standardize import (
    EXCLUDING_FLAGS,
    Standardized,
    beats_share,
    column_percentiles,
    excluded_mask,
    parse_flags,
    rank_desc,
    standardize,
    unit_weights,
)


@dataclass(frozen=True)
class Info:
    """Stand-in for ghostreview.scoring.metric.MetricInfo (only what standardize reads: MetricLike)."""

    name: str
    higher_is_better: bool
    grouped_by: str


METRICS = {
    "aesthetic": Info("aesthetic", True, "prompt"),
    "clipscore": Info("clipscore", True, "prompt"),
    "styleloss": Info("styleloss", False, "style"),
    "loraloss": Info("loraloss", False, "lora"),
}
TASK = {"aesthetic": "general", "clipscore": "general", "styleloss": "style", "loraloss": "lora"}


def row(model, metric, item, seed, value, flags="", task=None):
    return dict(model=model, task=task or TASK.get(metric.split(".")[0], "style"), item=item, seed=seed,
                image_hash=f"{model}-{item}-{seed}", metric=metric, value=value, flags=flags,
                metric_version="1", weights_sha256="0" * 64)


def models_table(**families):
    return pd.DataFrame({"model": list(families), "family": list(families.values())})


def score(result, model, metric, col="score"):
    s = result.scores
    return s.loc[(s["model"] == model) & (s["metric"] == metric), col].item()


def plain_z(values):
    """Independent z: population std from the statistics module."""
    mu, sd = statistics.fmean(values), statistics.pstdev(values)
    return [(v - mu) / sd for v in values]


def test_zscores_by_hand_population_std():
    scores = pd.DataFrame([row("a", "aesthetic", "p1", 0, 1.0), row("a", "aesthetic", "p1", 1, 3.0),
                           row("b", "aesthetic", "p1", 0, 5.0), row("b", "aesthetic", "p1", 1, 7.0)])
    r = standardize(scores, models_table(a="sd1", b="sd1"), {"aesthetic": METRICS["aesthetic"]}, {}, n_boot=20)
    # mean 4, population std sqrt(5) (the sample std sqrt(20/3) would give other numbers)
    assert r.images["z"].tolist() == pytest.approx([-3 / math.sqrt(5), -1 / math.sqrt(5),
                                                    1 / math.sqrt(5), 3 / math.sqrt(5)], abs=1e-12)
    assert score(r, "a", "aesthetic") == pytest.approx(-2 / math.sqrt(5), abs=1e-12)
    assert score(r, "b", "aesthetic") == pytest.approx(2 / math.sqrt(5), abs=1e-12)
    assert score(r, "b", "aesthetic", "rank") == 1 and score(r, "a", "aesthetic", "rank") == 2
    assert r.meta["std_ddof"] == 0


def synthetic(rng, models=("a", "b", "c"), items=("p1", "p2", "p3"), seeds=5):
    rows = []
    for m_i, m in enumerate(models):
        for it in items:
            for s in range(seeds):
                rows.append(row(m, "aesthetic", it, s, rng.normal(5 + 0.3 * m_i, 1)))
                rows.append(row(m, "clipscore", it, s, rng.normal(25, 3)))
        for s in range(seeds):
            rows.append(row(m, "styleloss", "anime", s, rng.lognormal(m_i * 0.2, 0.5)))
            rows.append(row(m, "styleloss.relu1_1", "anime", s, rng.lognormal()))
    return pd.DataFrame(rows)


def test_zscores_match_plain_per_group_computation():
    scores = synthetic(np.random.default_rng(0))
    r = standardize(scores, models_table(a="sd1", b="sd1", c="sdxl"), METRICS, {}, n_boot=10)
    ok = r.images[r.images["status"] == "ok"]
    for (metric, item), g in ok.groupby(["metric", "item"]):
        assert g["z"].tolist() == pytest.approx(plain_z(g["value"].tolist()), abs=1e-12), (metric, item)
    for (model, metric), g in ok.groupby(["model", "metric"]):
        assert score(r, model, metric) == pytest.approx(statistics.fmean(g["z"]), abs=1e-12)
    # per-layer rows are not standardized and stay out of the image table (the report reads them from the scores)
    assert "styleloss.relu1_1" not in set(r.images["metric"])
    assert len(r.images) == (scores["metric"] != "styleloss.relu1_1").sum() == 3 * (2 * 3 * 5 + 5)
    assert set(r.scores["metric"]) == {"aesthetic", "clipscore", "styleloss", "combined"}


def test_lower_is_better_ranks_smallest_first_and_combined_orients():
    rows = [row(m, "styleloss", "anime", s, v + 0.1 * s) for m, v in (("lo", 1.0), ("mid", 2.0), ("hi", 3.0))
            for s in range(3)]
    rows += [row(m, "aesthetic", "p1", s, v + 0.1 * s) for m, v in (("lo", 1.0), ("mid", 3.0), ("hi", 2.0))
             for s in range(3)]
    r = standardize(pd.DataFrame(rows), models_table(lo="sd1", mid="sd1", hi="sd1"), METRICS, {}, n_boot=50)
    assert [score(r, m, "styleloss", "rank") for m in ("lo", "mid", "hi")] == [1, 2, 3]
    assert score(r, "lo", "styleloss") < 0 < score(r, "hi", "styleloss")  # natural sign kept
    assert score(r, "mid", "aesthetic", "rank") == 1
    for m in ("lo", "mid", "hi"):  # combined = mean(aesthetic, -styleloss)
        expected = (score(r, m, "aesthetic") - score(r, m, "styleloss")) / 2
        assert score(r, m, "combined") == pytest.approx(expected, abs=1e-12)
    assert [score(r, m, "combined", "rank") for m in ("lo", "mid", "hi")] == [2, 1, 3]


def test_a_half_applied_lora_image_is_excluded_like_other_flagged_images():
    rows = [row(m, "loraloss", "L1", s, float(v), task="lora") for m, vals in (("a", [1, 2, 3]), ("b", [4, 5, 6]))
            for s, v in enumerate(vals)]
    rows[2]["flags"] = "lora_partial"  # the file's q/k/v deltas did not reach the text encoder
    r = standardize(pd.DataFrame(rows), models_table(a="sd1", b="sd1"), METRICS, {}, n_boot=10)
    assert r.images["status"].tolist() == ["ok", "ok", "flagged", "ok", "ok", "ok"]
    assert score(r, "a", "loraloss", "n_excluded") == 1


def test_flags_excluded_and_counted():
    rows = [row(m, "aesthetic", "p1", s, float(v)) for m, vals in (("a", [1, 2, 3]), ("b", [4, 5, 6]))
            for s, v in enumerate(vals)]
    rows[0]["flags"] = "black"
    rows[1]["flags"] = "prompt_truncated"  # recorded, not excluding
    rows[4]["value"] = float("nan")
    rows[5]["flags"] = "prompt_truncated;error"
    r = standardize(pd.DataFrame(rows), models_table(a="sd1", b="sd1"), METRICS, {}, n_boot=10)
    assert r.images["status"].tolist() == ["flagged", "ok", "ok", "ok", "flagged", "flagged"]
    z = plain_z([2.0, 3.0, 4.0])
    assert r.images["z"].iloc[[1, 2, 3]].tolist() == pytest.approx(z)
    assert score(r, "a", "aesthetic", "n_excluded") == 1 and score(r, "b", "aesthetic", "n_excluded") == 2
    assert score(r, "a", "aesthetic", "n_images") == 2 and score(r, "b", "aesthetic", "n_images") == 1
    assert score(r, "a", "aesthetic") == pytest.approx((z[0] + z[1]) / 2)


def test_degenerate_groups_reported_never_divided():
    rows = [row(m, "aesthetic", "flat", s, 0.1) for m in ("a", "b") for s in range(3)]  # mean != 0.1 in floats
    rows += [row("a", "aesthetic", "single", 0, 4.0), row("b", "aesthetic", "single", 0, 1.0, flags="nan")]
    rows += [row(m, "aesthetic", "good", 0, v) for m, v in (("a", 1.0), ("b", 2.0))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = standardize(pd.DataFrame(rows), models_table(a="sd1", b="sd1"), METRICS, {}, n_boot=10)
    d = r.degenerate.set_index("item")
    assert sorted(d.index) == ["flat", "single"]
    assert d.loc["flat", "n_values"] == 6 and d.loc["flat", "reason"].startswith("zero spread")
    assert d.loc["single", "n_values"] == 1 and d.loc["single", "reason"] == "fewer than 2 usable values"
    bad = r.images[r.images["item"].isin(["flat", "single"]) & (r.images["flags"] == "")]
    assert set(bad["status"]) == {"degenerate"} and bad["z"].isna().all()
    assert score(r, "a", "aesthetic") == -1.0 and score(r, "b", "aesthetic") == 1.0  # only the "good" group
    assert score(r, "a", "aesthetic", "n_degenerate") == 4


def lora_rows(rng, families, items, seeds=4):
    rows = []
    for m, fam in families.items():
        for it, fam_of_item in items.items():
            for s in range(seeds):
                flags = "" if fam == fam_of_item else "lora_incompatible"
                rows.append(row(m, "loraloss", it, s, rng.normal(10 if fam == "sdxl" else 1, 1), flags))
    return pd.DataFrame(rows)


def test_lora_groups_pool_within_family():
    families = {"a": "sd1", "b": "sd1", "c": "sdxl", "d": "sdxl"}
    scores = lora_rows(np.random.default_rng(1), families, {"L1": "sd1", "L2": "sd1", "X1": "sdxl"})
    scores.loc[(scores["model"] == "c") & (scores["item"] == "L1"), "flags"] = ""  # an sdxl model scored on L1
    r = standardize(scores, models_table(**families), METRICS, {}, n_boot=10)
    ok = r.images[r.images["status"] == "ok"]
    for (_, fam), g in ok.groupby(["item", "family"]):
        assert (g["pool"] == fam).all()
        assert g["z"].tolist() == pytest.approx(plain_z(g["value"].tolist()), abs=1e-12)
    # c's L1 images form their own sdxl pool instead of mixing with sd1's (values near 10 vs near 1); alone in that
    # pool they have nothing to be compared with, so they get no z (a one-model group is degenerate)
    c_l1 = r.images[(r.images["item"] == "L1") & (r.images["model"] == "c") & (r.images["metric"] == "loraloss")]
    assert len(c_l1) and (c_l1["pool"] == "sdxl").all() and (c_l1["status"] == "degenerate").all()
    assert score(r, "a", "loraloss", "n_excluded") == 4  # X1 is incompatible with sd1


def test_a_group_of_one_model_has_no_z_however_many_seeds():
    """The rehearsal's finding: one model per family, 4 seeds per LoRA, z = +-1e-15 ranked #1 and #2."""
    rows = [row(m, "loraloss", "L1", s, v, task="lora") for m, vals in (("a", [1.0, 2.0, 4.0]), ("x", [3.0, 5.0, 6.0]))
            for s, v in enumerate(vals)]
    r = standardize(pd.DataFrame(rows), models_table(a="sd1", x="sdxl"), METRICS, {}, n_boot=10)
    assert (r.images["status"] == "degenerate").all() and r.images["z"].isna().all()
    assert set(r.degenerate["reason"]) == {"one model only: nothing to compare with"}
    assert score(r, "a", "loraloss", "n_degenerate") == 3


def test_notm_excludes_items_made_with_the_model():
    families = {"a": "sd1", "b": "sd1", "c": "sd1"}
    scores = lora_rows(np.random.default_rng(2), families, {"L1": "sd1", "L2": "sd1", "L3": "sd1"})
    r = standardize(scores, models_table(**families), METRICS, {"L1": ["a"], "L2": ["a", "b"], "L9": ["zz"]},
                    n_boot=30)
    ok = r.images[r.images["status"] == "ok"]

    def z(m, items):
        return ok[(ok["model"] == m) & ok["item"].isin(items)]["z"].mean()

    assert score(r, "a", "loraloss_notm") == pytest.approx(z("a", ["L3"]))
    assert score(r, "b", "loraloss_notm") == pytest.approx(z("b", ["L1", "L3"]))
    assert score(r, "c", "loraloss_notm") == pytest.approx(score(r, "c", "loraloss"))
    assert score(r, "a", "loraloss_notm", "n_images") == 4 and score(r, "a", "loraloss", "n_images") == 12
    assert "loraloss_notm" not in r.meta["combined_over"] and r.meta["directions"]["loraloss_notm"] is False


def test_bootstrap_equals_plain_loop_over_resampled_items():
    # general: 4 prompts x 3 seeds (two metrics); style: 3 styles x 3 seeds; the drawn unit is an item with its seeds
    rng, models = np.random.default_rng(3), "abc"
    rows = [row(m, metric, f"p{i}", s, rng.normal(5 + 0.3 * k, 1) + (m == "c") * (i - 2))
            for k, m in enumerate(models) for metric in ("aesthetic", "clipscore") for i in range(4) for s in range(3)]
    rows += [row(m, "styleloss", f"s{i}", s, rng.lognormal(0.2 * k + 0.3 * i * (m == "b"), 0.5))
             for k, m in enumerate(models) for i in range(3) for s in range(3)]
    n_boot, seed = 200, 7
    r = standardize(pd.DataFrame(rows), models_table(a="sd1", b="sd1", c="sd1"), METRICS, {}, n_boot=n_boot, seed=seed)
    assert r.meta["n_units"] == 7
    # plain version of the documented draw: strata (task, pool) in sorted order, items sorted, n - 1 draws each
    ok = r.images[r.images["status"] == "ok"]
    z = ok.groupby(["metric", "model", "item"])["z"].apply(list).to_dict()
    strata = {"general": [f"p{i}" for i in range(4)], "style": [f"s{i}" for i in range(3)]}
    gen = np.random.default_rng(seed)
    draws = {task: gen.integers(0, len(items), size=(n_boot, len(items) - 1)) for task, items in strata.items()}

    def resampled(metric, m, task):
        return [statistics.fmean(v for u in d for v in z[(metric, m, strata[task][u])]) for d in draws[task]]

    boot = {(metric, m): resampled(metric, m, TASK[metric]) for metric in ("aesthetic", "clipscore", "styleloss")
            for m in models}
    for m in models:  # the same draw serves every metric: combined = mean of oriented scores per resample
        boot[("combined", m)] = [(x + y - v) / 3 for x, y, v in zip(*(boot[(metric, m)]
                                 for metric in ("aesthetic", "clipscore", "styleloss")))]
    for (metric, m), values in boot.items():
        lo, hi = np.percentile(values, [2.5, 97.5])
        assert score(r, m, metric, "lo") == pytest.approx(lo, abs=1e-12), (metric, m)
        assert score(r, m, metric, "hi") == pytest.approx(hi, abs=1e-12), (metric, m)
    pw = r.pairwise.set_index(["metric", "model_a", "model_b"])["p_a_beats_b"]
    for metric, sign in (("aesthetic", 1), ("styleloss", -1), ("combined", 1)):
        a, c = np.array(boot[(metric, "a")]), np.array(boot[(metric, "c")])
        assert pw[(metric, "c", "a")] == pytest.approx(np.mean(sign * c > sign * a)), metric
    comb = np.array([boot[("combined", m)] for m in models]).T
    ranks = 1 + (comb[:, None, :] > comb[:, :, None]).sum(axis=2)
    assert score(r, "b", "combined", "rank_lo") == np.percentile(ranks[:, 1], 2.5, method="lower")
    assert score(r, "b", "combined", "rank_hi") == np.percentile(ranks[:, 1], 97.5, method="higher")


def test_unit_weights_draw_within_strata():
    strata = np.array([0, 0, 0, 1, 1, 2])
    w = unit_weights(strata, 500, np.random.default_rng(0))
    assert w.shape == (500, 6)
    assert (w[:, :3].sum(1) == 3).all() and (w[:, 3:5].sum(1) == 2).all() and (w[:, 5] == 1).all()
    assert set(np.unique(w[:, :3])) == {0, 1.5, 3} and set(np.unique(w[:, 3:5])) == {0, 2}  # n - 1 draws of n/(n-1)
    assert w[:, 0].mean() == pytest.approx(1.0, abs=0.1)


def test_unit_weights_give_the_unbiased_variance_of_a_mean():
    # Rao & Wu with n - 1 draws: Var over resamples of the weighted mean = sample variance (ddof=1) / n;
    # drawing n units would give (n - 1) / n of it, 0.8 here
    values = np.array([0.0, 1.0, 3.0, 4.0, 10.0])
    w = unit_weights(np.zeros(5, dtype=int), 200_000, np.random.default_rng(1))
    means = w @ values / w.sum(axis=1)
    assert means.var() == pytest.approx(values.var(ddof=1) / len(values), rel=0.02)
    assert means.mean() == pytest.approx(values.mean(), abs=0.02)


def test_rank_desc_ties_and_nan():
    got = rank_desc(np.array([[0.5, 2.0, np.nan, 2.0]]))
    np.testing.assert_array_equal(got, [[3.0, 1.0, np.nan, 1.0]])


def simulate_two(rng, d, items=30, seeds=15):
    """A = d + noise, B = noise: no model-by-prompt interaction, so the truth is known in closed form."""
    rows = []
    for it in range(items):
        for s in range(seeds):
            rows.append(row("A", "aesthetic", f"p{it}", s, d + rng.normal()))
            rows.append(row("B", "aesthetic", f"p{it}", s, rng.normal()))
    return pd.DataFrame(rows)


def test_intervals_cover_known_value_in_simulation():
    d, reps = 1.0, 30
    truth = (d / 2) / math.sqrt(d**2 / 4 + 1)  # A's mean z as images per group -> infinity
    rng = np.random.default_rng(11)
    covered, widths, se = 0, [], []  # se: the cluster standard error of A's per-prompt mean z (ddof=1)
    for rep in range(reps):
        r = standardize(simulate_two(rng, d), models_table(A="sd1", B="sd1"), METRICS, {}, n_boot=200, seed=rep)
        lo, hi = score(r, "A", "aesthetic", "lo"), score(r, "A", "aesthetic", "hi")
        covered += lo <= truth <= hi
        widths.append(hi - lo)
        per_item = r.images[r.images["model"] == "A"].groupby("item")["z"].mean()
        se.append(per_item.std(ddof=1) / math.sqrt(len(per_item)))
        p = r.pairwise.set_index(["metric", "model_a", "model_b"])["p_a_beats_b"]
        assert p[("aesthetic", "A", "B")] == 1.0  # a difference of 1 sd over 450 images
    assert 0.85 <= covered / reps <= 1.0
    assert np.mean(widths) == pytest.approx(2 * 1.96 * np.mean(se), rel=0.15)


def test_paired_resampling_cancels_shared_item_effects():
    # A and B share a huge per-prompt effect (+-3) that C lacks (both fail the same prompts); A is 0.05 above B
    rng = np.random.default_rng(5)
    rows = []
    for it in range(40):
        u = rng.choice([-3.0, 3.0]) + rng.normal(0, 0.5)
        for s in range(2):
            rows += [row("A", "aesthetic", f"p{it}", s, u + 0.05 + rng.normal(0, 0.01)),
                     row("B", "aesthetic", f"p{it}", s, u + rng.normal(0, 0.01)),
                     row("C", "aesthetic", f"p{it}", s, rng.normal(0, 0.01))]
    r = standardize(pd.DataFrame(rows), models_table(A="sd1", B="sd1", C="sd1"), METRICS, {}, n_boot=300, seed=0)
    p = r.pairwise.set_index(["metric", "model_a", "model_b"])["p_a_beats_b"]
    assert p[("aesthetic", "A", "B")] == 1.0 and p[("aesthetic", "B", "A")] == 0.0
    # while the single-model intervals are wide and overlap
    assert score(r, "A", "aesthetic", "lo") < score(r, "B", "aesthetic", "hi")


def test_pairwise_symmetric_and_reproducible():
    # 5 prompts: with 3, the few distinct draws of 2 items often give both seeds the same 2.5% percentile
    scores = synthetic(np.random.default_rng(4), items=("p1", "p2", "p3", "p4", "p5"))
    models = models_table(a="sd1", b="sd1", c="sd1")
    r1 = standardize(scores, models, METRICS, {}, n_boot=100, seed=3)
    r2 = standardize(scores, models, METRICS, {}, n_boot=100, seed=3)
    r3 = standardize(scores, models, METRICS, {}, n_boot=100, seed=4)
    p = r1.pairwise.set_index(["metric", "model_a", "model_b"])["p_a_beats_b"]
    for (metric, a, b), v in p.items():
        assert v + p[(metric, b, a)] == pytest.approx(1.0, abs=1e-12)
    assert 0 < p[("aesthetic", "a", "b")] < 1  # not a degenerate case
    for name in ("scores", "pairwise", "images"):
        pd.testing.assert_frame_equal(getattr(r1, name), getattr(r2, name))
    assert not np.allclose(r1.scores["lo"], r3.scores["lo"])
    np.testing.assert_array_equal(r1.scores["score"], r3.scores["score"])  # point estimates do not use the seed


def test_raw_aesthetic_table():
    rows = [row("a", "aesthetic", "p1", s, v) for s, v in enumerate([5.0, 6.0, 7.0, 8.0])]
    rows += [row("b", "aesthetic", "p1", s, v) for s, v in enumerate([4.0, 6.5])]
    rows += [row("b", "aesthetic", "p1", 9, 9.0, flags="black"), row("b", "aesthetic", "sty", 0, 9.0, task="style")]
    r = standardize(pd.DataFrame(rows), models_table(a="sd1", b="sd1"), METRICS, {}, n_boot=10, good_threshold=6.5)
    raw = r.raw.set_index("model")
    assert raw.loc["a", "mean"] == 6.5 and raw.loc["a", "std"] == pytest.approx(statistics.pstdev([5, 6, 7, 8]))
    assert raw.loc["a", "good_rate"] == 0.5 and raw.loc["b", "good_rate"] == 0.5
    assert raw.loc["b", "n_images"] == 2 and raw.loc["b", "mean"] == 5.25
    assert r.images["status"].tolist()[-1] == "other_task"


def test_raw_table_has_every_registered_metric_and_a_good_rate_for_the_raw_metric_only():
    rows = [row(m, "aesthetic", "p1", s, v + s) for m, v in (("a", 5.0), ("b", 6.0)) for s in range(2)]
    rows += [row(m, "styleloss", "anime", s, v * (s + 1)) for m, v in (("a", 1.0), ("b", 3.0)) for s in range(2)]
    rows += [row("a", "styleloss", "oil", 0, 2.0), row("b", "styleloss", "oil", 0, 2.0)]  # a flat group: raw counts
    rows += [row("a", "styleloss.relu1_1", "anime", 0, 9.0)]  # a diagnostic: not standardized, not raw
    r = standardize(pd.DataFrame(rows), models_table(a="sd1", b="sd1"), METRICS, {}, n_boot=10, good_threshold=6.0)
    raw = r.raw.set_index(["metric", "model"])
    assert list(dict.fromkeys(r.raw["metric"])) == ["aesthetic", "styleloss"] and list(r.raw["model"]) == list("abab")
    assert raw.loc[("styleloss", "a"), "mean"] == pytest.approx(statistics.fmean([1.0, 2.0, 2.0]))
    assert raw.loc[("styleloss", "b"), "std"] == pytest.approx(statistics.pstdev([3.0, 6.0, 2.0]))
    assert raw.loc[("styleloss", "b"), "n_images"] == 3
    assert math.isnan(raw.loc[("styleloss", "a"), "good_rate"]) and math.isnan(raw.loc[("styleloss", "a"), "threshold"])
    assert raw.loc[("aesthetic", "b"), "good_rate"] == 1.0 and raw.loc[("aesthetic", "a"), "good_rate"] == 0.5


def three_families_rows():
    """a, b (sd1) and x (sdxl) on two prompts and two styles; LoRA images for all, but x alone in its family's pool."""
    rows = [row(m, "aesthetic", f"p{i}", s, v + 0.5 * i + 0.1 * s) for m, v in (("a", 5.0), ("b", 6.0), ("x", 9.0))
            for i in range(2) for s in range(2)]
    rows += [row(m, "styleloss", f"st{i}", s, v + 0.2 * i + 0.1 * s) for m, v in (("a", 1.0), ("b", 3.0), ("x", 2.0))
             for i in range(2) for s in range(2)]
    rows += [row(m, "loraloss", f"L{i}", s, v + 0.3 * i + 0.1 * s) for m, v in (("a", 9.0), ("b", 1.0), ("x", 5.0))
             for i in range(2) for s in range(2)]
    return rows


def test_combined_is_over_the_metrics_every_model_has():
    """The demo's finding: the lone SDXL model has no LoRA score and ranked first on fewer metrics than the others."""
    r = standardize(pd.DataFrame(three_families_rows()), models_table(a="sd1", b="sd1", x="sdxl"), METRICS, {},
                    n_boot=40)
    assert math.isnan(score(r, "x", "loraloss")) and not math.isnan(score(r, "a", "loraloss"))
    assert r.meta["combined_over"] == ["aesthetic", "styleloss"]
    for m in "abx":  # the same two metrics for every model, a and b's LoRA score left out although they have one
        expected = (score(r, m, "aesthetic") - score(r, m, "styleloss")) / 2
        assert score(r, m, "combined") == pytest.approx(expected, abs=1e-12)
    assert [score(r, m, "combined", "rank") for m in "xab"] == [1, 2, 3]
    # the old mean over the metrics each model has would have ranked b above a on b's LoRA score alone
    old = {m: np.nanmean([score(r, m, "aesthetic"), -score(r, m, "styleloss"), -score(r, m, "loraloss")]) for m in "ab"}
    assert old["b"] > old["a"]
    assert score(r, "b", "combined", "n_images") == score(r, "b", "aesthetic", "n_images") + score(r, "b", "styleloss",
                                                                                                   "n_images")
    with_lora = standardize(pd.DataFrame(three_families_rows()), models_table(a="sd1", b="sd1", x="sd1"), METRICS,
                            {}, n_boot=40)
    assert with_lora.meta["combined_over"] == ["aesthetic", "styleloss", "loraloss"]  # one pool: x has it now


def test_a_model_without_any_score_does_not_void_the_combined_rank_of_the_others():
    rows = three_families_rows() + [row("dead", "aesthetic", "p0", 0, 1.0, flags="black"),
                                    row("dead", "styleloss", "st0", 0, float("nan"))]
    r = standardize(pd.DataFrame(rows), models_table(a="sd1", b="sd1", x="sdxl", dead="sd1"), METRICS, {}, n_boot=20)
    assert r.meta["combined_over"] == ["aesthetic", "styleloss"]
    assert math.isnan(score(r, "dead", "combined")) and pd.isna(score(r, "dead", "combined", "rank"))
    assert score(r, "x", "combined", "rank") == 1


def test_no_metric_every_model_has_gives_no_combined_score():
    rows = [row(m, "aesthetic", "p0", s, v + s) for m, v in (("a", 1.0), ("b", 2.0)) for s in range(2)]
    rows += [row(m, "styleloss", "st0", s, v + s) for m, v in (("c", 1.0), ("d", 3.0)) for s in range(2)]
    r = standardize(pd.DataFrame(rows), models_table(a="sd1", b="sd1", c="sd1", d="sd1"), METRICS, {}, n_boot=20)
    assert r.meta["combined_over"] == []
    combined = r.scores[r.scores["metric"] == "combined"]
    assert combined["score"].isna().all() and combined["rank"].isna().all() and combined["lo"].isna().all()
    assert not r.pairwise[r.pairwise["metric"] == "combined"]["p_a_beats_b"].notna().any()
    assert score(r, "a", "aesthetic", "rank") == 2 and score(r, "d", "styleloss", "rank") == 2  # per metric: ranked


def test_write_read_round_trip(tmp_path):
    scores = synthetic(np.random.default_rng(6))
    scores["item"] = scores["item"].replace({"p1": "007"})  # must stay a string
    r = standardize(scores, models_table(a="sd1", b="sd1", c="sd1"), METRICS, {}, n_boot=20)
    r.write(tmp_path / "std")
    back = Standardized.read(tmp_path / "std")
    assert "007" in set(back.images["item"])
    for name in ("images", "scores", "pairwise", "degenerate", "raw"):
        pd.testing.assert_frame_equal(getattr(r, name), getattr(back, name), check_dtype=False)
    assert back.meta == r.meta


def test_errors_name_the_problem():
    scores = pd.DataFrame([row("a", "aesthetic", "p1", 0, 1.0), row("ghost", "aesthetic", "p1", 1, 2.0)])
    with pytest.raises(ValueError, match="ghost"):
        standardize(scores, models_table(a="sd1"), METRICS, {})
    with pytest.raises(ValueError, match="value"):
        standardize(scores.drop(columns=["value"]), models_table(a="sd1", ghost="sd1"), METRICS, {})
    with pytest.raises(ValueError, match="grouped_by"):
        standardize(scores, models_table(a="sd1", ghost="sd1"), {"aesthetic": Info("aesthetic", True, "x")}, {})


# ---------------------------------------------------------------------------------------------------------------
# The vectorized pieces (issue 15: 500 models) against plain computations


def test_rank_desc_equals_counting_who_beats_whom():
    rng = np.random.default_rng(8)
    x = rng.integers(0, 6, size=(40, 30)).astype(float)  # many ties
    x[rng.random(x.shape) < 0.1] = np.nan
    x[3] = np.nan  # a resample where nobody has data
    expected = np.full(x.shape, np.nan)
    for b, row_ in enumerate(x):
        for m, v in enumerate(row_):
            if not math.isnan(v):
                expected[b, m] = 1 + sum(1 for u in row_ if not math.isnan(u) and u > v)
    np.testing.assert_array_equal(rank_desc(x), expected)
    np.testing.assert_array_equal(rank_desc(x[5]), expected[5])  # one-dimensional: a point estimate's ranks


def test_beats_share_equals_plain_pair_counts():
    rng = np.random.default_rng(9)
    boot = rng.integers(0, 4, size=(50, 7)).astype(float)
    boot[rng.random(boot.shape) < 0.2] = np.nan
    boot[:, 6] = np.nan  # a model with no data at all
    p, n = beats_share(boot)
    for a in range(7):
        for b in range(7):
            both = [(x, y) for x, y in zip(boot[:, a], boot[:, b]) if not (math.isnan(x) or math.isnan(y))]
            assert n[a, b] == len(both)
            if both:
                assert p[a, b] == sum(x > y for x, y in both) / len(both)
            else:
                assert math.isnan(p[a, b])


@pytest.mark.parametrize("method", ["linear", "lower", "higher"])
def test_column_percentiles_equal_nanpercentile(method):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(60, 5))
    x[rng.random(60) < 0.3, 1] = np.nan
    x[:, 2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN column
        expected = np.nanpercentile(x, [2.5, 97.5], axis=0, method=method)
    np.testing.assert_array_equal(column_percentiles(x, [2.5, 97.5], method=method), expected)
    np.testing.assert_array_equal(column_percentiles(x, 2.5, method=method), expected[0])


def test_excluded_mask_parses_each_cell_like_parse_flags():
    flags = pd.Series(["", "black", "prompt_truncated", "prompt_truncated;error", None, " nan ", "black", "lora_x"])
    values = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, float("inf"), "7"])
    expected = [bool(parse_flags(f) & EXCLUDING_FLAGS) or not math.isfinite(float(v)) for f, v in zip(flags, values)]
    assert excluded_mask(flags, values).tolist() == expected == [False, True, False, True, False, True, True, False]


def test_zscores_and_counts_equal_pandas_groupby_on_many_models_and_pools():
    """40 models in two families, LoRA pools per family, flagged and degenerate rows: z against a groupby here."""
    rng = np.random.default_rng(12)
    families = {f"m{k:02d}": "sdxl" if k % 3 == 0 else "sd1" for k in range(40)}
    rows = [row(m, metric, f"p{i}", s, rng.normal(k * 0.01, 1), flags="black" if rng.random() < 0.02 else "")
            for k, m in enumerate(families) for metric in ("aesthetic", "clipscore")
            for i in range(6) for s in range(2)]
    rows += [row(m, "loraloss", f"L{i}", s, rng.normal(), task="lora") for m in families for i in range(4)
             for s in range(2)]
    rows += [row(m, "styleloss", "flat", s, 2.5) for m in families for s in range(2)]  # zero spread
    r = standardize(pd.DataFrame(rows), models_table(**families), METRICS, {"L1": ["m01", "m03"]}, n_boot=50)
    ok = r.images[r.images["status"] == "ok"]
    g = ok.groupby(["metric", "task", "item", "pool"])["value"]
    expected = (ok["value"] - g.transform("mean")) / g.transform("std", ddof=0)
    np.testing.assert_allclose(ok["z"], expected, rtol=0, atol=1e-12)
    assert set(ok.loc[ok["metric"] == "loraloss", "pool"]) == {"sd1", "sdxl"}
    assert set(r.images.loc[r.images["metric"] == "styleloss", "status"]) == {"degenerate"}
    for m in families:
        mine = r.images[(r.images["model"] == m) & (r.images["metric"] == "aesthetic")]
        assert score(r, m, "aesthetic") == pytest.approx(mine["z"].mean(), abs=1e-12)
        assert score(r, m, "aesthetic", "n_excluded") == (mine["status"] == "flagged").sum()
        assert score(r, m, "styleloss", "n_degenerate") == 2
    notm = ok[(ok["metric"] == "loraloss") & ~((ok["item"] == "L1") & ok["model"].isin(["m01", "m03"]))]
    for m in ("m01", "m02", "m03"):
        assert score(r, m, "loraloss_notm") == pytest.approx(notm[notm["model"] == m]["z"].mean(), abs=1e-12)


@pytest.mark.parametrize("chunk", [7, 200_000])
def test_write_gives_the_bytes_plain_to_csv_gives(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(standardize_module, "CSV_CHUNK", chunk)  # 7: every table in several chunks
    scores = synthetic(np.random.default_rng(13))
    scores.loc[0, "value"] = -0.0
    scores.loc[1, "value"] = 1.5e-7
    scores.loc[2, "value"] = 3.0e17
    scores.loc[3, "value"] = 0.1 + 0.2
    scores.loc[4, "value"] = float("nan")
    r = standardize(scores, models_table(a="sd1", b="sd1", c="sd1"), METRICS, {}, n_boot=20)
    r.write(tmp_path / "std")
    for name in ("images", "scores", "pairwise", "degenerate", "raw"):
        getattr(r, name).to_csv(tmp_path / f"{name}.csv", index=False)
        assert (tmp_path / "std" / f"{name}.csv").read_bytes() == (tmp_path / f"{name}.csv").read_bytes(), name
