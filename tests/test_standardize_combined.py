"""standardize.combined: which judges the combined rank averages (params, validation, standardize)."""

from __future__ import annotations

import pandas as pd
import pytest
from test_standardize import METRICS, Info, models_table, row, score

from ghostreview import validate
from ghostreview.analysis.standardize import standardize
from ghostreview.config import JUDGES, ConfigError, parse_params


def params(judges=None, combined=None) -> dict:
    data: dict = {"models": {"m": {"checkpoint": "m.safetensors"}}, "scoring": {}, "standardize": {}}
    if judges is not None:
        data["scoring"]["judges"] = judges
    if combined is not None:
        data["standardize"]["combined"] = combined
    return data


def test_left_out_it_is_the_article_four_that_the_review_computes():
    assert parse_params(params()).standardize.combined is None
    assert validate.combined_judges(validate.parse(params())) == JUDGES
    six = [*JUDGES, "hpsv21", "pickscore"]
    assert validate.combined_judges(validate.parse(params(judges=six))) == JUDGES  # added judges change nothing
    assert validate.combined_judges(validate.parse(params(judges=["pickscore", "clipscore"]))) == ("clipscore",)
    none_of_four = validate.parse(params(judges=["pickscore", "hpsv21"]))
    assert validate.combined_judges(none_of_four) == ("pickscore", "hpsv21")  # none of the four: every listed one
    chosen = validate.parse(params(judges=six, combined=["pickscore", "aesthetic"]))
    assert validate.combined_judges(chosen) == ("pickscore", "aesthetic")


@pytest.mark.parametrize(("combined", "message"), [
    ([], "standardize.combined is empty; list the judges"),
    (["aesthetic", "aesthetic"], "standardize.combined lists 'aesthetic' more than once"),
    ("aesthetic", "standardize.combined must be a list"),
])
def test_an_empty_repeated_or_scalar_list_is_refused(combined, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(params(combined=combined))


def test_a_name_that_is_no_judge_or_not_computed_is_refused_with_the_key_the_file_and_the_fix():
    with pytest.raises(validate.ParamsError) as err:
        validate.parse(params(combined=["aesthetc", "hpsv21", "clipscore"]), "my.yaml")
    unknown, unlisted = str(err.value).splitlines()
    assert unknown.startswith("my.yaml: standardize.combined has 'aesthetc', which is no judge. Did you mean "
                              "'aesthetic'?") and unknown.endswith("Fix standardize.combined in my.yaml.")
    assert unlisted == ("my.yaml: standardize.combined has 'hpsv21', which scoring.judges does not list (aesthetic, "
                        "clipscore, styleloss, loraloss): it has no scores to average. Add it to scoring.judges or "
                        "remove it from standardize.combined in my.yaml.")


def three_models() -> pd.DataFrame:
    """a leads on aesthetic and clipscore, c on styleloss (lower is better); every model has every metric."""
    rows = []
    for i, model in enumerate(["a", "b", "c"]):
        for item in ("p1", "p2", "p3"):
            for seed in range(2):
                rows.append(row(model, "aesthetic", item, seed, 5.0 - i + 0.1 * seed))
                rows.append(row(model, "clipscore", item, seed, 30.0 - i + 0.2 * seed))
        for item in ("s1", "s2"):
            rows.append(row(model, "styleloss", item, 0, 5.0 - 2 * i))  # c has the lowest loss
    return pd.DataFrame(rows)


def test_the_combined_score_averages_the_chosen_judges_only():
    scores, models = three_models(), models_table(a="sd1", b="sd1", c="sd1")
    every = standardize(scores, models, METRICS, {}, n_boot=20)
    assert every.meta["combined_over"] == ["aesthetic", "clipscore", "styleloss"]
    assert every.meta["combined_chosen"] == ["aesthetic", "clipscore", "styleloss"]  # the scored ones of all four
    two = standardize(scores, models, METRICS, {}, n_boot=20, combined=["clipscore", "styleloss"])
    assert two.meta["combined_over"] == two.meta["combined_chosen"] == ["clipscore", "styleloss"]
    for model in "abc":
        expected = (score(two, model, "clipscore") - score(two, model, "styleloss")) / 2
        assert score(two, model, "combined") == pytest.approx(expected)
        assert score(two, model, "aesthetic") == score(every, model, "aesthetic")  # every judge is still scored
    assert score(every, "a", "combined", "rank") == 1 and score(two, "c", "combined", "rank") == 1
    # all four named, one of them (loraloss) without scores: the same as the default
    four = standardize(scores, models, METRICS, {}, n_boot=20, combined=list(METRICS))
    pd.testing.assert_frame_equal(four.scores, every.scores)
    assert four.meta == every.meta


def test_a_chosen_judge_some_model_lacks_is_left_out_as_before():
    scores = three_models()
    scores = scores[~((scores["model"] == "b") & (scores["metric"] == "clipscore"))]
    r = standardize(scores, models_table(a="sd1", b="sd1", c="sd1"), METRICS, {}, n_boot=20,
                    combined=["clipscore", "styleloss"])
    assert r.meta["combined_chosen"] == ["clipscore", "styleloss"] and r.meta["combined_over"] == ["styleloss"]


def test_a_combined_name_outside_the_metrics_fails():
    with pytest.raises(ValueError, match=r"combined lists \['hpsv21'\], which are not among the metrics"):
        standardize(three_models(), models_table(a="sd1", b="sd1", c="sd1"),
                    {"aesthetic": Info("aesthetic", True, "prompt")}, {}, n_boot=5, combined=["aesthetic", "hpsv21"])
