"""The offline report in a real headless Chromium: DOM after the page's script ran, and a screenshot.

Needs Debian's chromium at /usr/bin/chromium (``apt-get install -y chromium``); skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_report import (  # tests/ is on sys.path (pytest's default rootdir import)
    ATTR_PROMPT,
    METRICS,
    SCRIPT_PROMPT,
    make_demo,
)

from ghostreview.analysis.report import write_report

CHROMIUM = Path("/usr/bin/chromium")
# CI sets GHOSTREVIEW_REQUIRE_BROWSER=1 so that a missing browser fails instead of silently skipping.
if os.environ.get("GHOSTREVIEW_REQUIRE_BROWSER") == "1" and not CHROMIUM.is_file():
    raise RuntimeError("GHOSTREVIEW_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing: apt-get install -y chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian chromium at /usr/bin/chromium "
                       "(apt-get install -y chromium)"),
]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list = field(default_factory=list)  # Node or str

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        """Elements with ``tag`` whose attributes contain ``attrs`` (class_ matches one class)."""
        def ok(n: Node) -> bool:
            for k, v in attrs.items():
                if k == "class_":
                    if v not in n.attrs.get("class", "").split():
                        return False
                elif n.attrs.get(k.replace("_", "-")) != v:
                    return False
            return True
        return [n for n in self.iter() if n.tag == tag and ok(n)]


class TreeBuilder(HTMLParser):
    """Minimal DOM from Chromium's serialized (well-formed) DOM; entity references are decoded in text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(dom: str) -> Node:
    builder = TreeBuilder()
    builder.feed(dom)
    return builder.root


def chromium(tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
           "--virtual-time-budget=5000", *extra, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def dump_dom(tmp: Path, page: Path, fragment: str = "") -> Node:
    return parse(chromium(tmp, page.as_uri() + fragment, "--dump-dom").stdout)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    result, scores, manifests, models, images_root = make_demo(root / "in")
    paths = write_report(result, scores, manifests, models, images_root, root / "reports", metrics=METRICS)
    return paths["index.html"], pd.read_csv(paths["leaderboard.csv"]), manifests, root


def grid_order(doc: Node, item: str) -> list[str]:
    (grid,) = doc.find_all("section", class_="grid", data_item=item)
    return [r.attrs["data-model"] for r in grid.find_all("div", class_="grid-row")]


def test_dom_after_scripts(site, tmp_path):
    page, board, manifests, _ = site
    plain = dump_dom(tmp_path, page)
    assert plain.find_all("body")[0].attrs.get("data-ready") == "1"  # the page's script ran
    # leaderboard rows, in rank order
    (table,) = plain.find_all("table", id="leaderboard")
    rows = [tr.attrs["data-model"] for tr in table.find_all("tr") if "data-model" in tr.attrs]
    assert rows == board["model"].tolist()
    (warning,) = plain.find_all("div", id="demo-warning")
    assert "DEMO / RANDOM WEIGHTS" in warning.text()
    # hostile prompts are text, not markup
    prompts = [d.text() for d in plain.find_all("div", class_="prompt")]
    assert SCRIPT_PROMPT in prompts and ATTR_PROMPT in prompts
    assert len(plain.find_all("script")) == 1
    assert not plain.find_all("img", src="x")
    assert not [n for n in plain.iter() if any(k.startswith("on") for k in n.attrs)]
    # all images are embedded
    assert all(img.attrs["src"].startswith("data:image/") for img in plain.find_all("img") if "src" in img.attrs)
    assert len(plain.find_all("img", alt="aesthetic_distribution")) == 1
    # default grid order is the leaderboard's
    assert grid_order(plain, "p1") == board["model"].tolist()


def test_sort_and_open_from_url_hash(site, tmp_path):
    page, board, manifests, _ = site
    target = manifests["beta"].query("item == 'p1' and seed == 1").iloc[0]
    doc = dump_dom(tmp_path, page, f"#sort=score&open={target['image_hash']}")
    assert doc.find_all("body")[0].attrs.get("data-sorted") == "score"
    expected = ["gamma", "beta", "alpha"]  # aesthetic on p1, best first (make_demo's AESTHETIC_P1)
    assert expected != board["model"].tolist()  # otherwise the check below proves nothing
    assert grid_order(doc, "p1") == expected
    (grid,) = doc.find_all("section", class_="grid", data_item="p1")
    assert [b.text() for b in grid.find_all("button", class_="active")] == ["Aesthetic"]
    assert grid_order(doc, "anime")[0] == lowest_style_loss(site)  # lower-is-better grid: smallest loss first
    (box,) = doc.find_all("div", id="lightbox")
    assert "open" in box.attrs.get("class", "").split() and box.attrs["data-hash"] == target["image_hash"]
    (img,) = box.find_all("img")
    assert img.attrs["src"].startswith("data:image/png;base64,")
    assert box.find_all("pre")[0].text() == target["infotext"]  # includes the <script> prompt, as text
    named = dump_dom(tmp_path, page, "#sort=name")
    assert grid_order(named, "p1") == sorted(board["model"])


def lowest_style_loss(site) -> str:
    """Model with the lowest mean raw StyleLoss on the one style item (from the CSV, not the page)."""
    scores = pd.read_csv(site[3] / "reports" / "plots" / "style_heatmap.csv")
    return scores.sort_values("mean")["model"].iloc[0]


def test_screenshot(site, tmp_path):
    page, *_ = site
    shot = tmp_path / "report.png"
    chromium(tmp_path, page.as_uri(), f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as im:
        assert im.size == (1280, 1600)
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.std() > 10  # something rendered
    top = rgb[:150]
    red = (top[..., 0] > 150) & (top[..., 1] < 40) & (top[..., 2] < 60)
    assert red.sum() > 10_000  # the red demo banner is visible at the top
