"""Judge agreement (ghostreview.analysis.agreement, through standardize): Kendall's tau between judges' model
rankings with intervals from the scores' resamples, Spearman's rho between per-image z, best and worst ranks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from test_standardize import METRICS, models_table, row

from ghostreview.analysis import agreement
from ghostreview.analysis.standardize import Standardized, standardize

MODELS = ["a", "b", "c", "d"]


def review(clip_order: list[str], items: int = 6, noise: float = 0.0) -> pd.DataFrame:
    """Aesthetic ranks a > b > c > d on every prompt; CLIPScore ranks the models in ``clip_order`` (best first);
    ``noise``: per-image noise (seeded), so that resamples can reorder close models."""
    rng = np.random.default_rng(7)
    rows = []
    for i, model in enumerate(MODELS):
        for item in range(items):
            for seed in range(2):
                rows.append(row(model, "aesthetic", f"p{item}", seed, 8.0 - i + noise * rng.normal()))
                rows.append(row(model, "clipscore", f"p{item}", seed, 30.0 - clip_order.index(model)
                                + noise * rng.normal()))
    return pd.DataFrame(rows)


def run(scores: pd.DataFrame, n_boot: int = 40) -> Standardized:
    return standardize(scores, models_table(**dict.fromkeys(MODELS, "sd1")), METRICS, {}, n_boot=n_boot)


def pair(r: Standardized, a: str = "aesthetic", b: str = "clipscore") -> pd.Series:
    t = r.agreement
    return t[(t["judge_a"] == a) & (t["judge_b"] == b)].iloc[0]


def test_identical_rankings_have_tau_1_and_reversed_ones_minus_1_with_the_interval_holding_it():
    same, reverse = run(review(MODELS)), run(review(MODELS[::-1]))
    for r, tau in ((same, 1.0), (reverse, -1.0)):
        p = pair(r)
        assert p["kendall_tau"] == tau and p["tau_lo"] <= tau <= p["tau_hi"]
        assert p["n_models"] == 4 and p["n_boot"] == 40 and p["n_images"] == 48
        assert r.meta["agreement_judges"] == ["aesthetic", "clipscore"]
    assert pair(same)["spearman"] == pytest.approx(1.0) and pair(reverse)["spearman"] == pytest.approx(-1.0)


def test_judges_that_disagree_show_it_in_tau_rho_and_each_models_best_and_worst_rank():
    r = run(review(["d", "b", "c", "a"]))  # CLIPScore puts the aesthetic's best last and its worst first
    p = pair(r)
    # pairs (a,b) (a,c) (a,d) (b,d) (c,d) flip, (b,c) agrees: (1 - 5) / 6
    assert p["kendall_tau"] == pytest.approx(-4 / 6)
    assert p["spearman"] < 0
    ranks = r.judge_ranks.set_index("model")
    assert ranks.loc["a", ["best_rank", "worst_rank", "best_by", "worst_by"]].tolist() == [1, 4, "aesthetic",
                                                                                         "clipscore"]
    assert ranks.loc["b", ["best_rank", "worst_rank", "best_by"]].tolist() == [2, 2, "aesthetic;clipscore"]
    assert ranks["n_judges"].tolist() == [2, 2, 2, 2] and ranks.index.tolist() == MODELS


def test_tau_and_its_interval_equal_scipys_over_the_same_resamples():
    rng = np.random.default_rng(3)
    point = rng.integers(0, 4, (3, 6)).astype(float)  # ties on purpose: tau-b
    boot = rng.integers(0, 4, (3, 25, 6)).astype(float)
    point[2, 0], boot[1, :, 5] = np.nan, np.nan  # a model one judge does not score
    images = pd.DataFrame(columns=[*agreement.IMAGE_KEYS, "metric", "status", "z"])
    table = agreement.agreement_table(["x", "y", "w"], [True, True, False], point, boot, images, 0.9)
    for r in table.itertuples():
        a, b = "xyw".index(r.judge_a), "xyw".index(r.judge_b)

        def tau(x, y):
            both = np.isfinite(x) & np.isfinite(y)
            return scipy.stats.kendalltau(x[both], y[both]).statistic

        assert r.kendall_tau == pytest.approx(tau(point[a], point[b]), nan_ok=True)
        resampled = np.array([tau(boot[a, i], boot[b, i]) for i in range(25)])
        resampled = resampled[np.isfinite(resampled)]
        assert r.n_boot == len(resampled)
        assert [r.tau_lo, r.tau_hi] == pytest.approx(np.percentile(resampled, [5, 95]))
        assert r.n_models == (np.isfinite(point[a]) & np.isfinite(point[b])).sum()


def test_noisy_judges_get_an_interval_around_their_tau():
    p = pair(run(review(["b", "a", "d", "c"], items=8, noise=1.5), n_boot=200))
    assert p["tau_lo"] < p["kendall_tau"] < p["tau_hi"] and -1 <= p["tau_lo"] <= p["tau_hi"] <= 1


def test_per_image_rho_is_scipys_on_the_oriented_z_of_images_both_judges_score():
    scores = review(["b", "a", "d", "c"], noise=2.0)
    scores.loc[scores.index[:5], "flags"] = "black"  # a few aesthetic rows unusable: those images drop out
    r = run(scores)
    ok = r.images[r.images["status"] == "ok"]
    wide = ok.pivot_table(index=["model", "item", "seed"], columns="metric", values="z").dropna()
    p = pair(r)
    assert p["n_images"] == len(wide) == 48 - 3
    assert p["spearman"] == pytest.approx(scipy.stats.spearmanr(wide["aesthetic"], wide["clipscore"]).statistic)
    # a loss is oriented first: a style loss that rises with a lower aesthetic agrees with it
    assert agreement.spearman(np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)
    assert np.isnan(agreement.spearman(np.arange(2.0), np.arange(2.0)))


def test_judges_of_other_tasks_share_no_image_and_one_judge_or_one_model_has_no_agreement(tmp_path):
    scores = review(MODELS)
    styled = pd.concat([scores, pd.DataFrame([row(m, "styleloss", f"s{k}", 0, float(i + k))
                                              for i, m in enumerate(MODELS) for k in range(2)])])
    r = run(styled)
    p = pair(r, "aesthetic", "styleloss")
    assert p["n_images"] == 0 and np.isnan(p["spearman"]) and p["kendall_tau"] == 1.0  # a loss: lower is better
    r.write(tmp_path / "s")
    back = Standardized.read(tmp_path / "s")
    pd.testing.assert_frame_equal(back.agreement, r.agreement)
    pd.testing.assert_frame_equal(back.judge_ranks, r.judge_ranks, check_dtype=False)
    one = run(scores[scores["metric"] == "aesthetic"])
    assert one.agreement.empty and one.meta["agreement_judges"] == ["aesthetic"]
    assert one.judge_ranks["best_rank"].tolist() == [1, 2, 3, 4]
    solo = standardize(scores[scores["model"] == "a"], models_table(a="sd1"), METRICS, {}, n_boot=5)
    assert solo.agreement.empty and solo.meta["agreement_judges"] == []


@pytest.mark.parametrize("n_models", [2, 3, 7, 8, 9, 64])
def test_kendall_tau_b_rows_equal_scipys_with_ties_and_missing_models(n_models):
    rng = np.random.default_rng(n_models)
    x = rng.integers(0, 4, (12, n_models)).astype(float)
    y = np.where(rng.random((12, n_models)) < 0.5, x, rng.integers(0, 4, (12, n_models)))  # partly agreeing
    x[0, 0], y[1, -1], x[2] = np.nan, np.nan, np.nan  # a model one side lacks; a row with nothing
    tau, n = agreement.kendall_tau_b(x, y)
    for i in range(12):
        both = np.isfinite(x[i]) & np.isfinite(y[i])
        expected = scipy.stats.kendalltau(x[i, both], y[i, both]).statistic if both.sum() >= 2 else np.nan
        assert tau[i] == pytest.approx(expected, nan_ok=True) and n[i] == both.sum()


@pytest.mark.parametrize("budget", [1, agreement.ROW_BUDGET])
def test_pair_taus_rank_each_judge_once_and_again_where_the_other_lacks_a_model(monkeypatch, budget):
    monkeypatch.setattr(agreement, "ROW_BUDGET", budget)  # 1: one pair per chunk
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 5, (4, 9, 8)).astype(float)
    scores[1, 2, 3], scores[2, :, 0], scores[3, 5, :] = np.nan, np.nan, np.nan  # different models missing
    pairs, tau, n = agreement.pair_taus(scores)
    assert pairs == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    for (a, b), t, c in zip(pairs, tau, n):
        for r in range(9):
            both = np.isfinite(scores[a, r]) & np.isfinite(scores[b, r])
            expected = (scipy.stats.kendalltau(scores[a, r, both], scores[b, r, both]).statistic if both.sum() >= 2
                        else np.nan)
            assert t[r] == pytest.approx(expected, nan_ok=True) and c[r] == both.sum()
