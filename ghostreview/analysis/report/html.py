"""The offline HTML report: ``index.html`` (leaderboard, pairwise "A beats B" matrices, the judges' agreement, plots,
flags and a table of contents of the grids) and ``pages/`` (the X/Y grids of every benchmark item, a few items per
page).

Files: ``<out_dir>/index.html``, ``<out_dir>/pages/<section>-<k>.html`` and ``<out_dir>/images/`` (JPEG renditions
of every image the pages link to, made by ``renditions.Gallery``: reused across runs from a rendition cache; see
that module). ``pages/`` and ``images/`` are swapped in whole, then ``index.html`` is replaced: all are outputs of
the report stage, so ``dvc push report`` / ``dvc pull report`` carry the whole report, while the original PNGs stay
in the images directory. CSS, JS and the plots are inline in each page.

Pages: one section per task (LoRAs one per family of the LoRA tables), cut into pages holding at most ``max_cells``
images, each page written as it is composed (one grid's HTML at a time, never the whole report), its renditions made
right after it. An item with more images than that (at 500 models a general item has 16,000) is split into parts of
whole seed rows (of model columns too when one row alone is too many), each part on a page of its own, linked to the
others; an item that fits stays one grid. Memory grows with the number of images only by the manifests the caller
passes in and one entry per published file.

A grid is an A1111 X/Y plot of one benchmark item: one column per model (leaderboard order, sortable by each
metric's item score), one row per seed, and the item's targets (style references, LoRA header images) in the first
column. Thumbnails load lazily; a click opens the full image with its infotext (the thumbnail is also a plain link
to the full image). LoRA items get one section per family of the LoRA tables, each with the models of that family.

A Content-Security-Policy allows only local images and the page's own inline script and style (by hash), so even a
text that escaped ``html.escape`` could neither run nor fetch anything. Every text coming from prompts, parameters,
file or model names goes through ``html.escape``; the script touches text only via ``textContent``.

URL hash parameters honoured by every page: ``#sort=score`` (each grid by its primary metric, best first),
``#sort=<metric>``, ``#sort=name``, ``#sort=default`` (leaderboard order), ``open=<image_hash>`` (opens that image in
the viewer, as a click does, on the page that holds it), ``at=<element id>`` (scrolls to it: a split item's part
links carry the sort of the part they leave, ``#sort=<key>&at=<grid id>``); combine with ``&``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from ghostreview.analysis.report import agreement
from ghostreview.analysis.report.arena import ArenaTables, arena_html
from ghostreview.analysis.report.display import Shown, losses, shown_metrics
from ghostreview.analysis.report.inputs import (
    INFO_HEAD,
    INFO_SETTINGS,
    REPORT_COLUMNS,
    SEED_MARK,
    infotext_of,
    joined,
    split_infotext,
)
from ghostreview.analysis.report.plots import render
from ghostreview.analysis.report.renditions import (
    IMAGES,
    Gallery,
    Shot,
    clean_staging,
    rendering_pool,
    url,
)
from ghostreview.analysis.report.stability import stability_html
from ghostreview.analysis.report.tables import (
    benchmark_line,
    board_records,
    demo_warning,
    flagged_images,
    fmt,
    fmt_rank,
    interval_note,
    leaderboard_frame,
    lora_problems,
    protocol_line,
    protocols_of,
)
from ghostreview.analysis.report.targets import Targets
from ghostreview.analysis.standardize import COMBINED, Standardized, flag_mask, parse_flags
from ghostreview.scoring.metric import MetricInfo
from ghostreview.util.atomic import replace_dir, write_atomic
from ghostreview.util.rendition import THUMB_PX

STATIC = Path(__file__).parent / "static"
TASK_TITLES = {"general": "General prompt", "style": "Style", "lora": "LoRA"}
FAMILY_TITLES = {"sd15": "SD1.5", "sdxl": "SDXL", "flux": "Flux.1"}  # section titles; any other: its name
PAGES = "pages"  # <out_dir>/pages: the grid pages
# Generated images per grid page (a larger item is split into parts; targets come on top). Measured at 500 models in
# chromium (benchmarks/RESULTS.md section 11b): the longest frame gap scrolling a page of 4,000 images was 350 ms,
# of 2,000 168 ms (16,000: 1,295 ms)
MAX_CELLS = 2000
TOP_PAIRWISE = 40  # models in each pairwise matrix of the index (the best by combined rank)
INCOMPATIBLE = "lora_incompatible"  # the manifest flag of a LoRA drawn by a model of another family


def esc(value: object) -> str:
    """HTML-escape any value (quotes too, so the result is safe inside attribute values)."""
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(raw: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def check_manifests(manifests: Mapping[str, pd.DataFrame]) -> None:
    """Every manifest has the columns the page shows; the error names the model and the missing columns."""
    for model, m in manifests.items():
        have = set(m.columns) | ({"infotext"} if {INFO_HEAD, INFO_SETTINGS} <= set(m.columns) else set())
        missing = [c for c in REPORT_COLUMNS if c not in have]
        if missing:
            raise ValueError(f"manifest of model {model!r} lacks columns {missing}; it has {list(m.columns)}")


def item_scores(result: Standardized) -> pd.DataFrame:
    """Mean z per (model, task, item, metric) over usable images: the per-item score shown and sorted on."""
    ok = result.images[result.images["status"] == "ok"]
    return ok.groupby(["model", "task", "item", "metric"])["z"].mean().rename("z").reset_index()


def task_metrics(result: Standardized) -> dict[str, list[str]]:
    """task -> metrics standardized over it, in registry order (the first is the grid's primary sort key)."""
    out: dict[str, list[str]] = {}
    for metric, task in result.meta.get("metric_tasks", {}).items():
        out.setdefault(task, []).append(metric)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Leaderboard and pairwise matrices


def warning_html(board: pd.DataFrame) -> str:
    w = demo_warning(board)
    return f'<div id="demo-warning" class="demo-warning" role="alert">⚠ {esc(w)}</div>' if w else ""


def combined_over(meta: dict) -> list[str] | None:
    """The metrics the combined score averages when standardize recorded them (``meta["combined_over"]``)."""
    over = meta.get("combined_over")
    return None if over is None else [str(m) for m in over]


def metric_th(s: Shown, over: list[str] | None, combined: Shown) -> str:
    """A metric's column header: label and direction mark; marked when the combined rank leaves it out."""
    if over is None or s.name == COMBINED or s.name in over:
        return f'<th data-metric="{esc(s.name)}">{esc(s.heading)}</th>'
    return (f'<th data-metric="{esc(s.name)}" class="not-combined" title="not part of the combined rank">'
            f'{esc(s.heading)}<br><span class="nc">not in {esc(combined.label)}</span></th>')


def leaderboard_html(board: pd.DataFrame, shown: Mapping[str, Shown], metrics: list[str], raw: str,
                     over: list[str] | None) -> str:
    """The sortable leaderboard table: one ``tr[data-model]`` per model; each cell's ``data-v`` is its sort value.
    Columns: rank, model (title, key, family, AutoV2), combined, then ``metrics`` (names of ``shown``; each cell
    with its interval, rank interval and, where the board has a ``<metric>_mean`` column, the raw mean), then the raw
    metric ``raw``'s mean ± std, good rate, flagged images."""
    heads = ["<th>#</th>", "<th>Model</th>"]
    heads += [metric_th(shown[m], over, shown[COMBINED]) for m in [COMBINED] + metrics]
    heads += [f"<th>Raw {esc(raw)} mean ± std</th>", "<th>Good rate</th>", "<th>Flagged images</th>"]
    out = [f'<table id="leaderboard"><thead><tr>{"".join(heads)}</tr></thead><tbody>']
    for r in board_records(board):
        model = str(r["model"])
        cells = [num_td(r["rank"], fmt_rank(r["rank"])), model_td(r)]
        cells += [score_td(r, m) for m in [COMBINED] + metrics]
        cells.append(num_td(r[f"{raw}_mean"], f"{fmt(r[f'{raw}_mean'])} ± {fmt(r[f'{raw}_std'])}"))
        cells.append(num_td(r[f"{raw}_good_rate"], fmt(r[f"{raw}_good_rate"])))
        cells.append(num_td(r["n_flagged_images"], str(r["n_flagged_images"])))
        out.append(f'<tr data-model="{esc(model)}">' + "".join(cells) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def model_td(r: Mapping[str, object]) -> str:
    """The model's title (its key when it has none), then key, family and AutoV2 in small print; sorts by key."""
    title = str(r["title"] or r["model"])
    detail = " · ".join(esc(r[k]) for k in ("model", "family", "autov2") if r[k])
    return (f'<td class="who" data-v="{esc(r["model"])}"><b class="title">{esc(title)}</b><br>'
            f'<span class="key">{detail}</span></td>')


def num_td(value: object, text: str) -> str:
    v = "" if value is None else value
    return f'<td class="num" data-v="{esc(v)}">{esc(text)}</td>'


def score_td(r: Mapping[str, object], m: str) -> str:
    """Score, then its interval, its rank with the rank interval, and the raw mean (registered metrics)."""
    v = "" if r[m] is None else r[m]
    lines = [f"[{fmt(r[f'{m}_lo'])}, {fmt(r[f'{m}_hi'])}]",
             f"#{fmt_rank(r[f'{m}_rank'])} ({fmt_rank(r[f'{m}_rank_lo'])}–{fmt_rank(r[f'{m}_rank_hi'])})"]
    extra = "".join(f'<span class="ci">{esc(t)}</span>' for t in lines)
    if f"{m}_mean" in r:  # a registered metric: its raw mean ("—" when the model has no usable value)
        extra += f'<span class="raw">raw {esc(fmt(r[f"{m}_mean"]))}</span>'
    return f'<td class="num" data-v="{esc(v)}"><span class="score">{esc(fmt(r[m]))}</span>{extra}</td>'


def p_class(p: float) -> str:
    """A colour class for a probability, one per tenth (p0 ... p10)."""
    return f"p{int(round(10 * p))}"


def pairwise_table(result: Standardized, s: Shown, order: list[str], names: Mapping[str, str]) -> str:
    """P(row model beats column model) on metric ``s``, models in ``order``; columns are numbered as the rows."""
    rows = result.pairwise[result.pairwise["metric"] == s.name]
    p = rows.set_index(["model_a", "model_b"])["p_a_beats_b"].to_dict()
    head = "".join(f'<th title="{esc(names[b])}">{j + 1}</th>' for j, b in enumerate(order))
    body = []
    for i, a in enumerate(order):
        cells = []
        for b in order:
            value = p.get((a, b), np.nan)
            if a == b or pd.isna(value):
                cells.append('<td class="na">·</td>' if a == b else '<td class="na">—</td>')
            else:
                cells.append(f'<td class="{p_class(float(value))}" data-a="{esc(a)}" data-b="{esc(b)}" '
                             f'data-p="{float(value)!r}">{round(100 * float(value))}</td>')
        body.append(f'<tr><th class="row">{i + 1}. {esc(names[a])}</th>{"".join(cells)}</tr>')
    return (f'<table class="pairwise" id="pairwise-{esc(s.name)}"><thead><tr><th>A \\ B</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def pairwise_html(result: Standardized, shown: Mapping[str, Shown], order: list[str],
                  names: Mapping[str, str]) -> str:
    """The combined matrix open, one folded matrix per other metric."""
    top = order[:TOP_PAIRWISE]
    parts = []
    for m in [COMBINED] + [m for m in shown if m != COMBINED]:
        if not (result.pairwise["metric"] == m).any():
            continue
        is_open = " open" if m == COMBINED else ""
        parts.append(f"<details{is_open}><summary>{esc(shown[m].heading)}</summary>"
                     f"{pairwise_table(result, shown[m], top, names)}</details>")
    note = (f"Percent of the {result.meta.get('n_boot')} bootstrap resamples in which the row's model scores better "
            "than the column's (the columns are numbered as the rows).")
    if len(order) > len(top):  # 500 x 500 cells per metric would be neither readable nor light
        note += (f" Shown: the {len(top)} best of {len(order)} models by leaderboard order; every pair is in the "
                 "standardize stage's pairwise table.")
    return f'<p class="note">{esc(note)}</p>' + "\n".join(parts)


def tau_lines(r: Mapping[str, object]) -> list[str]:
    """A tau cell's lines: tau, its interval, the models both judges rank (narrow columns for many judges)."""
    return [fmt(r["kendall_tau"], 2), f"[{fmt(r['tau_lo'], 2)}, {fmt(r['tau_hi'], 2)}]", f"{r['n_models']} models"]


def rho_lines(r: Mapping[str, object]) -> list[str]:
    """A rho cell's lines: rho and the images both judges score, or that they share none."""
    return [fmt(r["spearman"], 2), f"{r['n_images']} images"] if r["n_images"] else ["no shared image"]


def judge_matrix(table_id: str, result: Standardized, shown: Mapping[str, Shown], value: str,
                 lines: Callable[[Mapping[str, object]], list[str]]) -> str:
    """A judge x judge matrix of the agreement's ``value`` (coloured like the pairwise matrices, -1 to 1), each cell
    the ``lines`` of its pair."""
    names, cells = agreement.judges(result), agreement.pair_cells(result)
    head = "".join(f"<th>{esc(shown[n].label)}</th>" for n in names)
    body = []
    for a in names:
        tds = ['<td class="p10">1</td>' if a == b else
               f'<td class="{agreement.colour(cells[(a, b)][value])}" data-a="{esc(a)}" data-b="{esc(b)}">'
               f"{'<br>'.join(esc(t) for t in lines(cells[(a, b)]))}</td>" for b in names]
        body.append(f'<tr><th class="row">{esc(shown[a].label)}</th>{"".join(tds)}</tr>')
    return (f'<table class="pairwise" id="{esc(table_id)}"><thead><tr><th></th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def judge_ranks_html(result: Standardized, shown: Mapping[str, Shown], order: list[str],
                     names: Mapping[str, str]) -> str:
    """Each model's best and worst rank over the judges (``tr.stable`` where they are equal), leaderboard order."""
    rows = []
    for r in agreement.rank_records(result, order):
        best_by, worst_by = agreement.moved(r, shown)
        stable = ' class="stable"' if r["best_rank"] == r["worst_rank"] else ""
        cells = [names[str(r["model"])], fmt_rank(r["best_rank"]), fmt_rank(r["worst_rank"]), best_by, worst_by]
        rows.append(f'<tr data-model="{esc(r["model"])}"{stable}>' + "".join(f"<td>{esc(c)}</td>" for c in cells)
                    + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Model", "Best rank", "Worst rank", "Best by", "Worst by"))
    return f'<table id="judge-ranks"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def agreement_html(result: Standardized, shown: Mapping[str, Shown], order: list[str],
                   names: Mapping[str, str]) -> str:
    """The "Judge agreement" section's body: what it shows, the tau and rho matrices and the ranks; or why not."""
    reason = agreement.absent(result, shown)
    if reason is not None:
        return f'<p class="note" id="agreement-absent">{esc(reason)}</p>'
    return (f'<p class="note">{esc(agreement.note(result))}</p>'
            f"<h3>Kendall's tau between the judges' rankings</h3>"
            f"{judge_matrix('agreement-tau', result, shown, 'kendall_tau', tau_lines)}"
            f"<h3>Spearman's rho between the judges' image z-scores</h3>"
            f"{judge_matrix('agreement-rho', result, shown, 'spearman', rho_lines)}"
            f"<h3>Rank over the judges</h3>{judge_ranks_html(result, shown, order, names)}")


def plots_html(pngs: Mapping[str, bytes]) -> str:
    figs = [f'<figure><img alt="{esc(stem)}" src="{data_uri(png, "image/png")}"><figcaption>{esc(stem)}'
            "</figcaption></figure>" for stem, png in pngs.items()]
    return '<div class="plots">' + "\n".join(figs) + "</div>"


def frame_html(table: pd.DataFrame, table_id: str) -> str:
    """A plain escaped table, or "None." when empty."""
    if table.empty:
        return f'<p id="{esc(table_id)}">None.</p>'
    head = "".join(f"<th>{esc(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>"
                   for row in table.astype(object).values.tolist())
    return f'<table id="{esc(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------------------------------------------------------
# X/Y grids


def shot_html(shot: Shot, alt: str, up: str = "") -> str:
    """A lazily loaded thumbnail linking to its full image (the script opens the viewer instead). up: the path from
    the page to the report's root ("../" on a grid page)."""
    return (f'<a class="shot" href="{esc(up + shot.full)}"><img loading="lazy" decoding="async" alt="{esc(alt)}" '
            f'src="{esc(up + shot.thumb)}" width="{shot.width}" height="{shot.height}"></a>')


def regular_file(path: Path) -> os.stat_result | None:
    """``path``'s stat when it is a regular file, else None (one system call: a report stats every image)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def image_figure(row: Mapping[str, object], model: str, images_root: Path, gallery: Gallery, info_attr: str,
                 up: str = "") -> str:
    """One generated image: thumbnail (click: full image and infotext in the viewer) and its flags.

    info_attr: `` data-info="..."`` when the infotext differs from the one its row and column give (``Infotexts``),
    else ""; the caption and the full image's URL come from the cell, the row and the link (kept out of the page's
    bytes: a full review has tens of thousands of images)."""
    path = Path(f"{images_root}/{model}/{row['image']}")
    flags = sorted(parse_flags(row["flags"]))
    chips = "".join(f'<span class="flag">{esc(f)}</span>' for f in flags)
    st = regular_file(path) if row["image"] else None
    if st is not None:
        shot = gallery.add_image(path, model, str(row["image_hash"]), st, row.get("width"), row.get("height"))
        body = shot_html(shot, f"seed {row['seed']}", up)
    else:
        body = f'<div class="missing">no image: {esc(", ".join(flags) or row["image"])}</div>'
    return (f'<figure class="thumb" data-hash="{esc(row["image_hash"])}"{info_attr}>{body}'
            + (f"<figcaption>{chips}</figcaption>" if chips else "") + "</figure>")


@dataclass(frozen=True)
class Infotexts:
    """A grid's infotexts, factored: the prompt lines of each row (seed) and a settings template of each column
    (model) with the seed marked; a figure carries its own infotext only where those do not rebuild it exactly.
    The page's script rebuilds ``head + "\\n" + template`` (seed filled in) the same way."""

    heads: Mapping[str, str]  # seed -> the prompt lines most images of that row have
    templates: Mapping[str, str]  # model -> its settings line with SEED_MARK for the seed

    @classmethod
    def of(cls, by_cell: Mapping[tuple[str, str], Mapping[str, object]]) -> Infotexts:
        heads: dict[str, list[str]] = {}
        tails: dict[str, list[str]] = {}
        for (model, seed), r in by_cell.items():
            head, tail = split_infotext(infotext_of(r))
            heads.setdefault(seed, []).append(head)
            tails.setdefault(model, []).append(tail.replace(f"Seed: {seed}", f"Seed: {SEED_MARK}", 1))

        def common(values: list[str]) -> str:  # the most common; a tie goes to the one met first
            return Counter(values).most_common(1)[0][0]

        return cls({seed: common(h) for seed, h in heads.items()}, {m: common(t) for m, t in tails.items()})

    def rebuilt(self, model: str, seed: str) -> str:
        return joined(self.heads.get(seed, ""), self.templates.get(model, "").replace(SEED_MARK, seed, 1))

    def attr(self, r: Mapping[str, object], model: str, seed: str) -> str:
        text = infotext_of(r)
        return "" if self.rebuilt(model, seed) == text else f' data-info="{esc(text)}"'


def targets_cell(files: Sequence[Path], task: str, item: str, gallery: Gallery, n_rows: int, up: str = "") -> str:
    """The first column of a grid: the item's target images, spanning all seed rows."""
    figs = []
    for f in files:
        shot = gallery.add_target(f)
        caption = f"target of {task} {item}: {f.name}"
        figs.append(f'<figure class="thumb target" data-caption="{esc(caption)}" data-info="">'
                    f"{shot_html(shot, caption, up)}</figure>")
    return f'<td class="targets" rowspan="{n_rows}">{"".join(figs)}</td>'


def seed_order(seeds: pd.Series) -> list[str]:
    """Distinct seeds (as text), numerically ascending: manifests read as text have "10" after "2"."""
    distinct = pd.Series(list(dict.fromkeys(seeds.astype(str))))
    return distinct.iloc[np.lexsort([distinct.to_numpy(), pd.to_numeric(distinct, errors="coerce").to_numpy()])
                         ].tolist()


def column_th(model: str, title: str, rank: int, zs: Mapping[str, float], metrics: Sequence[Shown],
              info_template: str = "") -> str:
    """A model's column header; ``data-m-<metric>`` holds the oriented item score, ``data-score`` the primary (the
    first of ``metrics``), ``data-default`` the leaderboard order, ``data-it`` the column's infotext template."""
    oriented = {s.name: zs.get(s.name, np.nan) * (1 if s.higher_is_better else -1) for s in metrics}
    attrs = "".join(f' data-m-{esc(m)}="{"" if np.isnan(v) else repr(float(v))}"' for m, v in oriented.items())
    primary = oriented[metrics[0].name] if metrics else np.nan
    attrs += f' data-score="{"" if np.isnan(primary) else repr(float(primary))}" data-default="{-rank}"'
    text = " · ".join(f"{s.label} {fmt(zs.get(s.name, np.nan), 2)}" for s in metrics)
    key = f'<br><span class="key">{esc(model)}</span>' if title and title != model else ""
    attrs += f' data-it="{esc(info_template)}"'
    return (f'<th class="col" data-model="{esc(model)}"{attrs}><b>{esc(title or model)}</b>{key}<br>'
            f'<span class="item-score">{esc(text)}</span></th>')


def grid_anchor(task: str, item: str, part: int = 1) -> str:
    """A grid's element id on its page; part 1 (or an item not split) keeps the item's plain id, which links use."""
    return f"grid-{task}-{item}" + (f"-part-{part}" if part > 1 else "")


@dataclass(frozen=True)
class Grid:
    """One benchmark item's grid, or one part of it: the item's rows of all manifests, the models shown (columns, in
    order), the seeds shown (rows, in order), its targets, and which part of how many it is (1 of 1: the whole
    item). The rows stay the whole item's in every part (shared, not copied)."""

    task: str
    item: str
    rows: pd.DataFrame
    models: list[str]
    seeds: tuple[str, ...]
    targets: tuple[Path, ...] = ()
    family: str = ""
    part: int = 1
    parts: int = 1

    @property
    def anchor(self) -> str:
        """The grid's element id on its page."""
        return grid_anchor(self.task, self.item, self.part)

    @property
    def cells(self) -> int:
        """How many images the grid shows (model columns x seed rows)."""
        return len(self.models) * len(self.seeds)


def even_chunks(values: Sequence, most: int) -> list[tuple]:
    """``values`` cut into the fewest consecutive chunks of at most ``most`` (>= 1), sizes differing by one at most
    (32 seeds at most 10 a chunk: 8, 8, 8, 8, not 10, 10, 10, 2)."""
    n = -(-len(values) // most)
    size, extra = divmod(len(values), n) if n else (0, 0)
    bounds = [k * size + min(k, extra) for k in range(n + 1)]
    return [tuple(values[a:b]) for a, b in zip(bounds, bounds[1:])]


def split_grid(g: Grid, max_cells: int) -> list[Grid]:
    """``g`` itself when it shows at most ``max_cells`` images, else its parts: as many whole seed rows as fit with
    every model, seeds in order (when one row has more than ``max_cells`` models, each row is cut into chunks of
    models too, in column order); parts run row chunk by row chunk, each row chunk's model chunks left to right."""
    if g.cells <= max_cells:
        return [g]
    rows_per_part = max(1, max_cells // len(g.models))
    chunks = [(seeds, list(models)) for seeds in even_chunks(g.seeds, rows_per_part)
              for models in even_chunks(g.models, max_cells // rows_per_part)]
    return [replace(g, seeds=seeds, models=models, part=k, parts=len(chunks))
            for k, (seeds, models) in enumerate(chunks, 1)]


ItemZ = Mapping[tuple[str, str], Mapping[str, Mapping[str, float]]]  # (task, item) -> model -> metric -> mean z


def item_z(result: Standardized) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """``item_scores`` as nested dicts, built once (a grid looks its columns up instead of filtering a table)."""
    out: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for model, task, item, metric, z in item_scores(result).itertuples(index=False):
        out.setdefault((str(task), str(item)), {}).setdefault(str(model), {})[str(metric)] = float(z)
    return out


@dataclass(frozen=True)
class GridContext:
    """What every grid of a report needs: titles and leaderboard ranks by model, item scores, each task's metrics
    (the first is its primary sort key), where the images are and the gallery publishing them."""

    titles: Mapping[str, str]
    ranks: Mapping[str, int]
    z: ItemZ
    metrics_of: Mapping[str, Sequence[Shown]]
    images_root: Path
    gallery: Gallery
    homes: Mapping[str, str]  # grid anchor -> the file name of the page holding it (``homes``)
    up: str = "../"  # from a grid page to the report's root


def part_nav(g: Grid, homes: Mapping[str, str]) -> str:
    """The links of a split item's part to its other parts (previous, every part by number, next); "" when the item
    is not split. Links name the page and the part's anchor, wherever the part lives."""
    if g.parts == 1:
        return ""

    def href(k: int) -> str:
        anchor = grid_anchor(g.task, g.item, k)
        return f"{url(homes[anchor])}#{url(anchor)}"

    numbers = " ".join(f"<b>{k}</b>" if k == g.part else f'<a href="{esc(href(k))}">{k}</a>'
                       for k in range(1, g.parts + 1))
    prev = f'<a rel="prev" href="{esc(href(g.part - 1))}">← previous</a> · ' if g.part > 1 else ""
    nxt = f' · <a rel="next" href="{esc(href(g.part + 1))}">next →</a>' if g.part < g.parts else ""
    what = f"seeds {esc(g.seeds[0])}–{esc(g.seeds[-1])}" if len(g.seeds) > 1 else f"seed {esc(g.seeds[0])}"
    return (f'<div class="parts">Part {g.part} of {g.parts} ({what}, {len(g.models)} models): {prev}part '
            f"{numbers}{nxt}</div>")


def records(frame: pd.DataFrame) -> list[dict[str, object]]:
    """``frame.to_dict(orient="records")`` (numbers as Python numbers, missing texts NaN) from each column's object
    array: pandas' own walks every cell of a text column through its array's ``__getitem__`` (23 million calls for
    the grids of 100 models)."""
    names = [str(c) for c in frame.columns]
    columns = [frame[c].to_numpy(dtype=object) for c in frame.columns]
    return [dict(zip(names, values)) for values in zip(*columns)]


def grid_section(g: Grid, ctx: GridContext) -> str:
    """The X/Y grid of one item (columns: models; rows: seeds), sortable by each of its task's metrics."""
    metrics = ctx.metrics_of.get(g.task, [])
    prompts = list(dict.fromkeys(g.rows["prompt"].fillna("").astype(str)))
    negs = [n for n in dict.fromkeys(g.rows["negative_prompt"].fillna("").astype(str)) if n][:1]
    per_seed = len(prompts) > 1  # style items: the subject changes with the seed; the prompt goes in the row
    buttons = [("default", "leaderboard order"), ("name", "name")] + [(s.name, s.label) for s in metrics]
    sorter = "".join(f'<button type="button" data-sort="{esc(k)}">{esc(t)}</button>' for k, t in buttons)
    seeds = g.seeds
    mine = g.rows if g.parts == 1 else g.rows[g.rows["seed"].astype(str).isin(seeds)]
    shown = set(g.models)
    by_cell = {(str(r["model"]), str(r["seed"])): r for r in records(mine)}
    by_cell = {k: r for k, r in by_cell.items() if k[0] in shown}
    infos = Infotexts.of(by_cell)
    zs = ctx.z.get((g.task, g.item), {})
    head = '<th class="seed">seed</th>' + ('<th class="targets">target</th>' if g.targets else "")
    head += "".join(column_th(m, ctx.titles.get(m, ""), ctx.ranks.get(m, len(ctx.ranks)), zs.get(m, {}), metrics,
                              infos.templates.get(m, "")) for m in g.models)
    body = []
    for i, seed in enumerate(seeds):
        first = next((by_cell[(m, seed)] for m in g.models if (m, seed) in by_cell), None)
        prompt = f'<span class="row-prompt">{esc(first["prompt"])}</span>' if per_seed and first else ""
        cells = [f'<th class="seed">{esc(seed)}{prompt}</th>']
        if g.targets and i == 0:
            cells.append(targets_cell(g.targets, g.task, g.item, ctx.gallery, len(seeds), ctx.up))
        for model in g.models:
            r = by_cell.get((model, seed))
            inner = ('<span class="na">—</span>' if r is None else
                     image_figure(r, model, ctx.images_root, ctx.gallery, infos.attr(r, model, seed), ctx.up))
            cells.append(f'<td class="cell" data-model="{esc(model)}">{inner}</td>')
        body.append(f'<tr data-seed="{esc(seed)}" data-ih="{esc(infos.heads.get(seed, ""))}">{"".join(cells)}</tr>')
    shown_prompts = [] if per_seed else prompts[:1]
    prompt_html = "".join(f'<div class="prompt">{esc(p)}</div>' for p in shown_prompts)
    prompt_html += "".join(f'<div class="prompt">Negative prompt: {esc(n)}</div>' for n in negs)
    primary = esc(metrics[0].name) if metrics else ""
    return (f'<section class="grid" id="{esc(g.anchor)}" data-task="{esc(g.task)}" data-item="{esc(g.item)}" '
            f'data-family="{esc(g.family)}" data-primary="{primary}"><h3>{esc(TASK_TITLES.get(g.task, g.task))}: '
            f'{esc(g.item)}</h3>{part_nav(g, ctx.homes)}{prompt_html}'
            f'<div class="sorter">mean z on this item; sort the columns by: {sorter}</div>'
            f'<div class="xy-wrap"><table class="xy"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div></section>')


def lora_family(item: str, rows: pd.DataFrame, targets: Targets) -> str:
    """The family whose LoRA table holds ``item``: from the benchmark when the report was given it, else the one
    family of the models that drew it with their LoRA applied ("" when that is not one family)."""
    if item in targets.lora_families:
        return targets.lora_families[item]
    drawn = rows[~flag_mask(rows["flags"], lambda f: INCOMPATIBLE in f)]
    families = set(drawn["family"].astype(str))
    return families.pop() if len(families) == 1 else ""


def item_grids(task: str, rows: pd.DataFrame, order: list[str], targets: Targets) -> list[Grid]:
    """The grids of one task, items in name order; a LoRA item shows the models of its table's family only."""
    grids = []
    for item, g in rows.groupby("item", sort=True):
        family = lora_family(str(item), g, targets) if task == "lora" else ""
        drew = set(g["model"]) if not family else set(g.loc[g["family"].astype(str) == family, "model"])
        models = [m for m in order if m in drew]
        grids.append(Grid(task, str(item), g, models, tuple(seed_order(g["seed"])),
                          targets.images.get((task, str(item)), ()), family))
    return grids


def section_key(g: Grid) -> tuple[str, str]:
    """(anchor id, heading) of the section a grid belongs to: one per task, LoRAs one per family."""
    title = TASK_TITLES.get(g.task, g.task) + "s"
    if g.task != "lora":
        return f"task-{g.task}", title
    return f"task-lora-{g.family or 'other'}", f"{title} ({FAMILY_TITLES.get(g.family, g.family or 'other')})"


def grid_sections(manifests: Mapping[str, pd.DataFrame], order: list[str], targets: Targets) -> list[Grid]:
    """Every grid, tasks in general/style/lora order, LoRA families in FAMILY_TITLES order. The manifests are
    grouped once (by task, then item), never filtered per model."""
    rows = pd.concat([m.assign(model=name) for name, m in manifests.items()], ignore_index=True)
    rows["item"], rows["seed"] = rows["item"].astype(str), rows["seed"].astype(str)  # as grids name them
    have = set(rows["task"])
    tasks = [t for t in TASK_TITLES if t in have] + sorted(have - set(TASK_TITLES))
    by_task = dict(tuple(rows.groupby("task", sort=False)))
    grids = [g for t in tasks for g in item_grids(t, by_task[t], order, targets)]
    family_rank = {f: i for i, f in enumerate(FAMILY_TITLES)}
    return sorted(grids, key=lambda g: (tasks.index(g.task), family_rank.get(g.family, len(family_rank)), g.family))


# ---------------------------------------------------------------------------------------------------------------
# Pages


@dataclass(frozen=True)
class Page:
    """One grid page: ``number`` (from 1) of its section's pages, holding whole items."""

    anchor: str
    heading: str
    number: int
    grids: tuple[Grid, ...]

    @property
    def name(self) -> str:
        """File name under ``pages/``."""
        return f"{self.anchor}-{self.number}.html"


def paginate(grids: Sequence[Grid], max_cells: int) -> list[Page]:
    """Consecutive grids of one section per page, at most ``max_cells`` images a page (a larger grid gets a page
    of its own: ``split_grid`` first to bound every page)."""
    pages: list[Page] = []
    group: list[Grid] = []
    size = 0

    def close() -> None:
        anchor, heading = section_key(group[0])
        number = 1 + sum(p.anchor == anchor for p in pages)
        pages.append(Page(anchor, heading, number, tuple(group)))

    for g in grids:
        if group and (section_key(g) != section_key(group[0]) or size + g.cells > max_cells):
            close()
            group, size = [], 0
        group.append(g)
        size += g.cells
    if group:
        close()
    return pages


def homes(pages: Sequence[Page]) -> dict[str, str]:
    """grid anchor -> the file name of the page holding it."""
    return {g.anchor: p.name for p in pages for g in p.grids}


def sections_of(pages: Sequence[Page]) -> list[tuple[str, str]]:
    """(anchor, heading) of each section, in page order."""
    return list(dict.fromkeys((p.anchor, p.heading) for p in pages))


def first_prompt(g: Grid) -> str:
    prompts = g.rows["prompt"].fillna("").astype(str)
    return str(prompts.iloc[0]) if len(prompts) else ""


def contents_html(pages: Sequence[Page]) -> str:
    """The index's table of contents: every section, its items (with their prompt) linked to their page."""
    out = ['<section id="grids"><h2>Grids</h2><p class="note">One X/Y grid per benchmark item (models as columns, '
           "one row per seed), a few items per page.</p>"]
    where = homes(pages)
    for anchor, heading in sections_of(pages):
        mine = [p for p in pages if p.anchor == anchor]
        out.append(f'<h3 id="{esc(anchor)}">{esc(heading)}</h3><ul class="toc">')
        for p in mine:
            for g in p.grids:
                if g.part == 1:
                    out.append(f'<li><a href="{esc(grid_href(g.anchor, where))}">{esc(g.item)}</a>'
                               f"{toc_parts(g, where)} <span class=\"toc-prompt\">{esc(first_prompt(g))}</span></li>")
        out.append("</ul>")
    out.append("</section>")
    return "\n".join(out)


def grid_href(anchor: str, where: Mapping[str, str]) -> str:
    """The index's link to a grid: its page under ``pages/`` and its anchor."""
    return f"{PAGES}/{url(where[anchor])}#{url(anchor)}"


def toc_parts(g: Grid, where: Mapping[str, str]) -> str:
    """After a split item's name in the index: a link to each of its parts ("" when it is one grid)."""
    if g.parts == 1:
        return ""
    links = " ".join(f'<a href="{esc(grid_href(grid_anchor(g.task, g.item, k), where))}">{k}</a>'
                     for k in range(1, g.parts + 1))
    return f' <span class="toc-parts">(parts {links})</span>'


def page_nav(page: Page, pages: Sequence[Page]) -> str:
    """A grid page's links: the index, and every page of its section (this one marked)."""
    mine = [p for p in pages if p.anchor == page.anchor]
    numbers = " ".join(f"<b>{p.number}</b>" if p == page else f'<a href="{esc(url(p.name))}">{p.number}</a>'
                       for p in mine)
    others = " · ".join(f'<a href="{esc(url(p.name))}">{esc(p.heading)}</a>'
                        for p in pages if p.number == 1 and p.anchor != page.anchor)
    return (f'<nav><a href="../index.html">Leaderboard</a> · <a href="../index.html#grids">All grids</a> · '
            f"{esc(page.heading)}, page {numbers}" + (f" · {others}" if others else "") + "</nav>")


def static() -> tuple[str, str]:
    """(script, style) every page inlines."""
    return (STATIC / "report.js").read_text(), (STATIC / "report.css").read_text()


def head_html(title: str, script: str, style: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp(script, style))}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{style}</style></head>
<body>
"""


def tail_html(script: str) -> str:
    return ('<div id="lightbox" title="click to close"><div class="caption"></div><img alt="full image"><pre></pre>'
            f"</div>\n<script>{script}</script>\n</body></html>\n")


def grid_page(page: Page, pages: Sequence[Page], ctx: GridContext, warning: str) -> Iterator[str]:
    """A grid page's HTML, one grid at a time."""
    script, style = static()
    yield head_html(f"GhostReview report: {page.heading} {page.number}", script, style)
    yield f"{warning}\n<h1>GhostReview report</h1>\n{page_nav(page, pages)}\n"
    yield f'<h2 id="{esc(page.anchor)}">{esc(page.heading)}</h2>\n'
    for g in page.grids:
        yield grid_section(g, ctx) + "\n"
    yield tail_html(script)


def write_stream(f: IO[bytes], chunks: Iterator[str]) -> None:
    for chunk in chunks:
        f.write(chunk.encode("utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# The index


def csp(script: str, style: str) -> str:
    """Content-Security-Policy allowing only this page's own inline script/style and local or embedded images."""
    def h(s: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"

    return f"default-src 'none'; img-src data: 'self' file:; style-src {h(style)}; script-src {h(script)}"


def leaderboard_note(meta: dict, shown: Mapping[str, Shown]) -> str:
    """The text above the leaderboard: what a score and a bracket are, the directions, the metrics combined, the
    benchmark. "Combined over" lists ``meta["combined_over"]`` when standardize recorded it."""
    lower = ", ".join(s.label for s in losses(shown, [m for m in shown if m != COMBINED])) or "none"
    combined = shown[COMBINED]
    over = combined_over(meta)
    over_text = ""
    if over is not None:
        labels = ", ".join(shown[m].label if m in shown else m for m in over)
        over_text = (f"Combined over: {labels}. Columns marked \"not in {combined.label}\" are not part of the "
                     "combined rank. ")
    return (f"Scores are mean z-scores (z within each benchmark item over all models' images); brackets: the "
            f"{interval_note(meta)}; then the rank and its interval, and the raw mean. ↑: higher is better, ↓: "
            f"lower is better (losses: {lower}). {combined.label}: mean of scores with losses sign-flipped, "
            f"{combined.better} is better. {over_text}Click a column to sort. {benchmark_line(meta)}"
            + (f" {protocol_line(protocols_of(meta))}" if protocols_of(meta) else ""))  # issue 17's pools


def nav_html(sections: Sequence[tuple[str, str]]) -> str:
    links = [("leaderboard-section", "Leaderboard"), ("pairwise", "A beats B"), ("agreement", "Judge agreement"),
             ("stability", "Stability"), ("arena", "Arena"), ("plots", "Plots"),
             ("problems", "Flags"), ("grids", "Grids"), *sections]
    return "<nav>" + " · ".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in links) + "</nav>"


def page_html(result: Standardized, shown: Mapping[str, Shown], board: pd.DataFrame, pngs: Mapping[str, bytes],
              contents: str, sections: Sequence[tuple[str, str]] = (), arena: ArenaTables | None = None) -> str:
    """The index document. shown: ``shown_metrics(result, registry)``; contents: ``contents_html`` of the grid
    pages; sections: their (anchor, heading); arena: the arena stage's tables (``report.arena.read_arena``)."""
    script, style = static()
    metrics = [m for m in shown if m != COMBINED]
    meta, raw = result.meta, result.meta.get("raw_metric", "aesthetic")
    note = leaderboard_note(meta, shown)
    order = board["model"].astype(str).tolist()
    names = {str(r["model"]): str(r["title"] or r["model"]) for r in board_records(board)}
    return head_html("GhostReview report", script, style) + f"""{warning_html(board)}
<h1>GhostReview report</h1>
{nav_html(sections)}
<section id="leaderboard-section"><h2>Leaderboard</h2><p class="note">{esc(note)}</p>
{leaderboard_html(board, shown, metrics, raw, combined_over(meta))}</section>
<section id="pairwise"><h2>A beats B</h2>{pairwise_html(result, shown, order, names)}</section>
<section id="agreement"><h2>Judge agreement</h2>{agreement_html(result, shown, order, names)}</section>
<section id="stability"><h2>Stability, claims and the planner</h2>{stability_html(result, shown, names)}</section>
<section id="arena"><h2>Arena: people's votes</h2>{arena_html(arena, shown, names)}</section>
<section id="plots"><h2>Plots</h2>{plots_html(pngs)}</section>
<section id="problems"><h2>Unsupported / incompatible LoRA pairs</h2>
{frame_html(lora_problems(result), "lora-problems")}
<h2>Flagged images</h2>{frame_html(flagged_images(result), "flagged-images")}
<h2>Degenerate groups (excluded from z)</h2>{frame_html(result.degenerate, "degenerate-groups")}</section>
{contents}
""" + tail_html(script)


def write_html(result: Standardized, scores: pd.DataFrame, manifests: Mapping[str, pd.DataFrame],
               models: pd.DataFrame, images_root: str | Path, out_dir: str | Path, *,
               metrics: Mapping[str, MetricInfo], plot_pngs: Mapping[str, bytes] | None = None,
               targets: Targets | None = None, thumb_px: int = THUMB_PX, cache: Path | None = None, workers: int = 1,
               max_cells: int = MAX_CELLS, arena: ArenaTables | None = None) -> Path:
    """Write ``<out_dir>/index.html``, ``pages/`` and ``images/`` (see the module docstring); returns the index's path.

    manifests: model -> its manifest table (images at ``images_root/<model>/<image>``). metrics: the registry the
    scores were standardized with (labels, directions). plot_pngs: PNG bytes by name from ``write_plots`` (rendered
    here from ``result`` and ``scores`` when None). targets: the style reference and LoRA header images and the
    LoRA tables' families (``targets.benchmark_targets``); without them grids show no targets and a LoRA item's
    family is the one of the models that drew it. thumb_px: longest side of a thumbnail; smaller images are their
    own thumbnail. cache: the rendition cache directory (``renditions``; None: every rendition is made anew).
    workers: rendering processes. max_cells: generated images per grid page (``split_grid`` cuts larger items).
    arena: the arena stage's tables (the section says there are none when None).
    """
    check_manifests(manifests)
    shown = shown_metrics(result, metrics)
    out, root = Path(out_dir), Path(images_root)
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard_frame(result, models)
    pngs = plot_pngs if plot_pngs is not None else render(result, scores, models, metrics)[1]
    order = [m for m in board["model"].astype(str) if m in manifests] + sorted(set(manifests) - set(board["model"]))
    titles = {str(r["model"]): str(r["title"]) for r in board_records(board)}
    if max_cells < 1:
        raise ValueError(f"max_cells={max_cells}: a grid page must hold at least one image")
    grids = [part for g in grid_sections(manifests, order, targets or Targets()) for part in split_grid(g, max_cells)]
    pages = paginate(grids, max_cells)
    metrics_of = {t: [shown[m] for m in ms if m in shown] for t, ms in task_metrics(result).items()}
    z, warning = item_z(result), warning_html(board)
    if cache is not None:
        clean_staging(cache)

    def build_pages(tmp_pages: Path) -> None:
        def build_images(tmp_images: Path) -> None:
            gallery = Gallery(tmp_images, thumb_px, cache, pool)
            ctx = GridContext(titles, {m: i for i, m in enumerate(order)}, z, metrics_of, root, gallery, homes(pages))
            try:
                for page in pages:
                    with open(tmp_pages / page.name, "wb") as f:
                        write_stream(f, grid_page(page, pages, ctx, warning))
                    gallery.flush()
                gallery.close()
            finally:
                gallery.discard()

        replace_dir(out / IMAGES, build_images, sync_all=True)  # new images first: new pages never lack one

    with rendering_pool(workers) as pool:
        replace_dir(out / PAGES, build_pages, sync_all=True)
    index = page_html(result, shown, board, pngs, contents_html(pages), sections_of(pages), arena)
    return write_atomic(out / "index.html", lambda f: f.write(index.encode("utf-8")))
