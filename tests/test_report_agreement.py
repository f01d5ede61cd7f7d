"""The judges' agreement in the report (leaderboard.md, leaderboard.json, index.html) and the combined rank's chosen
judges, on test_report's demo review."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from test_report import METRICS, make_demo

from ghostreview.analysis.report import print_leaderboard
from ghostreview.analysis.report.html import write_html
from ghostreview.analysis.report.tables import write_tables
from ghostreview.analysis.standardize import standardize

FOUR = ["aesthetic", "clipscore", "styleloss", "loraloss"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"))


def written(result, scores, manifests, models, images_root, out):
    """(leaderboard.md text, leaderboard.json document, index.html text)."""
    paths = write_tables(result, models, out, metrics=METRICS)
    page = write_html(result, scores, manifests, models, images_root, out, metrics=METRICS, plot_pngs={})
    return (paths["leaderboard.md"].read_text(), json.loads(paths["leaderboard.json"].read_text()),
            page.read_text())


def cell(page: str, table: str, a: str, b: str) -> str:
    section = re.search(rf'<table class="pairwise" id="{table}">.*?</table>', page).group(0)
    return re.search(rf'data-a="{a}" data-b="{b}">(.*?)</td>', section).group(1).replace("<br>", " | ")


def test_the_demo_report_shows_the_agreement_matrix_and_each_models_rank_over_the_judges(demo, tmp_path):
    result, scores, manifests, models, images_root = demo
    md, doc, page = written(result, scores, manifests, models, images_root, tmp_path)
    agreement = result.agreement.set_index(["judge_a", "judge_b"])
    # leaderboard.json: judge x judge matrices in the judges' order, symmetric, 1 on the diagonal
    a = doc["agreement"]
    assert a["judges"] == FOUR and a["labels"] == [METRICS[j].label for j in FOUR] and a["absent"] is None
    for (ja, jb), r in agreement.iterrows():
        i, k = FOUR.index(ja), FOUR.index(jb)
        for field in ("kendall_tau", "tau_lo", "tau_hi", "n_models", "n_images"):
            assert a[field][i][k] == a[field][k][i] == pytest.approx(r[field])
        assert a["spearman"][i][k] == (None if pd.isna(r["spearman"]) else pytest.approx(r["spearman"]))
    assert [a["kendall_tau"][i][i] for i in range(4)] == [1.0] * 4
    assert a["n_models"][0][0] == 3 and a["n_models"][3][3] == 2  # gamma has no LoRA score
    assert a["n_images"][0][0] == 12  # 3 models x 2 prompts x 2 seeds
    order = [r["model"] for r in doc["models"]]
    assert [r["model"] for r in a["ranks"]] == order
    ranks = result.judge_ranks.set_index("model")
    for r in a["ranks"]:
        assert [r["best_rank"], r["worst_rank"]] == ranks.loc[r["model"], ["best_rank", "worst_rank"]].tolist()
        assert ";".join(r["best_by"]) == ranks.loc[r["model"], "best_by"]
    # leaderboard.md: the section after the others, with the registry's labels
    section = md[md.index("## Judge agreement"):]
    assert md.index("## Degenerate groups") < md.index("## Judge agreement")
    tau = agreement.loc[("aesthetic", "clipscore")]
    text = f"{tau['kendall_tau']:.2f} [{tau['tau_lo']:.2f}, {tau['tau_hi']:.2f}], 3 models"
    assert f"| Aesthetic | 1 | {text} |" in section and f"| CLIPScore | {text} | 1 |" in section
    assert "| Kendall's tau [interval] | Aesthetic | CLIPScore | StyleLoss | LoRALoss |" in section
    assert "| Aesthetic | 1 | " in section and "no shared image" in section  # a style loss and a prompt judge
    # index.html: a section of its own, linked from the navigation, the same numbers
    assert '<a href="#agreement">Judge agreement</a>' in page and '<section id="agreement">' in page
    lines = f"{tau['kendall_tau']:.2f} | [{tau['tau_lo']:.2f}, {tau['tau_hi']:.2f}] | 3 models"
    assert cell(page, "agreement-tau", "aesthetic", "clipscore") == lines
    assert cell(page, "agreement-tau", "clipscore", "aesthetic") == lines
    assert cell(page, "agreement-rho", "aesthetic", "styleloss") == "no shared image"
    assert re.findall(r'<table id="judge-ranks">.*?</table>', page)[0].count("<tr data-model=") == 3


def test_two_judges_that_disagree_show_it_in_every_file(demo, tmp_path):
    _, scores, manifests, models, images_root = demo
    general = scores[scores["metric"].isin(["aesthetic", "clipscore"])].copy()
    clip = general["metric"] == "clipscore"
    rank = general["model"].map({"alpha": 0.0, "beta": 1.0, "gamma": 2.0})
    general.loc[clip, "value"] = 20.0 + rank[clip] + 0.01 * general.loc[clip, "seed"]  # gamma best
    general.loc[~clip, "value"] = 7.0 - rank[~clip] + 0.01 * general.loc[~clip, "seed"]  # alpha best
    result = standardize(general, models, METRICS, {}, n_boot=30, seed=0)
    md, doc, page = written(result, general, manifests, models, images_root, tmp_path)
    a = doc["agreement"]
    assert a["judges"] == ["aesthetic", "clipscore"] and a["kendall_tau"] == [[1.0, -1.0], [-1.0, 1.0]]
    assert a["tau_lo"][0][1] == a["tau_hi"][0][1] == -1.0 and a["spearman"][0][1] < -0.5
    assert {r["model"]: (r["best_rank"], r["worst_rank"]) for r in a["ranks"]} == {
        "alpha": (1, 3), "beta": (2, 2), "gamma": (1, 3)}
    assert "| Aesthetic | 1 | -1.00 [-1.00, -1.00], 3 models |" in md
    assert "| alpha | 1 | 3 | Aesthetic | CLIPScore |" in md and "| beta | 2 | 2 | all judges | — |" in md
    assert cell(page, "agreement-tau", "aesthetic", "clipscore") == "-1.00 | [-1.00, -1.00] | 3 models"
    assert '<tr data-model="beta" class="stable">' in page


def test_with_one_judge_the_section_says_why_it_is_absent(demo, tmp_path):
    _, scores, manifests, models, images_root = demo
    one = scores[scores["metric"] == "aesthetic"]
    result = standardize(one, models, METRICS, {}, n_boot=10, seed=0)
    md, doc, page = written(result, one, manifests, models, images_root, tmp_path)
    reason = ("Judge agreement needs two judges that each rank two models or more; this review has one: "
              "Aesthetic.")
    assert md.endswith(f"## Judge agreement\n\n{reason}\n")
    assert doc["agreement"]["absent"] == reason and doc["agreement"]["kendall_tau"] == []
    assert f'<p class="note" id="agreement-absent">{reason}</p>' in page


def test_a_judge_not_chosen_for_the_combined_rank_keeps_its_column_and_is_named_as_not_chosen(demo, tmp_path):
    """hpsv21 scored but standardize.combined lists the four: the combined scores are the four's, and every file
    says why HPSv2.1 is not in them."""
    result, scores, manifests, models, images_root = demo
    extra = scores[scores["metric"] == "aesthetic"].assign(metric="hpsv21")
    extra["value"] = -extra["value"]  # reverses the aesthetic ranking
    six = standardize(pd.concat([scores, extra], ignore_index=True), models, METRICS, {"L1": ["alpha"]}, n_boot=50,
                      seed=0, good_threshold=6.0, combined=FOUR)
    combined = six.scores[six.scores["metric"] == "combined"].reset_index(drop=True)
    pd.testing.assert_frame_equal(combined, result.scores[result.scores["metric"] == "combined"]
                                  .reset_index(drop=True))
    assert six.meta["combined_chosen"] == FOUR and six.meta["agreement_judges"] == [*FOUR, "hpsv21"]
    md, doc, page = written(six, scores, manifests, models, images_root, tmp_path)
    assert "Not chosen for it (they keep their own columns and ranks): HPSv2.1." in md
    assert doc["combined_chosen"] == FOUR and not doc["metrics"]["hpsv21"]["in_combined"]
    assert doc["agreement"]["kendall_tau"][0][4] == -1.0  # hpsv21 reverses aesthetic
    assert '<th data-metric="hpsv21" class="not-combined"' in page


def test_print_leaderboard_names_the_judges_not_chosen(demo, tmp_path, capsys):
    result, scores, manifests, models, images_root = demo
    extra = scores[scores["metric"] == "aesthetic"].assign(metric="hpsv21")
    six = standardize(pd.concat([scores, extra], ignore_index=True), models, METRICS, {"L1": ["alpha"]}, n_boot=20,
                      combined=FOUR)
    write_tables(six, models, tmp_path, metrics=METRICS)
    print_leaderboard(tmp_path / "leaderboard.csv")
    lines = capsys.readouterr().out.splitlines()
    assert "Not chosen for Combined: HPSv2.1." in lines
    assert "Not in Combined, because some model has no score there: LoRALoss." in lines
