"""Tests of the leaderboard files (tables.write_tables) and ``print_leaderboard``'s formats, without the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ghostreview.analysis.report import FORMATS, format_leaderboard, print_leaderboard
from ghostreview.analysis.report.tables import fmt, write_tables
from ghostreview.analysis.standardize import standardize
from ghostreview.scoring.metric import MetricInfo

ROOT = Path(__file__).resolve().parents[1]


def info(name: str, higher: bool, grouped_by: str, label: str) -> MetricInfo:
    return MetricInfo(name, "1", higher, "u", grouped_by, f"{label} for tests", label, f"{label} axis")


# labels unlike the real ones, so that a label typed into the report instead of read from here would show
METRICS = {"aesthetic": info("aesthetic", True, "prompt", "Beauty"), "clipscore": info("clipscore", True, "prompt",
                                                                                       "Fidelity"),
           "styleloss": info("styleloss", False, "style", "Styl"), "loraloss": info("loraloss", False, "lora", "Lor")}
TASK = {"aesthetic": "general", "clipscore": "general", "styleloss": "style", "loraloss": "lora"}
MODELS = pd.DataFrame({"model": ["sd-a", "sd-b", "xl"], "family": ["sd1", "sd1", "sdxl"],
                       "title": ["Alpha Mix v2", "", "XL | Base"], "autov2": ["AAAAAAAAAA", "BBBBBBBBBB", "CCCCCCCCCC"],
                       "random_weights": [False, False, True]})


def scores() -> pd.DataFrame:
    """sd-a, sd-b (sd1) and xl (sdxl) on 3 prompts, 2 styles and 2 LoRAs, 2 seeds: xl is alone in its LoRA pool."""
    rows = []
    base = {"sd-a": (5.0, 21.0, 1.0, 3.0), "sd-b": (5.5, 20.0, 2.0, 1.0), "xl": (6.5, 22.0, 1.5, 2.0)}
    for m, (aes, clip, style, lora) in base.items():
        for s in range(2):
            for i in range(3):
                for metric, v in (("aesthetic", aes), ("clipscore", clip)):
                    rows.append((m, metric, f"p{i}", s, v + 0.2 * i * (m == "sd-b") + 0.1 * s))
            for i in range(2):
                rows.append((m, "styleloss", f"st{i}", s, style + 0.3 * i + 0.05 * s))
                rows.append((m, "loraloss", f"L{i}", s, lora + 0.2 * i + 0.05 * s))
    return pd.DataFrame([dict(model=m, task=TASK[metric], item=item, seed=s, image_hash=f"{m}-{item}-{s}",
                              metric=metric, value=v, flags="", metric_version="1", weights_sha256="0" * 64)
                         for m, metric, item, s, v in rows])


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    result = standardize(scores(), MODELS, METRICS, {}, n_boot=60, seed=1, good_threshold=6.0)
    out = tmp_path_factory.mktemp("report")
    return result, write_tables(result, MODELS, out, metrics=METRICS)


def test_leaderboard_json_carries_labels_directions_and_the_combined_metrics(written):
    result, paths = written
    doc = json.loads(paths["leaderboard.json"].read_text(encoding="utf-8"))
    assert list(doc) == ["metrics", "combined_over", "ci", "raw_metric", "good_threshold", "models",
                         "combined_chosen", "agreement", "reference"]  # the new keys last: the others keep their bytes
    assert doc["combined_chosen"] == ["aesthetic", "clipscore", "styleloss", "loraloss"]
    assert list(doc["metrics"]) == ["combined", "aesthetic", "clipscore", "styleloss", "loraloss", "loraloss_notm"]
    assert doc["metrics"]["styleloss"] == {"label": "Styl", "better": "lower", "mark": "↓", "registered": True,
                                           "in_combined": True, "raw_mean": "styleloss_mean"}
    assert doc["metrics"]["combined"] == {"label": "Combined", "better": "higher", "mark": "↑", "registered": False,
                                          "in_combined": False, "raw_mean": None}
    assert doc["metrics"]["loraloss_notm"]["label"] == "Lor NoTM" and doc["metrics"]["loraloss_notm"]["mark"] == "↓"
    assert doc["combined_over"] == result.meta["combined_over"] == ["aesthetic", "clipscore", "styleloss"]
    assert not doc["metrics"]["loraloss"]["in_combined"]  # xl has no LoRA score (alone in the sdxl pool)
    assert doc["ci"] == 0.95 and doc["raw_metric"] == "aesthetic" and doc["good_threshold"] == 6.0
    board = pd.read_csv(paths["leaderboard.csv"], keep_default_na=False)
    assert [r["model"] for r in doc["models"]] == board["model"].tolist()
    assert {r["model"]: r["title"] for r in doc["models"]} == {"sd-a": "Alpha Mix v2", "sd-b": "", "xl": "XL | Base"}
    xl = next(r for r in doc["models"] if r["model"] == "xl")
    assert xl["loraloss"] is None and xl["loraloss_mean"] == pytest.approx(2.125)  # raw values exist, no z
    assert xl["clipscore_mean"] == pytest.approx(22.05) and xl["styleloss_mean"] == pytest.approx(1.675)


def test_markdown_headers_have_direction_marks_and_say_what_the_combined_score_averages(written):
    _, paths = written
    md = paths["leaderboard.md"].read_text(encoding="utf-8")
    assert ("| # | Model | Title | Family | AutoV2 | Combined ↑ | Beauty ↑ | Fidelity ↑ | Styl ↓ | Lor ↓ | Lor NoTM ↓ "
            "| Raw Beauty mean ± std ↑ | Good rate (≥ 6.0) ↑ | Raw Fidelity mean ↑ | Raw Styl mean ↓ | Raw Lor mean ↓ "
            "| Flagged images |") in md
    assert ("Combined = mean of Beauty, Fidelity, Styl, the metrics every model has a score on, with losses "
            "sign-flipped (higher is better).") in md
    assert ("Not in it, because some model has no score there (a combined score over different metrics would not be "
            "comparable): Lor (no score for xl). Raw columns") in md  # NoTM, never averaged, is not listed
    assert "| XL \\| Base |" in md  # the title, its pipe escaped


def test_text_shows_marks_intervals_titles_and_rank_order(written):
    _, paths = written
    doc = json.loads(paths["leaderboard.json"].read_text(encoding="utf-8"))
    text = format_leaderboard(paths["leaderboard.csv"])
    lines = text.splitlines()
    assert lines[0] == "DEMO / RANDOM WEIGHTS: xl: numbers say nothing about real checkpoints."
    header = lines[1].split()
    assert header[:5] == ["#", "Model", "Title", "Family", "Combined"]
    assert [w for w in header if w in "↑↓"] == ["↑", "↑", "↑", "↓", "↓", "↓", "↑", "↑"]
    for line, rec in zip(lines[2:5], doc["models"]):
        assert line.split()[:2] == [str(rec["rank"]), rec["model"]]
        for m in ("combined", "aesthetic", "styleloss"):
            assert f"{fmt(rec[m])} [{fmt(rec[f'{m}_lo'])}, {fmt(rec[f'{m}_hi'])}]" in line, m
        assert rec["title"] in line and fmt(rec["aesthetic_mean"]) in line
    assert "— [—, —]" in next(line for line in lines if " xl " in line)  # no LoRA score: dashes, not NaN
    assert "Combined = mean over Beauty, Fidelity, Styl (losses sign-flipped)." in lines
    assert "Not in Combined, because some model has no score there: Lor." in lines


def test_other_formats_are_the_files_as_written(written, capsys):
    _, paths = written
    for fmt_name, name in (("md", "leaderboard.md"), ("json", "leaderboard.json"), ("csv", "leaderboard.csv")):
        assert format_leaderboard(paths["leaderboard.csv"], fmt_name) == paths[name].read_text(encoding="utf-8")
    print_leaderboard(paths["leaderboard.csv"], fmt="json")
    out, err = capsys.readouterr()
    assert json.loads(out)["models"] and err.startswith("DEMO / RANDOM WEIGHTS: xl")  # stdout stays parseable
    print_leaderboard(paths["leaderboard.csv"], fmt="csv")
    out, _ = capsys.readouterr()
    assert out.splitlines()[0].startswith("rank,model,title,family")


def test_bad_format_missing_files_and_old_layouts_fail_with_the_fix(written, tmp_path):
    _, paths = written
    with pytest.raises(ValueError, match="'html'.*text, md, json, csv"):
        print_leaderboard(paths["leaderboard.csv"], fmt="html")
    assert FORMATS == ("text", "md", "json", "csv")
    with pytest.raises(FileNotFoundError, match=r"nope\.json.*dvc repro report"):
        print_leaderboard(tmp_path / "nope.csv")
    (tmp_path / "leaderboard.csv").write_text("rank,model\n1,a\n")
    (tmp_path / "leaderboard.json").write_text('[{"rank": 1, "model": "a"}]\n')  # the layout before the metrics key
    with pytest.raises(ValueError, match="older report.*dvc repro report"):
        print_leaderboard(tmp_path / "leaderboard.csv")


def test_printing_every_format_imports_no_torch(written):
    _, paths = written
    board = str(paths["leaderboard.csv"])
    code = ("import sys\nfrom ghostreview.analysis.report import print_leaderboard\n"
            f"for f in ('text', 'md', 'json', 'csv'):\n    print_leaderboard({board!r}, fmt=f)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('NO TORCH')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("NO TORCH") and "Combined ↑" in done.stdout
