"""Tests of ghostreview.analysis.report: tables, plots and the offline HTML page on a tiny synthetic review."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ghostreview.analysis.report import print_leaderboard, write_report
from ghostreview.analysis.report.display import shown_metrics
from ghostreview.analysis.report.html import seed_order, write_html
from ghostreview.analysis.report.tables import leaderboard_frame, write_tables
from ghostreview.analysis.report.targets import Targets
from ghostreview.analysis.standardize import standardize
from ghostreview.scoring.registry import REGISTRY

SCRIPT_PROMPT = "<script>alert(1)</script> a cat"
ATTR_PROMPT = '"><img src=x onerror=alert(2)> a dog'


METRICS = REGISTRY  # the real labels and directions: the report shows what the metric modules declare
FAMILIES = {"alpha": "sd15", "beta": "sd15", "gamma": "sdxl"}
ITEMS = {"general": {"p1": SCRIPT_PROMPT, "p2": ATTR_PROMPT}, "style": {"anime": "anime style, a house"},
         "lora": {"L1": "<lora:L1:0.8> a tree"}}
METRICS_OF = {"general": ["aesthetic", "clipscore"], "style": ["styleloss", "styleloss.relu1_1"], "lora": ["loraloss"]}
# aesthetic on p1: gamma > beta > alpha; elsewhere alpha is strongest, so the combined order differs
AESTHETIC_P1 = {"alpha": 4.0, "beta": 5.0, "gamma": 6.5}


SDXL_LORA = {"X1": "<lora:X1:0.8> a boat"}  # make_demo(sdxl_lora=True): a LoRA of the SDXL table, drawn by gamma


def make_demo(root: Path, random_weights: bool = True, seeds: int = 2, metrics=METRICS, sdxl_lora: bool = False,
              size: int = 16, noise: bool = False):
    """Images, manifests, models and scores of a 3-model review; gamma (sdxl) cannot use the sd15 LoRA L1.
    metrics: the registry standardize ranks with. sdxl_lora: gamma also draws the SDXL LoRA X1 (only gamma: each
    model draws its own family's LoRA table). size: the images' side in pixels. noise: images of random pixels
    (PNGs as large as real ones: 288 px, about 250 KB) instead of one colour each."""
    rng = np.random.default_rng(0)
    images_root = root / "images"
    manifests, score_rows = {}, []
    items = {**ITEMS, "lora": {**ITEMS["lora"], **(SDXL_LORA if sdxl_lora else {})}}
    for m_i, (model, fam) in enumerate(FAMILIES.items()):
        (images_root / model).mkdir(parents=True)
        rows = []
        for task, task_items in items.items():
            for item, prompt in task_items.items():
                if item in SDXL_LORA and fam != "sdxl":
                    continue
                for seed in range(seeds):
                    incompatible = task == "lora" and item not in SDXL_LORA and fam != "sd15"
                    h = hashlib.sha256(f"{model}{item}{seed}".encode()).hexdigest()
                    flags = "lora_incompatible" if incompatible else ""
                    if not incompatible:
                        color = tuple(int(c) for c in rng.integers(0, 255, 3))
                        image = Image.new("RGB", (size, size), color) if not noise else Image.fromarray(
                            np.random.default_rng(int(h[:8], 16)).integers(0, 256, (size, size, 3), np.uint8))
                        image.save(images_root / model / f"{h}.png")
                    info = f"{prompt}\nNegative prompt: ugly\nSteps: 20, Seed: {seed}, Model: {model}"
                    rows.append(dict(model=model, family=fam, task=task, item=item, seed=seed, image=f"{h}.png",
                                     image_hash=h, prompt=prompt, negative_prompt="ugly", loras="", lora_status="",
                                     width=size, height=size, flags=flags, infotext=info))
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
    result = standardize(scores, models, metrics, {"L1": ["alpha"]}, n_boot=50, seed=0, good_threshold=6.0)
    return result, scores, manifests, models, images_root


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def report(demo, tmp_path_factory):
    """write_report once (rendering the figures is the slow part): (paths, out_dir)."""
    result, scores, manifests, models, images_root = demo
    out = tmp_path_factory.mktemp("report")
    return write_report(result, scores, manifests, models, images_root, out, metrics=METRICS), out


def test_tables(demo, tmp_path):
    result, scores, manifests, models, _ = demo
    paths = write_tables(result, models, tmp_path, metrics=METRICS)
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
    assert alpha["autov2"] == "ABCDEF0123" and alpha["family"] == "sd15"
    assert board.set_index("model").loc["gamma", "n_flagged_images"] == 2
    lb = json.loads(paths["leaderboard.json"].read_text())["models"]
    assert [r["model"] for r in lb] == board["model"].tolist()
    assert {r["model"]: r["loraloss"] for r in lb}["gamma"] is None  # no compatible LoRA images: null, not NaN
    # listed problems
    assert re.search(r"\| gamma \| L1 \| lora_incompatible \| 2 \|", md)
    assert md.count("| gamma | lora | L1 |") == 2


def test_tables_without_demo_have_no_warning(tmp_path):
    result, _, _, models, _ = make_demo(tmp_path / "d", random_weights=False, seeds=2)
    md = write_tables(result, models, tmp_path / "out", metrics=METRICS)["leaderboard.md"].read_text()
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


def linked(page: str) -> list[str]:
    """Every image URL of the page: img src, link href, the viewer's data-full (data: URIs included)."""
    return re.findall(r'(?:<img[^>]*\ssrc|<a[^>]*\shref|\sdata-full)="([^"#][^"]*)"', page)


def grid_pages(index: Path) -> dict[Path, str]:
    """The text of every grid page of the report whose index is ``index``, by path, in name order."""
    return {p: p.read_text() for p in sorted((index.parent / "pages").glob("*.html"))}


def whole_report(index: Path) -> str:
    """The index and every grid page, as one text."""
    return "\n".join([index.read_text(), *grid_pages(index).values()])


def check_links(page: Path, out: Path) -> list[str]:
    """Every link of ``page``: embedded, or a file inside the report ``out`` (a page link's #fragment dropped)."""
    links = linked(page.read_text())
    for src in links:
        target = (page.parent / src.split("#")[0]).resolve()
        assert src.startswith("data:image/") or (target.is_file() and target.is_relative_to(out.resolve())), src
    return links


def test_html_is_offline_and_escaped(demo, report):
    result, scores, manifests, models, images_root = demo
    out, index = report[1], report[0]["index.html"]
    pages = grid_pages(index)
    assert [p.name for p in pages] == ["task-general-1.html", "task-lora-sd15-1.html", "task-style-1.html"]
    assert len(re.findall(r'<img alt="ranking_[a-z_]+" src="data:image/png;base64,', index.read_text())) == 6
    for p in [index, *pages]:  # every page: offline, one script (ours), links inside the report only
        text = p.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
        assert "@import" not in text and "url(" not in text
        assert text.count("<script") == 1
        assert check_links(p, out)
    assert [link for link in linked(index.read_text()) if not link.startswith("data:")] == [
        "pages/task-general-1.html#grid-general-p1", "pages/task-general-1.html#grid-general-p2",
        "pages/task-style-1.html#grid-style-anime", "pages/task-lora-sd15-1.html#grid-lora-L1"]  # the contents
    page = whole_report(index)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a cat" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt; a dog" in page
    assert 'id="demo-warning"' in page and page.index('id="demo-warning"') < page.index('id="leaderboard"')
    for model in FAMILIES:
        assert f'<tr data-model="{model}">' in page
    # every drawn image once, as a lazily loaded thumbnail; gamma (sdxl) has no column in the sd15 LoRA's grid
    drawn = {m: t[t["flags"] == ""] for m, t in manifests.items()}
    assert page.count('class="thumb"') == sum(len(t) for t in drawn.values())
    assert page.count('<img loading="lazy"') == page.count('class="thumb"')
    assert 'class="missing"' not in page
    assert len(re.findall(r'<section class="grid"', page)) == 4  # p1, p2, anime, L1
    for model, t in drawn.items():  # the full view: a JPEG rendition at the image's own size, same picture
        for image in t["image"]:
            full = f"images/{model}/{Path(image).stem[:16]}.jpg"
            assert f'<a class="shot" href="../{full}">' in page
            with Image.open(out / full) as shown, Image.open(images_root / model / image) as original:
                assert shown.format == "JPEG" and shown.size == original.size
                diff = np.abs(np.asarray(shown, dtype=int) - np.asarray(original.convert("RGB"), dtype=int))
                assert diff.mean() < 3


def test_html_links_every_image_inside_its_own_directory(demo, tmp_path):
    """Large images get a JPEG thumbnail; a missing image is a marked cell; a second report leaves no stale files;
    none of the published files is a copy of an original (the report's remote never holds the images directory)."""
    result, scores, manifests, models, images_root = demo
    as_text = {m: t.astype(str) for m, t in manifests.items()}  # as the report stage reads them
    page = whole_report(write_html(result, scores, as_text, models, images_root, tmp_path, metrics=METRICS,
                                   plot_pngs={}, thumb_px=8))
    thumbs = re.findall(r'<img loading="lazy" decoding="async" alt="[^"]*" src="\.\./(images/[^"]+)" width="8" '
                        r'height="8">', page)
    assert len(thumbs) == 22 and all(t.endswith(".jpg") and "/thumbs/" in t for t in thumbs)
    for t in thumbs:
        with Image.open(tmp_path / t) as im:
            assert im.format == "JPEG" and im.size == (8, 8)
    links = re.findall(r'<a class="shot" href="\.\./(images/[^"]+)"', page)
    assert len(links) == 22 and all((tmp_path / link).is_file() for link in links)
    originals = {p.read_bytes() for p in images_root.rglob("*.png")}
    assert not [p for p in (tmp_path / "images").rglob("*") if p.is_file() and p.read_bytes() in originals]

    lost = as_text["beta"].iloc[0]
    (images_root / "beta" / lost["image"]).rename(tmp_path / "lost.png")
    try:
        page = whole_report(write_html(result, scores, {"beta": as_text["beta"]}, models, images_root, tmp_path,
                                       metrics=METRICS, plot_pngs={}))
    finally:
        (tmp_path / "lost.png").rename(images_root / "beta" / lost["image"])
    assert page.count('class="missing"') == 1 and f"no image: {lost['image']}" in page
    files = {p.relative_to(tmp_path / "images").as_posix() for p in (tmp_path / "images").rglob("*") if p.is_file()}
    assert files == {f"beta/{Path(i).stem[:16]}.jpg" for i in as_text["beta"]["image"] if i != lost["image"]}


def test_targets_of_the_benchmark():
    """benchmark_targets takes each style's and LoRA's set from reference_sets' names, and every LoRA's family."""
    from ghostreview.analysis.report.targets import benchmark_targets
    from ghostreview.protocol import load_benchmark

    bench = load_benchmark(Path(__file__).resolve().parents[1] / "data" / "benchmark" / "v1")
    style, sd15, sdxl = bench.styles[0], bench.loras["sd15"][0], bench.loras["sdxl"][0]
    sets = {f"styles/{style.name}": [Path("a.png"), Path("b.png")], f"loras/sd15/{sd15.name}": [Path("h.png")]}
    t = benchmark_targets(bench, sets)
    assert t.images == {("style", style.name): (Path("a.png"), Path("b.png")), ("lora", sd15.name): (Path("h.png"),)}
    assert t.lora_families[sd15.name] == "sd15" and t.lora_families[sdxl.name] == "sdxl"
    assert len(t.lora_families) == sum(len(v) for v in bench.loras.values())


def test_infotexts_are_factored_by_row_and_column_and_kept_whole_where_they_differ():
    from ghostreview.analysis.report.html import Infotexts

    def info(model, seed, prompt="a cat"):
        return {"infotext": f"{prompt}\nNegative prompt: ugly\nSteps: 20, Seed: {seed}, Model: {model}"}

    cells = {(m, s): info(m, s) for m in ("a", "b", "c") for s in ("1", "2", "10")}
    cells[("b", "10")] = info("b", "10", prompt="a dog")  # another prompt than its row's
    cells[("a", "2")] = {"infotext": "no settings line"}
    cells[("b", "1")] = {"infotext": float("nan")}  # a manifest cell read as NaN
    infos = Infotexts.of(cells)
    assert infos.heads == {"1": "a cat\nNegative prompt: ugly", "2": "a cat\nNegative prompt: ugly",
                           "10": "a cat\nNegative prompt: ugly"}
    assert infos.templates == {m: f"Steps: 20, Seed: {{seed}}, Model: {m}" for m in "abc"}
    attrs = {k: infos.attr(r, *k) for k, r in cells.items()}
    assert attrs[("a", "10")] == attrs[("b", "2")] == ""  # rebuilt exactly: nothing stored
    assert infos.rebuilt("a", "10") == info("a", "10")["infotext"]
    assert attrs[("b", "10")] == ' data-info="a dog\nNegative prompt: ugly\nSteps: 20, Seed: 10, Model: b"'
    assert attrs[("a", "2")] == ' data-info="no settings line"' and attrs[("b", "1")] == ' data-info=""'


def test_grid_rows_order_text_seeds_numerically():
    # manifests are read as text by the report stage: seed "10" must come after "2"
    assert seed_order(pd.Series(["10", "2", "1", "2"])) == ["1", "2", "10"]


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

    from ghostreview.analysis.report.html import page_html
    from ghostreview.protocol import benchmark_digest, load_benchmark

    result, _, _, models, _ = demo
    bench = load_benchmark(Path(__file__).resolve().parents[1] / "data" / "benchmark" / "v1")
    digest = benchmark_digest(bench)
    stamped = replace(result, meta={**result.meta, "benchmark": {"name": bench.name, "version": bench.version,
                                                                   "digest": digest}})
    md = write_tables(stamped, models, tmp_path, metrics=METRICS)["leaderboard.md"].read_text()
    assert f"Benchmark: {bench.name} {bench.version}, digest {digest[:12]}." in md
    board = leaderboard_frame(stamped, models)
    assert f"digest {digest[:12]}" in page_html(stamped, shown_metrics(stamped, METRICS), board, {}, "")
    plain = write_tables(result, models, tmp_path / "plain", metrics=METRICS)["leaderboard.md"].read_text()
    assert "Benchmark:" not in plain


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

    paths = write_report(result, scores, manifests, table, images_root, tmp_path / "out", metrics=METRICS)
    board = pd.read_csv(paths["leaderboard.csv"], keep_default_na=False)
    assert list(board.columns[:4]) == ["rank", "model", "title", "family"]
    assert board.set_index("model")["title"].to_dict() == {"alpha": hostile, "beta": "Beta Mix v5", "gamma": ""}
    records = json.loads(paths["leaderboard.json"].read_text())["models"]
    assert {r["model"]: r["title"] for r in records}["beta"] == "Beta Mix v5"
    md = paths["leaderboard.md"].read_text()
    assert "| # | Model | Title | Family |" in md
    assert re.search(r"\| beta \| Beta Mix v5 \| sd15 \|", md)
    assert '| alpha | <b>Alpha</b> \\| "v2" <script>alert(3)</script> | sd15 |' in md  # pipe escaped: one cell
    page = whole_report(paths["index.html"])
    assert "<b>Alpha</b>" not in page and "alert(3)</script>" not in page
    shown = "&lt;b&gt;Alpha&lt;/b&gt; | &quot;v2&quot; &lt;script&gt;alert(3)&lt;/script&gt;"
    # leaderboard: the title first, then key, family and AutoV2; a model without a title shows its key
    assert re.search(r'<tr data-model="alpha">.*?<td class="who" data-v="alpha"><b class="title">'
                     + re.escape(shown) + '</b><br><span class="key">alpha · sd15 · ABCDEF0123</span></td>', page)
    assert ('<td class="who" data-v="beta"><b class="title">Beta Mix v5</b><br><span class="key">beta · sd15 · '
            'BCDEF01234</span></td>') in page
    assert '<td class="who" data-v="gamma"><b class="title">gamma</b>' in page
    # grid columns and the pairwise matrix name the models by title too
    assert re.search(r'<th class="col" data-model="beta"[^>]*><b>Beta Mix v5</b><br><span class="key">beta</span>',
                     page)
    assert re.search(r'<th class="col" data-model="gamma"[^>]*><b>gamma</b><br><span class="item-score">', page)
    assert re.search(r'<th class="row">\d\. Beta Mix v5</th>', page)
    assert re.search(r'<th class="row">\d\. ' + re.escape(shown) + "</th>", page)


def test_metrics_out_of_the_combined_score_are_marked_only_when_standardize_says_which(demo):
    from dataclasses import replace

    from ghostreview.analysis.report.html import page_html

    result, _, _, models, _ = demo
    shown, board = shown_metrics(result, METRICS), leaderboard_frame(result, models)
    assert result.meta["combined_over"] == ["aesthetic", "clipscore", "styleloss"]  # gamma has no LoRA loss
    page = page_html(result, shown, board, {}, "")
    assert "Combined over: Aesthetic, CLIPScore, StyleLoss." in page
    marked = re.findall(r'<th data-metric="([a-z_]+)" class="not-combined"', page)
    assert marked == ["loraloss", "loraloss_notm"]
    older = replace(result, meta={k: v for k, v in result.meta.items() if k != "combined_over"})
    page = page_html(older, shown, board, {}, "")
    assert "Combined over" not in page and 'class="not-combined"' not in page
    assert '<th data-metric="loraloss">LoRALoss ↓</th>' in page


def figure_texts(fig) -> list[str]:
    """Every title, axis label, colour-bar label and tick label of a matplotlib figure."""
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:  # a colour bar is an axes of its own
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    return out


def test_labels_and_directions_come_from_the_registry(tmp_path):
    """Relabel every registered metric and flip StyleLoss's direction in a copy of the registry: tables, plots and
    page follow it, and none of the declared labels is left anywhere (a label or direction retyped in the report
    would be)."""
    from dataclasses import replace

    from ghostreview.analysis.report.html import item_scores
    from ghostreview.analysis.report.plots import figures, plot_data

    patched = {n: replace(i, label=f"Lbl{n.upper()}", axis_label=f"Axis{n.upper()}") for n, i in REGISTRY.items()}
    patched["styleloss"] = replace(patched["styleloss"], higher_is_better=True)
    result, scores, manifests, models, images_root = make_demo(tmp_path / "d", metrics=patched)
    md = write_tables(result, models, tmp_path / "out", metrics=patched)["leaderboard.md"].read_text()
    page = whole_report(write_html(result, scores, manifests, models, images_root, tmp_path / "out",
                                   metrics=patched, plot_pngs={}))
    figs = figures(result, plot_data(result, scores), models, shown_metrics(result, patched))
    texts = {stem: figure_texts(fig) for stem, fig in figs.items()}

    assert ("| Combined ↑ | LblAESTHETIC ↑ | LblCLIPSCORE ↑ | LblSTYLELOSS ↑ | LblLORALOSS ↓ | LblLORALOSS NoTM ↓ |"
            in md)
    assert ("Higher is better for LblAESTHETIC, LblCLIPSCORE, LblSTYLELOSS; lower is better for LblLORALOSS, "
            "LblLORALOSS NoTM." in md)
    assert ('<th data-metric="combined">Combined ↑</th><th data-metric="aesthetic">LblAESTHETIC ↑</th>'
            '<th data-metric="clipscore">LblCLIPSCORE ↑</th><th data-metric="styleloss">LblSTYLELOSS ↑</th>'
            '<th data-metric="loraloss" class="not-combined" title="not part of the combined rank">LblLORALOSS ↓'
            in page)  # flipped StyleLoss: ↑; LoRA loss: ↓ and out of the combined rank (gamma has none)
    assert "(losses: LblLORALOSS, LblLORALOSS NoTM)" in page
    assert "Combined over: LblAESTHETIC, LblCLIPSCORE, LblSTYLELOSS." in page
    assert '<summary>LblSTYLELOSS ↑</summary><table class="pairwise" id="pairwise-styleloss">' in page
    assert '<button type="button" data-sort="styleloss">LblSTYLELOSS</button>' in page
    z = item_scores(result).set_index(["model", "item", "metric"])["z"]
    alpha = page.split('data-item="anime"')[1].split('<th class="col" data-model="alpha"')[1].split(">")[0]
    assert f' data-m-styleloss="{float(z["alpha", "anime", "styleloss"])!r}"' in alpha  # oriented: not negated
    assert "LblSTYLELOSS: higher is better" in texts["ranking_styleloss"]
    assert "LblLORALOSS NoTM: lower is better" in texts["ranking_loraloss_notm"]
    assert {"Mean LblSTYLELOSS per style", "mean raw AxisSTYLELOSS (higher is better)"} <= set(texts["style_heatmap"])
    assert "mean raw AxisLORALOSS (lower is better)" in texts["lora_heatmap"]
    assert "AxisAESTHETIC (raw)" in texts["aesthetic_distribution"]
    assert {"AxisAESTHETIC (raw)", "AxisCLIPSCORE (raw)"} <= set(texts["clip_vs_aesthetic"])
    declared = {i.label for i in REGISTRY.values()} | {i.axis_label for i in REGISTRY.values()}
    for text in [md, page] + [t for ts in texts.values() for t in ts]:
        assert not [d for d in declared if d in text], text


def test_a_registry_that_disagrees_with_standardize_fails(demo, tmp_path):
    """A direction changed since standardize ran, or a scored metric the registry lacks, fails before any output."""
    from dataclasses import replace

    from ghostreview.analysis.report.plots import write_plots

    result, scores, manifests, models, images_root = demo
    flipped = {**REGISTRY, "clipscore": replace(REGISTRY["clipscore"], higher_is_better=False)}
    lacking = {n: i for n, i in REGISTRY.items() if n != "styleloss"}
    for metrics, error in ((flipped, r"'clipscore'.*higher_is_better=True.*rerun standardize"),
                           (lacking, r"'styleloss' is neither registered")):
        with pytest.raises(ValueError, match=error):
            write_report(result, scores, manifests, models, images_root, tmp_path / "out", metrics=metrics)
        with pytest.raises(ValueError, match=error):
            write_plots(result, scores, models, tmp_path / "out", metrics=metrics)
        with pytest.raises(ValueError, match=error):
            write_html(result, scores, manifests, models, images_root, tmp_path / "out", metrics=metrics)
    assert not (tmp_path / "out").exists()


def test_renditions_are_made_once_and_reused_from_the_cache(demo, tmp_path):
    """A second report after a model was added renders only that model's images (the others are hard links to the
    cache entries the first report made); a source replaced under the same name is rendered again."""
    result, scores, manifests, models, images_root = demo
    cache = tmp_path / "cache"

    def entries() -> dict[str, int]:
        return {p.name: p.stat().st_ino for p in cache.rglob("*.jpg")}

    two = {m: manifests[m] for m in ("alpha", "beta")}
    write_html(result, scores, two, models, images_root, tmp_path / "r1", metrics=METRICS, plot_pngs={},
               cache=cache, thumb_px=8)
    first = entries()
    drawn = {m: (t["flags"] == "").sum() for m, t in manifests.items()}
    assert len(first) == 2 * (drawn["alpha"] + drawn["beta"])  # a full view and a thumbnail each
    published = [p for p in (tmp_path / "r1" / "images").rglob("*.jpg")]
    assert len(published) == len(first) and {p.stat().st_ino for p in published} == set(first.values())
    assert not list(cache.glob(".staging-*"))

    write_html(result, scores, manifests, models, images_root, tmp_path / "r2", metrics=METRICS, plot_pngs={},
               cache=cache, thumb_px=8, workers=2)
    second = entries()
    assert {k: second[k] for k in first} == first  # untouched
    assert len(second) - len(first) == 2 * drawn["gamma"]  # only gamma's images are new

    row = manifests["alpha"].iloc[0]
    src = images_root / "alpha" / row["image"]
    original = src.read_bytes()
    try:
        Image.new("RGB", (16, 16), (250, 0, 250)).save(src)
        write_html(result, scores, manifests, models, images_root, tmp_path / "r3", metrics=METRICS, plot_pngs={},
                   cache=cache, thumb_px=8)
    finally:
        src.write_bytes(original)
    assert len(entries()) == len(second) + 2
    with Image.open(tmp_path / "r3" / "images" / "alpha" / f"{Path(row['image']).stem[:16]}.jpg") as im:
        assert np.abs(np.asarray(im, dtype=int) - [250, 0, 250]).mean() < 8  # the new picture, not the cached one


def test_renditions_are_keyed_on_content_not_mtime(demo, tmp_path):
    """After ``dvc pull`` (or a copy) every image has a new mtime and the same bytes: a rerun on the same cache makes
    no rendition and publishes the first run's cache entries; a file of other bytes under the same name is made
    anew."""
    result, scores, manifests, models, images_root = demo
    cache = tmp_path / "cache"

    def entries() -> dict[str, int]:
        return {p.name: p.stat().st_ino for p in cache.rglob("*.jpg")}

    def report(name: str) -> None:
        write_html(result, scores, manifests, models, images_root, tmp_path / name, metrics=METRICS, plot_pngs={},
                   cache=cache, thumb_px=8)

    report("r1")
    first = entries()
    sources = sorted(images_root.rglob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in sources}
    try:
        for k, p in enumerate(sources):  # every mtime moves, as a checkout writes the files anew
            os.utime(p, ns=(stamps[p] + 10**9 * (k + 1), stamps[p] + 10**9 * (k + 1)))
        report("r2")
    finally:
        for p, ns in stamps.items():
            os.utime(p, ns=(ns, ns))
    assert entries() == first  # 0 renditions made
    published = {p.stat().st_ino for p in (tmp_path / "r2" / "images").rglob("*.jpg")}
    assert published == set(first.values())

    src = sources[0]
    original = src.read_bytes()
    try:
        src.write_bytes(original[:-12] + bytes(12))  # same name, same size, other bytes at the end
        report("r3")
    finally:
        src.write_bytes(original)
    assert len(entries()) == len(first) + 2  # its full view and thumbnail


def test_grid_pages_hold_whole_items_up_to_max_cells_and_link_each_other(demo, tmp_path):
    result, scores, manifests, models, images_root = demo
    index = write_html(result, scores, manifests, models, images_root, tmp_path, metrics=METRICS, plot_pngs={},
                       max_cells=6)
    pages = grid_pages(index)
    # general: p1 and p2 have 6 images each (3 models x 2 seeds): one page each; anime 6; L1 4 (gamma left out)
    assert [p.name for p in pages] == ["task-general-1.html", "task-general-2.html", "task-lora-sd15-1.html",
                                       "task-style-1.html"]
    items = {p.name: re.findall(r'<section class="grid" id="[^"]+" data-task="[^"]+" data-item="([^"]+)"', t)
             for p, t in pages.items()}
    assert items == {"task-general-1.html": ["p1"], "task-general-2.html": ["p2"], "task-lora-sd15-1.html": ["L1"],
                     "task-style-1.html": ["anime"]}
    general = pages[tmp_path / "pages" / "task-general-2.html"]
    assert '<a href="task-general-1.html">1</a> <b>2</b>' in general and 'href="../index.html"' in general
    for p in pages:
        check_links(p, tmp_path)
    check_links(index, tmp_path)


GRID = re.compile(r'<section class="grid" id="([^"]+)" data-task="([^"]+)" data-item="([^"]+)".*?</section>', re.S)


@dataclass(frozen=True)
class ShownGrid:
    """One grid (or part) as a page shows it: its page, id, item, rows, columns, image hashes, target figures and
    the pages#anchors its previous / next links point to."""

    page: str
    anchor: str
    item: str
    seeds: list[str]
    models: list[str]
    hashes: list[str]
    targets: int
    prev: str | None
    next: str | None


def shown_grids(index: Path) -> dict[str, ShownGrid]:
    """Every grid section of every page of the report of ``index``, by "<page>#<anchor>"."""
    out = {}
    for path, text in grid_pages(index).items():
        for m in GRID.finditer(text):
            body = m.group(0)
            link = {rel: re.search(rf'<a rel="{rel}" href="([^"]+)"', body) for rel in ("prev", "next")}
            out[f"{path.name}#{m.group(1)}"] = ShownGrid(
                path.name, m.group(1), m.group(3), re.findall(r'<tr data-seed="([^"]+)"', body),
                re.findall(r'<th class="col" data-model="([^"]+)"', body),
                re.findall(r'<figure class="thumb" data-hash="([^"]+)"', body), body.count('class="thumb target"'),
                *(link[rel] and link[rel].group(1) for rel in ("prev", "next")))
    return out


def chain(index: Path, item: str) -> list[ShownGrid]:
    """``item``'s parts in the order their "next" links give, from the index's link to the item."""
    href = re.search(rf'<li><a href="pages/([^"]+)">{re.escape(item)}</a>', index.read_text()).group(1)
    grids, parts = shown_grids(index), []
    while href is not None:
        assert href in grids, href  # the link names the page that holds that anchor
        parts.append(grids[href])
        assert len(parts) <= len(grids)
        href = parts[-1].next
    for before, after in zip(parts, parts[1:]):
        assert after.prev == f"{before.page}#{before.anchor}"
    assert parts[0].prev is None
    return parts


@pytest.mark.parametrize("bound", [3, 2])
def test_items_above_max_cells_are_split_into_linked_parts_that_show_each_image_once(demo, tmp_path, bound):
    """At ``bound`` 3 every item of 2-3 models x 2 seeds is cut into one part per seed; at 2 a seed row of 3 models
    is cut into model chunks too. Across an item's parts (followed through their links) every image shows exactly
    once, rows and columns in the unsplit grid's order, no page holds more than ``bound`` images, and every part
    shows the item's targets."""
    result, scores, manifests, models, images_root = demo
    targets = Targets({("style", "anime"): tuple(sorted((images_root / "alpha").glob("*.png"))[:2])},
                      {"L1": "sd15"})

    def build(name: str, **kw) -> Path:
        return write_html(result, scores, manifests, models, images_root, tmp_path / name, metrics=METRICS,
                          plot_pngs={}, targets=targets, **kw)

    whole, split = build("whole"), build("split", max_cells=bound)
    unsplit = {g.item: g for g in shown_grids(whole).values()}
    assert all(g.prev is None and g.next is None for g in unsplit.values())
    for item, g in unsplit.items():
        parts = chain(split, item)
        assert len(parts) > 1 and all(p.item == item for p in parts)
        assert sorted(h for p in parts for h in p.hashes) == sorted(g.hashes)  # each image once, none lost
        assert all(len(p.hashes) <= bound and p.targets == g.targets for p in parts)
        cells = [(seed, model) for p in parts for seed in p.seeds for model in p.models]
        if bound == 3:  # one seed row a part, every model
            assert [p.seeds for p in parts] == [[s] for s in g.seeds] and all(p.models == g.models for p in parts)
        else:  # row by row, each row's models left to right
            assert cells == [(seed, model) for seed in g.seeds for model in g.models]
            assert len(parts) == len(g.seeds) * -(-len(g.models) // bound)
    assert unsplit["anime"].targets == 2
    for page, text in grid_pages(split).items():
        assert len(re.findall(r'<figure class="thumb" data-hash=', text)) <= bound, page.name
        check_links(page, tmp_path / "split")
    check_links(split, tmp_path / "split")


def test_a_page_bound_below_one_image_fails(demo, tmp_path):
    result, scores, manifests, models, images_root = demo
    with pytest.raises(ValueError, match="max_cells=0"):
        write_html(result, scores, manifests, models, images_root, tmp_path, metrics=METRICS, plot_pngs={},
                   max_cells=0)


def test_even_chunks():
    from ghostreview.analysis.report.html import even_chunks

    assert even_chunks(tuple(range(32)), 10) == [tuple(range(k, k + 8)) for k in (0, 8, 16, 24)]
    assert [len(c) for c in even_chunks(list(range(7)), 3)] == [3, 2, 2]
    assert even_chunks([1, 2], 5) == [(1, 2)] and even_chunks([], 4) == []


def test_plots_stay_readable_at_many_models():
    """At 60 models no chart is wider than 1,000 px, every model gets a labelled row of at least 14 px (distribution,
    ranking, heatmap), and no legend lists more than 10 entries (the scatter shows model means on a colour bar)."""
    from ghostreview.analysis.report.plots import FEW, figures, plot_data, png_bytes

    rng = np.random.default_rng(1)
    names = [f"m{i:03d}" for i in range(60)]
    assert len(names) > FEW
    rows = []
    for i, model in enumerate(names):
        for task, items, metrics in (("general", ("p1", "p2"), ("aesthetic", "clipscore")),
                                     ("style", ("anime", "ink"), ("styleloss",))):
            for item in items:
                for seed in range(3):
                    h = hashlib.sha256(f"{model}{item}{seed}".encode()).hexdigest()
                    rows += [dict(model=model, task=task, item=item, seed=seed, image_hash=h, metric=metric,
                                  value=float(rng.normal(5 + 0.02 * i, 1)), flags="", metric_version="1",
                                  weights_sha256="0" * 64) for metric in metrics]
    models = pd.DataFrame({"model": names, "family": "sd15", "checkpoint_file": [f"{m}.safetensors" for m in names],
                           "sha256": "ab" * 32, "autov2": "ABCDEF0123", "random_weights": False})
    scores = pd.DataFrame(rows)
    result = standardize(scores, models, METRICS, {}, n_boot=20, seed=0)
    figs = figures(result, plot_data(result, scores), models, shown_metrics(result, METRICS))
    assert {"aesthetic_distribution", "style_heatmap", "clip_vs_aesthetic", "ranking_combined"} <= set(figs)
    for stem, fig in figs.items():
        width, height = fig.get_size_inches() * fig.dpi
        assert width <= 1000, stem
        assert all(ax.get_legend() is None or len(ax.get_legend().get_texts()) <= 10 for ax in fig.axes), stem
        if stem != "clip_vs_aesthetic":
            ticks = {t.get_text().split(" ")[-1] for t in fig.axes[0].get_yticklabels()}
            assert set(names) <= ticks, stem  # every model labelled
            assert height / len(names) >= 14, stem
    with Image.open(io.BytesIO(png_bytes(figs["aesthetic_distribution"]))) as im:
        assert im.size[0] <= 1000 and im.size[1] >= 14 * len(names)
