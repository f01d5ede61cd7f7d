"""Split-half stability (ghostreview.analysis.stability) and the Holm-corrected "A beats B" claims of standardize."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from ghostreview.analysis.stability import half_weights, split_half_table
from ghostreview.analysis.standardize import COMBINED, holm_adjust, standardize


@dataclass(frozen=True)
class Info:
    """Stand-in for ghostreview.scoring.metric.MetricInfo (only what standardize reads: MetricLike)."""

    higher_is_better: bool
    grouped_by: str


METRICS = {"aesthetic": Info(True, "prompt"), "clipscore": Info(True, "prompt")}


def simulated(mu: np.ndarray, prompts: int = 40, seeds: int = 4, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score rows of models with true effects ``mu`` [M]: value = prompt + mu + interaction (sd 0.5) + noise (sd 1),
    on two metrics (the second a noisier copy); and the models table."""
    rng = np.random.default_rng(seed)
    names = [f"m{i}" for i in range(len(mu))]
    rows = []
    for metric, noise in (("aesthetic", 1.0), ("clipscore", 1.5)):
        x = (rng.normal(size=(prompts, 1, 1)) + mu[None, :, None] + rng.normal(0, 0.5, (prompts, len(mu), 1))
             + rng.normal(0, noise, (prompts, len(mu), seeds)))
        for (i, m, s), v in np.ndenumerate(x):
            rows.append(dict(model=names[m], task="general", item=f"p{i}", seed=s, image_hash=f"{m}-{i}-{s}",
                             metric=metric, value=float(v), flags=""))
    return pd.DataFrame(rows), pd.DataFrame({"model": names, "family": "sd15"})


def tau_row(result, metric):
    return result.stability.set_index("metric").loc[metric]


def test_a_well_separated_order_has_split_half_tau_near_1():
    r = standardize(*simulated(np.linspace(0, 3, 8)), METRICS, {}, n_boot=20, n_splits=100)
    for metric in ("aesthetic", "clipscore", COMBINED):
        row = tau_row(r, metric)
        assert row["tau_median"] >= 0.9 and row["tau_hi"] <= 1.0 and row["n_models"] == 8
        assert row["items_per_half"] == 20 and row["n_splits"] == 100


def test_no_differences_give_split_half_tau_near_0():
    r = standardize(*simulated(np.zeros(8)), METRICS, {}, n_boot=20, n_splits=200)
    for metric in ("aesthetic", COMBINED):
        row = tau_row(r, metric)
        assert abs(row["tau_median"]) <= 0.15 and row["tau_lo"] < 0 < row["tau_hi"]


def test_halves_are_disjoint_equal_and_within_strata():
    strata = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2])
    a, b = half_weights(strata, 50, np.random.default_rng(0))
    assert ((a + b) <= 1).all()
    for s, half in ((0, 2), (1, 1), (2, 0)):
        assert (a[:, strata == s].sum(axis=1) == half).all() and (b[:, strata == s].sum(axis=1) == half).all()
    assert len({tuple(r) for r in a}) > 10  # the splits differ


def test_split_taus_equal_scipy_on_plain_half_means():
    rng = np.random.default_rng(3)
    sums, counts = rng.normal(size=(6, 10)), np.ones((6, 10)) * 2
    strata = np.zeros(10, dtype=int)
    table = split_half_table(["x"], [False], [sums], [counts], strata, [], n_splits=30, seed=5, ci=0.9,
                             combined_name=COMBINED)
    a, b = half_weights(strata, 30, np.random.default_rng(5))
    plain = [kendalltau(-(sums @ wa) / (counts @ wa), -(sums @ wb) / (counts @ wb))[0] for wa, wb in zip(a, b)]
    assert table.loc[0, "tau_median"] == pytest.approx(np.median(plain), abs=1e-12)
    assert table.loc[0, "tau_lo"] == pytest.approx(np.percentile(plain, 5), abs=1e-12)
    assert list(table["metric"]) == ["x"]  # no combined row without combined metrics


def plain_holm(p):
    order = np.argsort(p)
    m, out, running = len(p), np.empty(len(p)), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out


def test_holm_equals_a_plain_step_down():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5, np.nan])
    np.testing.assert_allclose(holm_adjust(p)[:5], plain_holm(p[:5]), rtol=0, atol=1e-15)
    assert np.isnan(holm_adjust(p)[5])
    np.testing.assert_allclose(holm_adjust(p[:5]), [0.04, 0.09, 0.09, 0.025, 0.5])


def test_claims_survive_correction_only_for_real_differences():
    r = standardize(*simulated(np.array([0.0, 0.0, 0.0, 2.0])), METRICS, {}, n_boot=400)
    pw = r.pairwise[r.pairwise["metric"] == "aesthetic"].set_index(["model_a", "model_b"])
    assert pw.loc[("m3", "m0"), "claim"] and pw.loc[("m3", "m1"), "claim"] and not pw.loc[("m0", "m3"), "claim"]
    equal = [("m0", "m1"), ("m1", "m0"), ("m0", "m2"), ("m2", "m1")]
    assert not pw.loc[equal, "claim"].any()
    assert (pw["p_holm"] >= pw["p_value"]).all()
    assert (pw.loc[("m0", "m1"), "p_holm"] == pw.loc[("m1", "m0"), "p_holm"])  # one hypothesis per pair
    # the normal p-value agrees with the resamples: a pair the bootstrap splits evenly is far from significant
    assert pw.loc[("m0", "m1"), "p_value"] > 0.05 and pw.loc[("m3", "m0"), "p_value"] < 1e-6
    assert r.meta["multiple_comparisons"] == "holm"


def test_report_section_and_stability_json_after_a_round_trip(tmp_path):
    from ghostreview.analysis.report.stability import stability_html, stability_json, write_stability_json
    from ghostreview.analysis.standardize import Standardized

    r = standardize(*simulated(np.array([0.0, 0.0, 0.0, 2.0])), METRICS, {}, n_boot=200, n_splits=50)
    r.write(tmp_path / "std")
    back = Standardized.read(tmp_path / "std")
    assert back.pairwise["claim"].dtype == bool and back.pairwise["claim"].sum() == r.pairwise["claim"].sum()
    doc = stability_json(back)
    assert set(doc) == {"aesthetic", "clipscore", COMBINED, "_claims"}
    assert doc[COMBINED]["tau"] == pytest.approx(tau_row(r, COMBINED)["tau_median"])
    assert doc["_claims"]["combined_surviving"] == int(r.pairwise.query("metric == @COMBINED")["claim"].sum()) == 3
    write_stability_json(back, tmp_path / "stability.json")
    page = stability_html(back, {}, {m: m.upper() for m in ("m0", "m1", "m2", "m3")})
    for text in ("Standardization: <b>pool</b>", "Split-half stability", "M3</b>, was added", "M3 beats M0",
                 "Holm", "planner-plan", "Half-width measured"):
        assert text in page
