"""Bradley-Terry ratings against LMArena's arena-rank (a stored fixture), analytic cases, the voter bootstrap and the
judges' accuracy and tau."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ghostreview.arena.ratings import (
    INIT,
    SCALE,
    battles,
    competition_ranks,
    fit,
    grouped,
    judge_table,
    pair_table,
    rate,
    rating_table,
)

FIXTURE = Path(__file__).with_name("test_arena_rank_fixture.json")


def fixture_votes() -> tuple[pd.DataFrame, dict]:
    doc = json.loads(FIXTURE.read_text())
    return pd.DataFrame(doc["votes"], columns=doc["columns"]), doc


def test_ratings_match_arena_rank_on_the_fixture():
    votes, doc = fixture_votes()
    models = sorted(doc["ratings"])
    r = rate(battles(votes, models), n_boot=0, seed=0)
    ours = dict(zip(models, INIT + SCALE * r.point))
    for m in models:
        assert ours[m] == pytest.approx(doc["ratings"][m], abs=0.01), m


def test_two_models_analytic():
    """a beats b 3 times in 4 (no ties): the MLE gap is ln 3, sum zero (the ridge moves it by ~1e-6)."""
    v = pd.DataFrame({"model_a": ["a"] * 4, "model_b": ["b"] * 4, "winner": ["model_a"] * 3 + ["model_b"],
                      "voter": ["v1", "v2", "v3", "v4"]})
    r = rate(battles(v, ["a", "b"]), n_boot=0, seed=0).point
    assert r[0] - r[1] == pytest.approx(math.log(3), rel=1e-4) and r.sum() == pytest.approx(0, abs=1e-12)


def test_ties_count_as_half():
    """One win each way plus two ties is an even pair; a win and a tie is the same as 3 wins in 4 half-votes."""
    even = pd.DataFrame({"model_a": ["a"] * 4, "model_b": ["b"] * 4, "winner": ["model_a", "model_b", "tie",
                                                                                  "both_bad"], "voter": list("wxyz")})
    assert rate(battles(even, ["a", "b"]), 0, 0).point == pytest.approx([0, 0], abs=1e-9)
    half = pd.DataFrame({"model_a": ["a"] * 2, "model_b": ["b"] * 2, "winner": ["model_a", "tie"], "voter": ["w", "x"]})
    assert np.diff(rate(battles(half, ["a", "b"]), 0, 0).point)[0] == pytest.approx(-math.log(3), rel=1e-4)


def test_a_model_that_won_everything_stays_finite():
    v = pd.DataFrame({"model_a": ["a"] * 5, "model_b": ["b"] * 5, "winner": ["model_a"] * 5, "voter": list("vwxyz")})
    r = rate(battles(v, ["a", "b"]), 0, 0).point
    assert np.isfinite(r).all() and 5 < r[0] - r[1] < 40


def test_grouping_does_not_change_the_fit():
    votes, doc = fixture_votes()
    bt = battles(votes, sorted(doc["ratings"]))
    ungrouped = fit(bt.a, bt.b, bt.y, np.ones(len(bt.y)), len(bt.models))
    assert fit(*grouped(bt, np.ones(bt.n_voters)), len(bt.models)) == pytest.approx(ungrouped, abs=1e-9)


def test_the_voter_bootstrap_resamples_whole_voters_and_gives_sane_intervals():
    votes, doc = fixture_votes()
    models = sorted(doc["ratings"])
    r = rate(battles(votes, models), n_boot=200, seed=0)
    assert (r.weights.sum(axis=1) == r.battles.n_voters).all()
    t = rating_table(r, 0.95).set_index("model")
    assert ((t["rating_lo"] <= t["rating"]) & (t["rating"] <= t["rating_hi"])).all()
    assert ((t["rank_lo"] <= t["rank"]) & (t["rank"] <= t["rank_hi"])).all()
    # the bootstrap's width is close to arena-rank's sandwich width (both ~ the sampling sd; voters add a little)
    width = (t["rating_hi"] - t["rating_lo"]).to_numpy()
    sandwich = np.array([doc["sandwich_hi"][m] - doc["sandwich_lo"][m] for m in t.index])
    assert 0.7 < np.median(width / sandwich) < 1.6
    assert t["votes"].sum() == 2 * len(votes) and t.loc[models[0], "voters"] <= 40


def test_competition_ranks():
    assert competition_ranks(np.array([0.5, 2.0, 0.5, -1.0])).tolist() == [2, 1, 2, 4]


def test_pair_table_counts_every_outcome():
    votes, _ = fixture_votes()
    p = pair_table(votes)
    assert p["votes"].sum() == len(votes)
    assert (p[["a_wins", "b_wins", "ties", "both_bad"]].sum(axis=1) == p["votes"]).all()


def test_judge_accuracy_and_tau():
    """A judge that scores the winner's image higher in 3 of 4 decided votes (ties ignored) has accuracy 3/4; its
    model scores in the human order give tau 1, reversed -1."""
    v = pd.DataFrame({"model_a": ["a", "a", "a", "a", "b", "a"], "model_b": ["b", "b", "b", "c", "c", "c"],
                      "winner": ["model_a", "model_a", "model_b", "model_a", "model_a", "tie"],
                      "voter": ["v1", "v2", "v1", "v2", "v3", "v3"],
                      "image_a": ["a1", "a2", "a3", "a4", "b5", "a6"], "image_b": ["b1", "b2", "b3", "c4", "c5", ""]})
    r = rate(battles(v, ["a", "b", "c"]), n_boot=50, seed=0)
    values = {"a1": 2, "b1": 1, "a2": 2, "b2": 1, "a3": 2, "b3": 1, "a4": 1, "c4": 1, "b5": 3, "c5": 0}
    human = dict(zip(["a", "b", "c"], r.point))
    t = judge_table(v, r, {"good": values, "blind": {}}, {"good": human, "blind": {m: -x for m, x in human.items()}},
                    0.95).set_index("judge")
    # decided votes: a1>b1 right, a2>b2 right, b3 won but a3 higher: wrong, a4 = c4: half, b5>c5 right
    assert t.loc["good", "n_votes"] == 5 and t.loc["good", "accuracy"] == pytest.approx(3.5 / 5)
    assert t.loc["good", "accuracy_lo"] <= 0.7 <= t.loc["good", "accuracy_hi"]
    assert t.loc["good", "kendall_tau"] == pytest.approx(1.0) and t.loc["blind", "kendall_tau"] == pytest.approx(-1)
    assert t.loc["blind", "n_votes"] == 0 and math.isnan(t.loc["blind", "accuracy"])
