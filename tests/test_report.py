"""Tests of ghostreview.analysis.report: tables, plots and the offline HTML page on a tiny synthetic review."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ghostreview.analysis.report import print_leaderboard, write_report
from ghostreview.analysis.report.html import grid_row, write_html
from ghostreview.analysis.report.tables import leaderboard_frame, write_tables
from ghostreview.analysis.standardize import standardize

SCRIPT_PROMPT = "<script>alert(1)</script> a cat"
ATTR_PROMPT = '"><img src=x onerror=alert(2)> a dog'


@dataclass(frozen=True)
class Info:
    name: str
    higher_is_better: bool
    grouped_by: str


METRICS = {"aesthetic": Info("aesthetic", True, "prompt"), "clipscore": Info("clipscore", True, "prompt"),
           "styleloss": Info("styleloss", False, "style"), "loraloss": Info("loraloss", False, "lora")}
FAMILIES = {"alpha": "sd1", "beta": "sd1", "gamma": "sdxl"}
ITEMS = {"general": {"p1": SCRIPT_PROMPT, "p2": ATTR_PROMPT}, "style": {"anime": "anime style, a house"},
         "lora": {"L1": "<lora:L1:0.8> a tree"}}
METRICS_OF = {"general": ["aesthetic", "clipscore"], "style": ["styleloss", "styleloss.relu1_1"], "lora": ["loraloss"]}
# aesthetic on p1: gamma > beta > alpha; elsewhere alpha is strongest, so the combined order differs
AESTHETIC_P1 = {"alpha": 4.0, "beta": 5.0, "gamma": 6.5}


def make_demo(root: Path, random_weights: bool = True, seeds: int = 2):
    """Images, manifests, models and scores of a 3-model review; gamma (sdxl) cannot use the sd1 LoRA L1."""
    rng = np.random.default_rng(0)
    images_root = root / "images"
    manifests, score_rows = {}, []
    for m_i, (model, fam) in enumerate(FAMILIES.items()):
        (images_root / model).mkdir(parents=True)
        rows = []
        for task, items in ITEMS.items():
            for item, prompt in items.items():
                for seed in range(seeds):
                    incompatible = task == "lora" and fam != "sd1"
                    h = hashlib.sha256(f"{model}{item}{seed}".encode()).hexdigest()
                    flags = "lora_incompatible" if incompatible else ""
                    if not incompatible:
                        color = tuple(int(c) for c in rng.integers(0, 255, 3))
                        Image.new("RGB", (16, 16), color).save(images_root / model / f"{h}.png")
                    info = f"{prompt}\nNegative prompt: ugly\nSteps: 20, Seed: {seed}, Model: {model}"
                    rows.append(dict(model=model, family=fam, task=task, item=item, seed=seed, image=f"{h}.png",
                                     image_hash=h, prompt=prompt, negative_prompt="ugly", loras="", lora_status="",
                                     width=16, height=16, flags=flags, infotext=info))
                    for metric in METRICS_OF[task]:
                        value = float(rng.normal(3 - m_i, 0.3))
                        if metric == "aesthetic":
                            value = AESTHETIC_P1[model] + 0.1 * seed if item == "p1" else 7 - m_i + 0.1 * seed
                        score_rows.append(dict(model=model, task=task, item=item, seed=seed, image_hash=h,
                                               metric=metric, value=value, flags=flags, metric_version="1",
                                               weights_sha256="0" * 64))
        manifests[model] = pd.DataFrame(rows)
    models = pd.DataFrame({"model": list(FAMILIES), "family": list(FAMILIES.values()),
                           "checkpoint_file": [f"{m}.safetensors" for m in FAMILIES], "sha256": ["ab" * 32] * 3,
                           "autov2": ["ABCDEF0123", "BCDEF01234", "CDEF012345"], "random_weights": random_weights})
    scores = pd.DataFrame(score_rows)
    result = standardize(scores, models, METRICS, {"L1": ["alpha"]}, n_boot=50, seed=0, good_threshold=6.0)
    return result, scores, manifests, models, images_root


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def report(demo, tmp_path_factory):
    """write_report once (rendering the figures is the slow part): (paths, out_dir)."""
    result, scores, manifests, models, images_root = demo
    out = tmp_path_factory.mktemp("report")
    return write_report(result, scores, manifests, models, images_root, out), out


def test_tables(demo, tmp_path):
    result, scores, manifests, models, _ = demo
    paths = write_tables(result, models, tmp_path)
    md = paths["leaderboard.md"].read_text()
    assert md.startswith("**DEMO / RANDOM WEIGHTS")
    board = pd.read_csv(paths["leaderboard.csv"])
    assert len(board) == 3 and board["rank"].tolist() == sorted(board["rank"].tolist())
    s = result.scores.set_index(["model", "metric"])
    for rec in board.to_dict(orient="records"):
        for m in ("aesthetic", "clipscore", "styleloss", "loraloss", "loraloss_notm", "combined"):
            assert rec[m] == pytest.approx(s.loc[(rec["model"], m), "score"], nan_ok=True)
            assert rec[f"{m}_lo"] == pytest.approx(s.loc[(rec["model"], m), "lo"], nan_ok=True)
            assert rec[f"{m}_rank"] == pytest.approx(s.loc[(rec["model"], m), "rank"], nan_ok=True)
        assert rec["rank"] == s.loc[(rec["model"], "combined"), "rank"]
    alpha = board.set_index("model").loc["alpha"]
    raw = [4.0, 4.1, 7.0, 7.1]  # alpha's aesthetic on p1 and p2
    assert alpha["aesthetic_mean"] == pytest.approx(np.mean(raw)) and alpha["aesthetic_good_rate"] == 0.5
    assert alpha["aesthetic_std"] == pytest.approx(np.std(raw))
    assert alpha["autov2"] == "ABCDEF0123" and alpha["family"] == "sd1"
    assert board.set_index("model").loc["gamma", "n_flagged_images"] == 2
    metrics = json.loads(paths["metrics.json"].read_text())
    assert set(metrics) == set(FAMILIES)
    assert set(metrics["beta"]) == {"aesthetic", "clipscore", "styleloss", "loraloss", "loraloss_notm", "combined",
                                    "rank"}
    assert metrics["beta"]["styleloss"] == pytest.approx(s.loc[("beta", "styleloss"), "score"])
    assert metrics["gamma"]["loraloss"] is None  # no compatible LoRA images: null, not NaN (invalid JSON)
    lb = json.loads(paths["leaderboard.json"].read_text())
    assert [r["model"] for r in lb] == board["model"].tolist()
    # listed problems
    assert re.search(r"\| gamma \| L1 \| lora_incompatible \| 2 \|", md)
    assert md.count("| gamma | lora | L1 |") == 2


def test_tables_without_demo_have_no_warning(tmp_path):
    result, _, _, models, _ = make_demo(tmp_path / "d", random_weights=False, seeds=2)
    md = write_tables(result, models, tmp_path / "out")["leaderboard.md"].read_text()
    assert md.startswith("# GhostReview leaderboard") and "DEMO" not in md


def test_plots(demo, report):
    result, scores, _, models, _ = demo
    plots = report[1] / "plots"
    expected = {"aesthetic_distribution", "style_heatmap", "lora_heatmap", "clip_vs_aesthetic"}
    expected |= {f"ranking_{m}" for m in set(result.scores["metric"])}
    assert {p.stem for p in plots.glob("*.png")} == expected
    for stem in expected:
        with Image.open(plots / f"{stem}.png") as im:
            assert im.format == "PNG" and im.size[0] > 200
            assert np.asarray(im.convert("L")).std() > 0  # not a blank canvas
    dist = pd.read_csv(plots / "aesthetic_distribution.csv")
    assert list(dist.columns) == ["model", "item", "seed", "image_hash", "value"] and len(dist) == 12
    heat = pd.read_csv(plots / "lora_heatmap.csv")
    assert set(heat["model"]) == {"alpha", "beta"}  # gamma's incompatible rows are excluded
    style = pd.read_csv(plots / "style_heatmap.csv").set_index("model")
    raw = scores[(scores["metric"] == "styleloss") & (scores["model"] == "beta")]["value"].mean()
    assert style.loc["beta", "mean"] == pytest.approx(raw) and style.loc["beta", "n"] == 2
    scatter = pd.read_csv(plots / "clip_vs_aesthetic.csv")
    assert list(scatter.columns) == ["model", "item", "seed", "image_hash", "aesthetic", "clipscore"]
    assert len(scatter) == 12
    ranking = pd.read_csv(plots / "ranking.csv")
    assert len(ranking) == len(result.scores)


def test_html_is_offline_and_escaped(demo, report):
    result, scores, manifests, models, images_root = demo
    page = report[0]["index.html"].read_text()
    assert len(re.findall(r'<img alt="ranking_[a-z_]+" src="data:image/png;base64,', page)) == 6  # plots embedded
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    for src in re.findall(r'<img[^>]*\ssrc="([^"]*)"', page):
        assert src.startswith("data:image/"), src[:40]
    assert page.count("<script") == 1  # ours only
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a cat" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt; a dog" in page
    assert 'id="demo-warning"' in page and page.index('id="demo-warning"') < page.index('id="leaderboard"')
    for model in FAMILIES:
        assert f'<tr data-model="{model}">' in page
    n_images = sum(int((m["flags"] == "").sum()) for m in manifests.values())
    assert page.count('class="thumb"') == sum(len(m) for m in manifests.values())
    assert len(re.findall(r'data-full="data:image/png;base64,', page)) == n_images
    assert page.count('class="missing"') == 2  # gamma's two incompatible LoRA images
    assert len(re.findall(r'<section class="grid"', page)) == 4  # p1, p2, anime, L1


def test_html_links_large_images(demo, tmp_path):
    result, scores, manifests, models, images_root = demo
    as_text = {m: t.astype(str) for m, t in manifests.items()}  # as the report stage reads them
    page = write_html(result, scores, as_text, models, images_root, tmp_path, plot_pngs={},
                      embed_max_bytes=0).read_text()
    links = re.findall(r'data-full="(images/[^"]+)"', page)
    assert len(links) == 22 and all((tmp_path / link).is_file() for link in links)


def test_grid_row_orders_text_seeds_numerically():
    # manifests are read as text by the report stage: seed "10" must come after "2"
    images = pd.DataFrame({"seed": ["10", "2", "1"]})
    row_html = grid_row("m", 0, images, {"aesthetic": 0.5}, {"aesthetic": True}, ["aesthetic"],
                        lambda r: f"[{r['seed']}]")
    assert "[1][2][10]" in row_html and 'data-score="0.5"' in row_html


def test_write_report_and_print(report, tmp_path, capsys):
    paths = report[0]
    assert {"leaderboard.md", "leaderboard.csv", "metrics.json", "index.html"} <= set(paths)
    print_leaderboard(paths["leaderboard.csv"])
    out = capsys.readouterr().out
    assert out.startswith("DEMO / RANDOM WEIGHTS")
    lines = out.splitlines()
    order = pd.read_csv(paths["leaderboard.csv"])["model"].tolist()
    assert [next(i for i, line in enumerate(lines) if f" {m} " in f" {line} ") for m in order] == [2, 3, 4]
    with pytest.raises(FileNotFoundError, match="report"):
        print_leaderboard(tmp_path / "nope.csv")


def test_reports_name_the_benchmark_they_answer(demo, tmp_path):
    """The standardize stage records name, version and digest; the Markdown and the page show them."""
    from dataclasses import replace

    from ghostreview.protocol import benchmark_digest, load_benchmark
    from ghostreview.analysis.report.html import page_html

    result, _, _, models, _ = demo
    bench = load_benchmark(Path(__file__).resolve().parents[1] / "data" / "benchmark" / "v1")
    digest = benchmark_digest(bench)
    stamped = replace(result, meta={**result.meta, "benchmark": {"name": bench.name, "version": bench.version,
                                                                   "digest": digest}})
    md = write_tables(stamped, models, tmp_path)["leaderboard.md"].read_text()
    assert f"Benchmark: {bench.name} {bench.version}, digest {digest[:12]}." in md
    board = leaderboard_frame(stamped, models)
    assert f"digest {digest[:12]}" in page_html(stamped, board, {}, "")
    assert "Benchmark:" not in write_tables(result, models, tmp_path / "plain")["leaderboard.md"].read_text()


def test_titles_from_params_show_next_to_the_model_key_escaped(demo, tmp_path):
    """``models.<key>.title`` (the name ``add-model --title`` promises in the report) reaches every leaderboard."""
    from ghostreview.analysis.aggregate import models_table

    result, scores, manifests, models, images_root = demo
    for row in models.to_dict(orient="records"):  # the model.json generate writes, as models_table reads it
        info = {"family": row["family"], "checkpoint_name": row["checkpoint_file"], "sha256": row["sha256"],
                "autov2": row["autov2"], "random_weights": True}
        (tmp_path / "images" / row["model"]).mkdir(parents=True)
        (tmp_path / "images" / row["model"] / "model.json").write_text(json.dumps(info))
    hostile = '<b>Alpha</b> | "v2" <script>alert(3)</script>'
    titles = {"alpha": hostile, "beta": "Beta Mix v5", "gamma": None}
    table = models_table(tmp_path / "images", list(FAMILIES), titles)
    assert table["title"].tolist() == [hostile, "Beta Mix v5", ""]
    assert models_table(tmp_path / "images", ["beta"])["title"].tolist() == [""]  # standardize passes no titles

    paths = write_report(result, scores, manifests, table, images_root, tmp_path / "out")
    board = pd.read_csv(paths["leaderboard.csv"], keep_default_na=False)
    assert list(board.columns[:4]) == ["rank", "model", "title", "family"]
    assert board.set_index("model")["title"].to_dict() == {"alpha": hostile, "beta": "Beta Mix v5", "gamma": ""}
    assert {r["model"]: r["title"] for r in json.loads(paths["leaderboard.json"].read_text())}["beta"] == "Beta Mix v5"
    md = paths["leaderboard.md"].read_text()
    assert "| # | Model | Title | Family |" in md
    assert re.search(r"\| beta \| Beta Mix v5 \| sd1 \|", md)
    assert '| alpha | <b>Alpha</b> \\| "v2" <script>alert(3)</script> | sd1 |' in md  # pipe escaped: one cell
    page = paths["index.html"].read_text()
    assert "<b>Alpha</b>" not in page and "alert(3)</script>" not in page
    shown = "&lt;b&gt;Alpha&lt;/b&gt; | &quot;v2&quot; &lt;script&gt;alert(3)&lt;/script&gt;"
    assert re.search(r'<tr data-model="alpha">.*?<td data-v="alpha">alpha</td><td data-v="[^"]*">'
                     + re.escape(shown) + "</td>", page)
    assert '<td data-v="beta">beta</td><td data-v="Beta Mix v5">Beta Mix v5</td>' in page
    assert "<th>Model</th><th>Title</th><th>Family</th>" in page
