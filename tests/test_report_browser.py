"""The offline report in a real headless Chromium: DOM after the page's script ran, and a screenshot.

Needs Debian's chromium at /usr/bin/chromium (``apt-get install -y chromium``); skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
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
from ghostreview.analysis.report.targets import Targets

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


TITLES = {"alpha": "", "beta": "Beta Mix v5", "gamma": "Gamma XL"}
ODD_INFOTEXT = "an image saved elsewhere\nSteps: 30, Seed: 99, Model: x\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A report with an SDXL LoRA (X1, gamma's) beside the SD1.5 one (L1), titles, and targets: two reference images
    of the style, one header image per LoRA (sizes differ from the generated 48 px images, and the style's first
    reference is larger than a thumbnail)."""
    root = tmp_path_factory.mktemp("browser")
    result, scores, manifests, models, images_root = make_demo(root / "in", sdxl_lora=True, size=48)
    refs = root / "refs"
    refs.mkdir()
    files = {}
    for name, size, colour in (("style1.png", (600, 400), (200, 30, 30)), ("style2.jpg", (64, 64), (30, 200, 30)),
                               ("l1.png", (40, 60), (30, 30, 200)), ("x1.webp", (50, 50), (200, 200, 30))):
        Image.new("RGB", size, colour).save(refs / name)
        files[name] = refs / name
    targets = Targets({("style", "anime"): (files["style1.png"], files["style2.jpg"]),
                       ("lora", "L1"): (files["l1.png"],), ("lora", "X1"): (files["x1.webp"],)},
                      {"L1": "sd15", "X1": "sdxl"})
    odd = manifests["alpha"].index[(manifests["alpha"]["item"] == "p2") & (manifests["alpha"]["seed"] == 1)]
    manifests["alpha"].loc[odd, "infotext"] = ODD_INFOTEXT  # not rebuilt from its row and column: kept whole
    models = models.assign(title=models["model"].map(TITLES))
    paths = write_report(result, scores, manifests, models, images_root, root / "reports", metrics=METRICS,
                         targets=targets)
    return paths["index.html"], pd.read_csv(paths["leaderboard.csv"]), manifests, root, result


def grid_page(index: Path, section: str) -> Path:
    """The (one) grid page of ``section`` ("general", "style", "lora-sd15", ...) of the small fixture report."""
    (page,) = (index.parent / "pages").glob(f"task-{section}-*.html")
    return page


def every_page(index: Path) -> list[Path]:
    return sorted((index.parent / "pages").glob("*.html"))


def grid_order(doc: Node, item: str) -> list[str]:
    (grid,) = doc.find_all("section", class_="grid", data_item=item)
    heads = [th.attrs["data-model"] for th in grid.find_all("th", class_="col")]
    for row in grid.find_all("tr"):  # every seed row's cells follow the header's order
        cells = [td.attrs["data-model"] for td in row.find_all("td", class_="cell")]
        assert cells in ([], heads), (item, cells, heads)
    return heads


def local_or_embedded(src: str, page: Path) -> bool:
    return src.startswith("data:image/") or (src.startswith(("images/", "../images/"))
                                             and (page.parent / src).is_file())


def test_dom_after_scripts(site, tmp_path):
    page, board, manifests, *_ = site
    plain = dump_dom(tmp_path, page)
    assert plain.find_all("body")[0].attrs.get("data-ready") == "1"  # the page's script ran
    # leaderboard rows, in rank order
    (table,) = plain.find_all("table", id="leaderboard")
    rows = [tr.attrs["data-model"] for tr in table.find_all("tr") if "data-model" in tr.attrs]
    assert rows == board["model"].tolist()
    (warning,) = plain.find_all("div", id="demo-warning")
    assert "DEMO / RANDOM WEIGHTS" in warning.text()
    assert len(plain.find_all("img", alt="aesthetic_distribution")) == 1
    general = dump_dom(tmp_path, grid_page(page, "general"))
    assert general.find_all("body")[0].attrs.get("data-ready") == "1"
    (warning,) = general.find_all("div", id="demo-warning")  # on every page
    # hostile prompts are text, not markup
    prompts = [d.text() for d in general.find_all("div", class_="prompt")]
    assert SCRIPT_PROMPT in prompts and ATTR_PROMPT in prompts
    for doc, where in ((plain, page), (general, grid_page(page, "general"))):
        assert len(doc.find_all("script")) == 1
        assert not doc.find_all("img", src="x")
        assert not [n for n in doc.iter() if any(k.startswith("on") for k in n.attrs)]
        # every image is embedded (plots) or a file of the report's own images/
        srcs = [img.attrs["src"] for img in doc.find_all("img") if "src" in img.attrs]
        assert srcs and all(local_or_embedded(s, where) for s in srcs)
    # default grid order is the leaderboard's
    assert grid_order(general, "p1") == board["model"].tolist()


def test_sort_and_open_from_url_hash(site, tmp_path):
    page, board, manifests, *_ = site
    target = manifests["beta"].query("item == 'p1' and seed == 1").iloc[0]
    general = grid_page(page, "general")
    doc = dump_dom(tmp_path, general, f"#sort=score&open={target['image_hash']}")
    assert doc.find_all("body")[0].attrs.get("data-sorted") == "score"
    expected = ["gamma", "beta", "alpha"]  # aesthetic on p1, best first (make_demo's AESTHETIC_P1)
    assert expected != board["model"].tolist()  # otherwise the check below proves nothing
    assert grid_order(doc, "p1") == expected
    (grid,) = doc.find_all("section", class_="grid", data_item="p1")
    assert [b.text() for b in grid.find_all("button", class_="active")] == ["Aesthetic"]
    style = dump_dom(tmp_path, grid_page(page, "style"), "#sort=score")
    assert grid_order(style, "anime")[0] == lowest_style_loss(site)  # lower-is-better grid: smallest loss first
    (box,) = doc.find_all("div", id="lightbox")
    assert "open" in box.attrs.get("class", "").split() and box.attrs["data-hash"] == target["image_hash"]
    (img,) = box.find_all("img")
    assert img.attrs["src"] == f"../images/beta/{Path(target['image']).stem[:16]}.jpg"
    assert box.find_all("pre")[0].text() == target["infotext"]  # includes the <script> prompt, as text
    named = dump_dom(tmp_path, general, "#sort=name")
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


# ---------------------------------------------------------------------------------------------------------------
# In a live page (playwright driving the same chromium): layout, loading, clicks


@contextmanager
def live(page: Path, width: int = 1400, height: int = 900):
    """The page open in chromium at ``width`` x ``height``; the CSP reports and page errors seen are checked empty
    on exit, and no request may leave file://."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []

    def guard(route):
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            problems.append(f"request {route.request.url}")
            route.abort()

    def console(msg):
        if msg.type in ("error", "warning"):
            problems.append(f"console {msg.type}: {msg.text}")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": width, "height": height})
            tab.on("pageerror", lambda e: problems.append(f"error {e}"))
            tab.on("console", console)
            tab.route("**/*", guard)
            tab.goto(page.as_uri())
            tab.wait_for_selector("body[data-ready='1']")
            yield tab
        finally:
            browser.close()
    assert problems == []


def scroll_through(tab) -> None:
    """Scroll the page (and every grid sideways) to the end in viewport steps, so that every lazy image loads."""
    tab.evaluate("""async () => {
        const pause = () => new Promise(r => setTimeout(r, 30));
        for (let y = 0; y < document.body.scrollHeight; y += window.innerHeight / 2) {
            window.scrollTo(0, y); await pause();
        }
        for (const w of document.querySelectorAll('.xy-wrap')) {
            w.scrollIntoView(); w.scrollLeft = w.scrollWidth; await pause();
        }
    }""")
    tab.wait_for_function("() => [...document.images].every(i => i.complete)")


def broken_images(tab) -> list[str]:
    """The src of every image with a source that did not load (the closed viewer's image has none)."""
    return tab.evaluate("() => [...document.images].filter(i => i.hasAttribute('src'))"
                        ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'))")


def test_leaderboard_fits_1400_px_with_direction_marks_titles_and_raw_columns(site):
    page, board, *_ = site
    with live(page) as tab:
        widths = tab.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        heads = tab.evaluate("""() => [...document.querySelectorAll('#leaderboard thead th')].map(th => {
            const r = th.getBoundingClientRect();
            return [th.innerText.replace(/\\s+/g, ' ').trim(), r.left, r.right]; })""")
        titles = tab.evaluate("() => [...document.querySelectorAll('#leaderboard tbody td.who b')]"
                              ".map(b => b.innerText)")
        raw = tab.evaluate("() => [...document.querySelectorAll('#leaderboard tbody tr')].map(tr => "
                           "[...tr.querySelectorAll('.raw')].map(s => s.innerText))")
    assert widths[0] <= widths[1] == 1400  # no sideways scrolling
    assert all(left >= 0 and right <= 1400 for _, left, right in heads)  # every column visible, raw ones included
    texts = [t for t, *_ in heads]
    assert texts[:6] == ["#", "Model", "Combined ↑", "Aesthetic ↑", "CLIPScore ↑", "StyleLoss ↓"]
    assert texts[6:8] == ["LoRALoss ↓ not in Combined", "LoRALoss NoTM ↓ not in Combined"]  # gamma has no LoRA loss
    assert texts[8].startswith("Raw aesthetic mean") and texts[-1] == "Flagged images"
    assert titles == [TITLES[m] or m for m in board["model"]]
    expected = [[f"raw {board.loc[i, f'{m}_mean']:.3f}" if pd.notna(board.loc[i, f"{m}_mean"]) else "raw —"
                 for m in ("aesthetic", "clipscore", "styleloss", "loraloss") if f"{m}_mean" in board]
                for i in board.index]
    assert raw == expected and len(raw[0]) >= 1


def test_pairwise_matrix_shows_every_pair(site):
    page, board, _, _, result = site
    with live(page) as tab:
        cells = tab.evaluate("""() => [...document.querySelectorAll('#pairwise-combined td[data-p]')].map(td =>
            [td.dataset.a, td.dataset.b, td.innerText, td.getBoundingClientRect().width > 0])""")
        rows = tab.evaluate("() => [...document.querySelectorAll('#pairwise-combined th.row')].map(t => t.innerText)")
    p = result.pairwise[result.pairwise["metric"] == "combined"].set_index(["model_a", "model_b"])["p_a_beats_b"]
    assert rows == [f"{i + 1}. {TITLES[m] or m}" for i, m in enumerate(board["model"])]
    assert len(cells) == 6 and all(visible for *_, visible in cells)
    for a, b, text, _ in cells:
        assert text == str(round(100 * p[(a, b)]))
        assert int(text) + round(100 * p[(b, a)]) in (99, 100, 101)  # A beats B + B beats A: every resample, ±rounding


# Per grid of a live page: the section heading above it, columns, seed rows, image positions, targets, lazy loading
LAYOUT = """() => Object.fromEntries([...document.querySelectorAll('section.grid')].map(g => {
    let h = g.previousElementSibling;
    while (h && h.tagName !== 'H2') { h = h.previousElementSibling; }
    const rows = [...g.querySelectorAll('tbody tr')].map(tr => [...tr.querySelectorAll('td.cell img')]
        .map(i => Math.round(i.getBoundingClientRect().top)));
    const first = [...g.querySelectorAll('tbody tr:first-child td.cell img')]
        .map(i => Math.round(i.getBoundingClientRect().left));
    return [g.dataset.item, {section: h.id, cols: [...g.querySelectorAll('th.col')].map(t => t.dataset.model),
        seeds: [...g.querySelectorAll('tbody tr')].map(tr => tr.dataset.seed), rows, first,
        targets: [...g.querySelectorAll('td.targets img')].map(i => [i.naturalWidth, i.loading]),
        lazy: [...g.querySelectorAll('td.cell img')].every(i => i.loading === 'lazy')}];
}))"""


def test_grids_are_xy_plots_with_targets_and_lora_families_apart(site):
    page, board, manifests, *_ = site
    order = board["model"].tolist()
    layout, page_width = {}, []
    for grids in every_page(page):
        with live(grids) as tab:
            scroll_through(tab)
            assert broken_images(tab) == []
            layout.update(tab.evaluate(LAYOUT))
            page_width.append(tab.evaluate("() => document.documentElement.scrollWidth"))
    assert max(page_width) <= 1400
    assert sorted(layout) == sorted(["p1", "p2", "anime", "L1", "X1"])
    assert [p.name for p in every_page(page)] == ["task-general-1.html", "task-lora-sd15-1.html",
                                                  "task-lora-sdxl-1.html", "task-style-1.html"]
    for item in ("p1", "p2", "anime"):
        g = layout[item]
        assert g["cols"] == order and g["seeds"] == ["0", "1"] and g["lazy"]
        assert all(len(set(tops)) == 1 and len(tops) == 3 for tops in g["rows"])  # one row: the models side by side
        assert g["first"] == sorted(g["first"]) and len(set(g["first"])) == 3
    assert layout["anime"]["section"] == "task-style"
    assert layout["anime"]["targets"] == [[320, "lazy"], [64, "lazy"]]  # the large reference: a thumbnail
    assert layout["p1"]["targets"] == []
    assert layout["L1"]["section"] == "task-lora-sd15" and layout["L1"]["cols"] == [m for m in order if m != "gamma"]
    assert layout["X1"]["section"] == "task-lora-sdxl" and layout["X1"]["cols"] == ["gamma"]
    assert layout["L1"]["targets"] == [[40, "lazy"]] and layout["X1"]["targets"] == [[50, "lazy"]]


def test_click_opens_the_full_image_and_sort_buttons_move_columns(site):
    page, board, manifests, *_ = site
    with live(grid_page(page, "general")) as tab:
        first = tab.locator("section.grid[data-item='p2'] td.cell[data-model='beta'] a.shot").first
        href = first.get_attribute("href")
        first.scroll_into_view_if_needed()
        first.click()
        box = tab.evaluate("""() => { const b = document.getElementById('lightbox'), i = b.querySelector('img');
            return [b.classList.contains('open'), i.getAttribute('src'), i.complete && i.naturalWidth,
                    b.querySelector('.caption').textContent, b.querySelector('pre').textContent]; }""")
        tab.wait_for_function("() => document.querySelector('#lightbox img').naturalWidth > 0")
        natural = tab.evaluate("() => document.querySelector('#lightbox img').naturalWidth")
        tab.locator("#lightbox").click()
        closed = tab.evaluate("() => !document.getElementById('lightbox').classList.contains('open')")
        tab.locator("section.grid[data-item='p2'] tr[data-seed='1'] td.cell[data-model='alpha'] a.shot").click()
        odd = tab.evaluate("() => document.querySelector('#lightbox pre').textContent")
        tab.locator("#lightbox").click()
        tab.locator("section.grid[data-item='p1'] .sorter button[data-sort='aesthetic']").click()
        p1 = tab.evaluate("""() => { const g = document.querySelector("section.grid[data-item='p1']");
            return [[...g.querySelectorAll('th.col')].map(t => t.dataset.model),
                    [...g.querySelectorAll('tbody tr')].map(tr => [...tr.querySelectorAll('td.cell')]
                        .map(td => td.dataset.model))]; }""")
        p2 = tab.evaluate("() => [...document.querySelectorAll(\"section.grid[data-item='p2'] th.col\")]"
                          ".map(t => t.dataset.model)")
    row = manifests["beta"].query("item == 'p2'").sort_values("seed").iloc[0]
    assert href == f"../images/beta/{Path(row['image']).stem[:16]}.jpg"
    assert box[0] and box[1] == href and box[3] == "beta · general p2 · seed 0" and box[4] == row["infotext"]
    assert natural == 48 and closed and odd == ODD_INFOTEXT
    assert p1[0] == ["gamma", "beta", "alpha"] and p1[1] == [p1[0], p1[0]]  # every seed row follows its header
    assert p2 == board["model"].tolist()  # the other grids keep their order


def test_a_split_item_is_walked_part_to_part_with_lazy_thumbnails_of_fixed_size(tmp_path):
    """A report at max_cells=3 cuts each 3-model x 2-seed item into one part per seed. Part 1's "next" link opens
    part 2's page at its grid; there every thumbnail is lazy and laid out at its final size before it loads (width
    and height set: nothing moves as images arrive), all load, and a click shows that part's seed."""
    from ghostreview.analysis.report.html import write_html

    result, scores, manifests, models, images_root = make_demo(tmp_path / "in", size=48)
    index = write_html(result, scores, manifests, models, images_root, tmp_path / "out", metrics=METRICS,
                       plot_pngs={}, max_cells=3)
    boxes = """() => [...document.querySelectorAll('section.grid[data-item="p1"] td.cell img')].map(i => {
        const r = i.getBoundingClientRect();
        return [i.loading, i.getAttribute('width'), i.getAttribute('height'), r.width, r.height]; })"""
    with live(index.parent / "pages" / "task-general-1.html") as tab:
        tab.locator("section.grid[data-item='p1'] a[rel='next']").click()
        tab.wait_for_selector("body[data-ready='1']")
        where = tab.evaluate("""() => [location.pathname.split('/').pop(), location.hash,
            [...document.querySelectorAll('section.grid[data-item="p1"] tr[data-seed]')].map(t => t.dataset.seed)]""")
        before = tab.evaluate(boxes)
        scroll_through(tab)
        after, broken = tab.evaluate(boxes), broken_images(tab)
        tab.locator("section.grid[data-item='p1'] td.cell[data-model='beta'] a.shot").click()
        caption = tab.evaluate("() => document.querySelector('#lightbox .caption').textContent")
    assert where == ["task-general-2.html", "#grid-general-p1-part-2", ["1"]]
    # laid out square (the CSS scales thumbnails; width/height give the aspect) before any image arrived
    assert len(before) == 3 and all(b[:3] == ["lazy", "48", "48"] and b[3] == b[4] > 48 for b in before)
    assert after == before and broken == []
    assert caption == "beta · general p1 · seed 1"


def test_a_part_link_carries_the_sort_of_the_part_it_leaves(tmp_path):
    """Sorting part 1 of a split item by aesthetic (p1: gamma > beta > alpha, against the leaderboard's order) and
    following "next" opens part 2 sorted the same way, its grid's id in the address (``at=``)."""
    from ghostreview.analysis.report.html import write_html

    result, scores, manifests, models, images_root = make_demo(tmp_path / "in")
    index = write_html(result, scores, manifests, models, images_root, tmp_path / "out", metrics=METRICS,
                       plot_pngs={}, max_cells=3)
    heads = "() => [...document.querySelectorAll(\"section.grid[data-item='p1'] th.col\")].map(t => t.dataset.model)"
    with live(index.parent / "pages" / "task-general-1.html") as tab:
        unsorted = tab.evaluate(heads)
        tab.locator("section.grid[data-item='p1'] .sorter button[data-sort='aesthetic']").click()
        tab.locator("section.grid[data-item='p1'] a[rel='next']").click()
        tab.wait_for_selector("body[data-ready='1']")
        arrived = tab.evaluate("() => [location.pathname.split('/').pop(), location.hash, "
                               "document.body.dataset.sorted]")
        order = tab.evaluate(heads)
    assert unsorted != ["gamma", "beta", "alpha"]
    assert arrived == ["task-general-2.html", "#sort=aesthetic&at=grid-general-p1-part-2", "aesthetic"]
    assert order == ["gamma", "beta", "alpha"]


def test_the_judge_agreement_matrix_is_visible_within_the_page_in_the_judges_labels(site):
    page, board, _, _, result = site
    with live(page) as tab:
        tab.locator("nav a[href='#agreement']").click()
        cells = tab.evaluate("""() => [...document.querySelectorAll('#agreement-tau td[data-a]')].map(td => {
            const r = td.getBoundingClientRect();
            return [td.dataset.a, td.dataset.b, td.innerText, r.width > 0 && r.right <= 1400]; })""")
        heads = tab.evaluate("() => [...document.querySelectorAll('#agreement-tau thead th')].map(t => t.innerText)")
        ranks = tab.evaluate("() => [...document.querySelectorAll('#judge-ranks tbody tr')].map(tr => "
                             "tr.dataset.model)")
        in_view = tab.evaluate("() => document.querySelector('#agreement').getBoundingClientRect().top")
    judges = result.meta["agreement_judges"]
    assert heads[1:] == [METRICS[j].label for j in judges]
    assert len(cells) == len(judges) * (len(judges) - 1) and all(visible for *_, visible in cells)
    tau = result.agreement.set_index(["judge_a", "judge_b"])["kendall_tau"]
    for a, b, text, _ in cells:
        assert text.splitlines()[0] == f"{tau.get((a, b), tau.get((b, a))):.2f}" and text.endswith(" models")
    assert ranks == board["model"].tolist() and abs(in_view) < 5  # the nav link scrolls to the section
