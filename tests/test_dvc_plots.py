"""``dvc plots show`` / ``dvc plots diff`` offline: the committed page template (``.dvc/plots/offline.html``, built by
``tools/dvc_plots_page.py`` from vl-convert-python's Vega bundle) and the chart templates of ``.dvc/plots/``, drawn
from the CSVs the report writes, by the real ``dvc`` CLI and opened in Debian's chromium with every request that
would leave the machine aborted.

The workspace: a git repo holding the project's ``plots:`` definitions (from ``dvc.yaml``), its ``.dvc/`` and the
report's ``reports/plots/`` (``write_plots`` on a synthetic review of three models) in two commits with different
scores, the comparison a user makes between two experiments or revisions.
"""

from __future__ import annotations

import configparser
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ghostreview.analysis.report.display import shown_metrics
from ghostreview.analysis.report.plots import plot_data, write_plots
from ghostreview.analysis.standardize import standardize
from ghostreview.scoring.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FAMILIES = {"alpha": "sd1", "beta": "sd1", "gamma": "sdxl"}
ITEMS = {"general": ["p1", "p2", "p3"], "style": ["anime", "oil"], "lora": ["L1"]}
METRICS_OF = {"general": ["aesthetic", "clipscore"], "style": ["styleloss"], "lora": ["loraloss"]}
CHARTS = ("Aesthetic distribution", "CLIPScore vs aesthetic", "Ranking (combined and per metric)")


def review(seeds: int, spread: float):
    """(standardized result, score table, models) of a 3-model review with ``seeds`` images per item; the models'
    scores lie ``spread`` apart."""
    rng = np.random.default_rng(seeds)
    rows = []
    for i, (model, family) in enumerate(FAMILIES.items()):
        for task, items in ITEMS.items():
            for item in items:
                for seed in range(seeds):
                    flags = "lora_incompatible" if task == "lora" and family != "sd1" else ""
                    image = hashlib.sha256(f"{model}{item}{seed}".encode()).hexdigest()
                    rows += [dict(model=model, task=task, item=item, seed=seed, image_hash=image, metric=metric,
                                  value=float(rng.normal(5 + spread * i, 0.5)), flags=flags, metric_version="1",
                                  weights_sha256="0" * 64) for metric in METRICS_OF[task]]
    models = pd.DataFrame({"model": list(FAMILIES), "family": list(FAMILIES.values()), "random_weights": True})
    scores = pd.DataFrame(rows)
    return standardize(scores, models, REGISTRY, {"L1": ["alpha"]}, n_boot=20, seed=0), scores, models


def git(ws: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True)


def test_the_committed_page_is_what_the_script_builds(tmp_path):
    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tools.dvc_plots_page", *args], cwd=ROOT, capture_output=True,
                              text=True)

    built = script("--out", str(tmp_path / "offline.html"))
    assert built.returncode == 0, built.stderr
    committed = (ROOT / ".dvc" / "plots" / "offline.html").read_bytes()
    assert (tmp_path / "offline.html").read_bytes() == committed, "stale page: run python -m tools.dvc_plots_page"
    (tmp_path / "offline.html").write_bytes(committed.replace(b"<title>", b"<title>x", 1))
    check = script("--check", "--out", str(tmp_path / "offline.html"))
    assert check.returncode == 1 and "python -m tools.dvc_plots_page" in check.stderr


def test_dvc_is_configured_with_the_offline_page_and_our_chart_templates():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert (ROOT / ".dvc" / config["plots"]["html_template"]).resolve() == ROOT / ".dvc" / "plots" / "offline.html"
    page = (ROOT / ".dvc" / "plots" / "offline.html").read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC fills {scripts} with its CDN <script src=...>
    assert "<script src" not in page and "https://" not in page.split("<script>")[0]
    named = [next(iter(p.items())) for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
             if isinstance(p, dict)]
    assert [name for name, _ in named] == list(CHARTS)
    for name, props in named:
        template = json.loads((ROOT / ".dvc" / "plots" / f"{props['template']}.json").read_text())
        assert template["data"] == {"values": "<DVC_METRIC_DATA>"}, name


@pytest.fixture(scope="module")
def plots_diff(tmp_path_factory) -> Path:
    """``dvc plots diff HEAD~1 HEAD`` of the two-commit workspace: the page's path."""
    ws = tmp_path_factory.mktemp("plots") / "ws"
    ws.mkdir()
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    shutil.copytree(ROOT / ".dvc", ws / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    git(ws, "init", "-q")
    git(ws, "config", "user.name", "GhostReview test")
    git(ws, "config", "user.email", "test@ghostreview.invalid")
    write_plots(*review(2, 0.3), ws / "reports", metrics=REGISTRY)  # CSVs and the PNGs dvc.yaml lists
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "first review")
    result, scores, _ = review(3, -0.3)
    for stem, table in plot_data(result, scores, shown_metrics(result, REGISTRY)).items():
        table.to_csv(ws / "reports" / "plots" / f"{stem}.csv", index=False)
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "second review")
    proc = subprocess.run([sys.executable, "-m", "dvc", "plots", "diff", "HEAD~1", "HEAD", "-o", "out"], cwd=ws,
                          capture_output=True, text=True, env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stdout + proc.stderr
    page = ws / "out" / "index.html"
    assert page.as_uri() in proc.stdout
    return page


def test_plots_diff_page_has_no_network_script(plots_diff):
    html = plots_diff.read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in html and "<script src" not in html
    assert html.rsplit("</head>\n<body>", 1)[1].count("vegaEmbed('#") == len(CHARTS)  # DVC's plot divs


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian chromium at /usr/bin/chromium")
def test_plots_diff_renders_every_chart_offline_in_chromium(plots_diff):
    from playwright.sync_api import sync_playwright

    left: list[str] = []

    def guard(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:  # anything else would leave the machine
            left.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", guard)
            page.goto(plots_diff.as_uri())
            outcomes = page.evaluate("() => Promise.allSettled(window.ghostreviewPlots)"
                                     ".then(rs => rs.map(r => r.status + ' ' + (r.reason || '')))")
            charts = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.vega-embed')].map(el => {
                const texts = sel => [...el.querySelectorAll(sel)].map(t => t.textContent);
                const points = [...el.querySelectorAll('.mark-symbol.role-mark path')];
                return [texts('.role-title-text').at(-1), {
                    panels: texts('.role-title-text').slice(0, -1),
                    legend: texts('.role-legend-label text'),
                    points: points.length,
                    colours: new Set(points.map(p => p.getAttribute('fill'))).size,
                    boxes: el.querySelectorAll('.mark-rect.role-mark path').length,
                    rules: el.querySelectorAll('.mark-rule.role-mark line, .mark-rule.role-mark path').length,
                }];
            }))""")
            images = page.evaluate("() => [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])")

            # the guard works: a page asking the CDN for vega, as DVC's own page does, is caught
            probe = browser.new_page()
            probe.route("**/*", guard)
            probe.set_content('<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>')
        finally:
            browser.close()

    assert left == ["https://cdn.jsdelivr.net/npm/vega@5.20.2"]  # only the probe's request, none of the plots page
    assert errors == [] and outcomes == ["fulfilled "] * len(CHARTS), (errors, outcomes)
    assert set(charts) == set(CHARTS)
    revs = ["HEAD~1", "HEAD"]
    n_general = len(ITEMS["general"]) * (2 + 3)  # images of the two revisions, per model
    for name in ("Aesthetic distribution", "CLIPScore vs aesthetic"):  # one panel per revision, a colour per model
        chart = charts[name]
        assert chart["panels"] == revs and chart["legend"] == list(FAMILIES), (name, chart)
        assert chart["points"] == n_general * len(FAMILIES) and chart["colours"] == len(FAMILIES), (name, chart)
    assert charts["Aesthetic distribution"]["boxes"] >= 2 * len(FAMILIES) * len(revs)  # a box (2 halves) per model
    ranking = charts["Ranking (combined and per metric)"]
    tables = [pd.read_csv(io.StringIO(subprocess.run(["git", "show", f"{rev}:reports/plots/ranking.csv"],
                                                     cwd=plots_diff.parents[1], capture_output=True, text=True,
                                                     check=True).stdout)) for rev in revs]
    heading = dict(zip(tables[1]["metric"], tables[1]["heading"]))
    assert ranking["panels"][0] == heading["combined"]  # the combined score's panel first, then one per metric
    assert sorted(ranking["panels"]) == sorted(set(heading.values()))
    assert ranking["legend"] == revs and ranking["colours"] == len(revs)
    # a point per metric and model with a score, and its interval, in each revision
    assert ranking["points"] == sum(int(t["score"].notna().sum()) for t in tables)
    assert ranking["rules"] == sum(int((t["lo"].notna() & t["hi"].notna()).sum()) for t in tables)
    assert len(images) == 2 * 4 and all(width > 0 for _, width in images), images  # the report's PNGs, both revs
