"""One self-contained offline HTML page: leaderboard, plots, and every benchmark item's images side by side.

Everything is embedded: CSS and JS inline (``static/``), plots and thumbnails as base64 data URIs, full images as data
URIs when at most ``embed_max_bytes`` (else copied to ``<out_dir>/images/<model>/`` and linked relatively). A
Content-Security-Policy allows only data:/local images and the page's own inline script and style (by hash), so even
a text that escaped ``html.escape`` could neither run nor fetch anything. Every text coming from prompts, parameters,
file or model names goes through ``html.escape``; the script touches text only via ``textContent``.

URL hash parameters honoured by the page: ``#sort=score`` (each grid by its primary metric, best first),
``#sort=<metric>``, ``#sort=name``, ``#sort=default`` (leaderboard order), ``open=<image_hash>`` (opens that image in
the viewer, as a click does); combine with ``&``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import shutil
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ghostreview.analysis.report.display import Shown, losses, shown_metrics
from ghostreview.analysis.report.plots import render
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
)
from ghostreview.analysis.standardize import COMBINED, Standardized, parse_flags
from ghostreview.scoring.metric import MetricInfo

STATIC = Path(__file__).parent / "static"
# The manifest columns (generation.manifest.MANIFEST_COLUMNS, the contract) the grids and flag lists read
REPORT_COLUMNS = ("task", "item", "seed", "image", "image_hash", "prompt", "negative_prompt", "flags", "infotext")
TASK_TITLES = {"general": "General prompt", "style": "Style", "lora": "LoRA"}


def esc(value: object) -> str:
    """HTML-escape any value (quotes too, so the result is safe inside attribute values)."""
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(raw: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def thumbnail_uri(path: Path, px: int) -> str:
    """A JPEG thumbnail (longest side <= px) of the image at ``path`` as a data URI."""
    with Image.open(path) as src:
        im = src.convert("RGB")
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return data_uri(buf.getvalue(), "image/jpeg")


def full_image_src(path: Path, model: str, out_dir: Path, embed_max_bytes: int) -> str:
    """The full image as a data URI when small, else a relative link to a copy under ``out_dir/images/model/``."""
    if path.stat().st_size <= embed_max_bytes:
        with Image.open(path) as im:
            mime = Image.MIME.get(im.format or "", "application/octet-stream")
        return data_uri(path.read_bytes(), mime)
    dest = out_dir / "images" / model / path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dest)
    return "images/" + urllib.parse.quote(model) + "/" + urllib.parse.quote(path.name)


def check_manifests(manifests: Mapping[str, pd.DataFrame]) -> None:
    """Every manifest has the columns the page shows; the error names the model and the missing columns."""
    for model, m in manifests.items():
        missing = [c for c in REPORT_COLUMNS if c not in m.columns]
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
# Page pieces


def warning_html(board: pd.DataFrame) -> str:
    w = demo_warning(board)
    return f'<div id="demo-warning" class="demo-warning" role="alert">⚠ {esc(w)}</div>' if w else ""


def leaderboard_html(board: pd.DataFrame, shown: Mapping[str, Shown], metrics: list[str], raw: str) -> str:
    """The sortable leaderboard table: one ``tr[data-model]`` per model; each cell's ``data-v`` is its sort value.
    Columns: combined, then ``metrics`` (names of ``shown``), then the raw metric ``raw``."""
    heads = ["#", "Model", "Title", "Family", "AutoV2"] + [shown[m].label for m in [COMBINED] + metrics]
    heads += [f"Raw {raw} mean", f"Raw {raw} std", "Good rate", "Flagged images"]
    head = "".join(f"<th>{esc(h)}</th>" for h in heads)
    out = [f'<table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>']
    for r in board_records(board):
        cells = [num_td(r["rank"], fmt_rank(r["rank"]))] + [f'<td data-v="{esc(r[k])}">{esc(r[k])}</td>'
                                                            for k in ("model", "title", "family", "autov2")]
        cells += [score_td(r, m) for m in [COMBINED] + metrics]
        cells += [num_td(r[f"{raw}_{k}"], fmt(r[f"{raw}_{k}"])) for k in ("mean", "std", "good_rate")]
        cells.append(num_td(r["n_flagged_images"], str(r["n_flagged_images"])))
        out.append(f'<tr data-model="{esc(r["model"])}">' + "".join(cells) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def num_td(value: object, text: str) -> str:
    v = "" if value is None else value
    return f'<td class="num" data-v="{esc(v)}">{esc(text)}</td>'


def score_td(r: Mapping[str, object], m: str) -> str:
    """Score with its interval and rank interval underneath."""
    v = "" if r[m] is None else r[m]
    ci = (f"[{fmt(r[f'{m}_lo'])}, {fmt(r[f'{m}_hi'])}] #{fmt_rank(r[f'{m}_rank'])} "
          f"({fmt_rank(r[f'{m}_rank_lo'])}–{fmt_rank(r[f'{m}_rank_hi'])})")
    return f'<td class="num" data-v="{esc(v)}">{esc(fmt(r[m]))}<br><span class="ci">{esc(ci)}</span></td>'


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


def image_figure(row: Mapping[str, object], model: str, images_root: Path, out_dir: Path, thumb_px: int,
                 embed_max_bytes: int) -> str:
    """One image: thumbnail (click: full image + infotext in the viewer), seed, flags, infotext under <details>."""
    path = images_root / model / str(row["image"])
    flags = "".join(f'<span class="flag">{esc(f)}</span>' for f in sorted(parse_flags(row["flags"])))
    caption = f"{model} · {row['task']} {row['item']} · seed {row['seed']}"
    if path.is_file():
        shot = f'<img alt="{esc(caption)}" src="{thumbnail_uri(path, thumb_px)}">'
        full = full_image_src(path, model, out_dir, embed_max_bytes)
    else:
        shot, full = f'<div class="missing">no image: {esc(row["image"])}</div>', ""
    return (f'<figure class="thumb" data-hash="{esc(row["image_hash"])}" data-full="{esc(full)}" '
            f'data-caption="{esc(caption)}"><div class="shot" role="button" tabindex="0">{shot}</div>'
            f"<figcaption>seed {esc(row['seed'])} {flags}</figcaption>"
            f'<details><summary>infotext</summary><pre class="infotext">{esc(row["infotext"])}</pre></details>'
            "</figure>")


def grid_row(model: str, rank: int, images: pd.DataFrame, zs: Mapping[str, float], metrics: Sequence[Shown],
             render_image) -> str:
    """One model's row of a grid; ``data-m-<metric>`` holds the oriented item score, ``data-score`` the primary (the
    first of ``metrics``). zs: metric name -> the model's mean z on this item (missing: no score)."""
    oriented = {s.name: zs.get(s.name, np.nan) * (1 if s.higher_is_better else -1) for s in metrics}
    attrs = "".join(f' data-m-{esc(m)}="{"" if np.isnan(v) else repr(float(v))}"' for m, v in oriented.items())
    primary = oriented[metrics[0].name] if metrics else np.nan
    attrs += f' data-score="{"" if np.isnan(primary) else repr(float(primary))}" data-default="{-rank}"'
    text = " · ".join(f"{s.label} {fmt(zs.get(s.name, np.nan), 2)}" for s in metrics)
    by_seed = images.assign(_n=pd.to_numeric(images["seed"], errors="coerce")).sort_values(["_n", "seed"])
    cells = "".join(render_image(r) for r in by_seed.drop(columns="_n").to_dict(orient="records"))
    return (f'<div class="grid-row" data-model="{esc(model)}"{attrs}><div class="who"><b>{esc(model)}</b><br>'
            f'<span class="item-score">{esc(text)}</span></div><div class="cells">{cells or "no images"}</div></div>')


def grid_section(task: str, item: str, rows: pd.DataFrame, order: list[str], zs: pd.DataFrame,
                 metrics: Sequence[Shown], render_image) -> str:
    """All models' images of one benchmark item, sortable (buttons or the URL hash) by each of ``metrics``."""
    prompts = list(dict.fromkeys(rows["prompt"].fillna("").astype(str)))[:3]
    negs = [n for n in dict.fromkeys(rows["negative_prompt"].fillna("").astype(str)) if n][:1]
    buttons = [("default", "leaderboard order"), ("name", "name")] + [(s.name, s.label) for s in metrics]
    sorter = "".join(f'<button type="button" data-sort="{esc(k)}">{esc(t)}</button>' for k, t in buttons)
    body = []
    for rank, model in enumerate(order):
        z = zs[zs["model"] == model].set_index("metric")["z"].to_dict()
        body.append(grid_row(model, rank, rows[rows["model"] == model], z, metrics, render_image))
    prompt_html = "".join(f'<div class="prompt">{esc(p)}</div>' for p in prompts)
    prompt_html += "".join(f'<div class="prompt">Negative prompt: {esc(n)}</div>' for n in negs)
    primary = esc(metrics[0].name) if metrics else ""
    return (f'<section class="grid" data-task="{esc(task)}" data-item="{esc(item)}" data-primary="{primary}">'
            f"<h3>{esc(TASK_TITLES.get(task, task))}: {esc(item)}</h3>{prompt_html}"
            f'<div class="sorter">mean z on this item; sort by: {sorter}</div>'
            f'<div class="grid-body">{"".join(body)}</div></section>')


def grids_html(result: Standardized, shown: Mapping[str, Shown], manifests: Mapping[str, pd.DataFrame],
               order: list[str], render_image) -> str:
    """Grids for every (task, item) of the manifests, tasks in general/style/lora order."""
    rows = pd.concat([m.assign(model=name) for name, m in manifests.items()], ignore_index=True)
    rows["item"] = rows["item"].astype(str)
    zs, metrics_of = item_scores(result), task_metrics(result)
    out = []
    tasks = [t for t in TASK_TITLES if t in set(rows["task"])] + sorted(set(rows["task"]) - set(TASK_TITLES))
    for task in tasks:
        out.append(f'<h2 id="task-{esc(task)}">{esc(TASK_TITLES.get(task, task))}s</h2>')
        for item, g in rows[rows["task"] == task].groupby("item", sort=True):
            z = zs[(zs["task"] == task) & (zs["item"] == item)]
            metrics = [shown[m] for m in metrics_of.get(task, [])]
            out.append(grid_section(task, item, g, order, z, metrics, render_image))
    return "\n".join(out)


def csp(script: str, style: str) -> str:
    """Content-Security-Policy allowing only this page's own inline script/style and local or embedded images."""
    def h(s: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"

    return f"default-src 'none'; img-src data: 'self' file:; style-src {h(style)}; script-src {h(script)}"


def leaderboard_note(meta: dict, shown: Mapping[str, Shown]) -> str:
    """The text above the leaderboard: what a score and a bracket are, the directions, the benchmark. The losses
    named are those the combined score flips (``meta["combined_of"]``, the registered metrics scored)."""
    lower = ", ".join(s.label for s in losses(shown, meta["combined_of"]))
    combined = shown[COMBINED]
    return (f"Scores are mean z-scores (z within each benchmark item over all models' images); brackets: the rank "
            f"interval and the {interval_note(meta)}. Losses ({lower}): lower is better. "
            f"{combined.label}: mean of scores with losses sign-flipped, {combined.better} is better. Click a column "
            f"to sort. {benchmark_line(meta)}")


def page_html(result: Standardized, shown: Mapping[str, Shown], board: pd.DataFrame, pngs: Mapping[str, bytes],
              grids: str) -> str:
    """The whole document. shown: ``shown_metrics(result, registry)``."""
    script, style = (STATIC / "report.js").read_text(), (STATIC / "report.css").read_text()
    metrics = [m for m in shown if m != COMBINED]
    meta, raw = result.meta, result.meta.get("raw_metric", "aesthetic")
    note = leaderboard_note(meta, shown)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp(script, style))}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>GhostReview report</title><style>{style}</style></head>
<body>
{warning_html(board)}
<h1>GhostReview report</h1>
<nav><a href="#leaderboard-section">Leaderboard</a> · <a href="#plots">Plots</a> · <a href="#problems">Flags</a> ·
<a href="#task-general">Prompts</a> · <a href="#task-style">Styles</a> · <a href="#task-lora">LoRAs</a></nav>
<section id="leaderboard-section"><h2>Leaderboard</h2><p class="note">{esc(note)}</p>
<div class="wide">{leaderboard_html(board, shown, metrics, raw)}</div></section>
<section id="plots"><h2>Plots</h2>{plots_html(pngs)}</section>
<section id="problems"><h2>Unsupported / incompatible LoRA pairs</h2>
{frame_html(lora_problems(result), "lora-problems")}
<h2>Flagged images</h2>{frame_html(flagged_images(result), "flagged-images")}
<h2>Degenerate groups (excluded from z)</h2>{frame_html(result.degenerate, "degenerate-groups")}</section>
{grids}
<div id="lightbox" title="click to close"><div class="caption"></div><img alt="full image"><pre></pre></div>
<script>{script}</script>
</body></html>
"""


def write_html(result: Standardized, scores: pd.DataFrame, manifests: Mapping[str, pd.DataFrame],
               models: pd.DataFrame, images_root: str | Path, out_dir: str | Path, *,
               metrics: Mapping[str, MetricInfo], plot_pngs: Mapping[str, bytes] | None = None, thumb_px: int = 160,
               embed_max_bytes: int = 65_536) -> Path:
    """Write ``<out_dir>/index.html`` (see the module docstring) and return its path.

    manifests: model -> its manifest table (images at ``images_root/<model>/<image>``). metrics: the registry the
    scores were standardized with (labels, directions). plot_pngs: PNG bytes by name from ``write_plots`` (rendered
    here from ``result`` and ``scores`` when None). thumb_px: thumbnail size.
    """
    check_manifests(manifests)
    shown = shown_metrics(result, metrics)
    out, root = Path(out_dir), Path(images_root)
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard_frame(result, models)
    pngs = plot_pngs if plot_pngs is not None else render(result, scores, models, metrics)[1]
    order = [m for m in board["model"].astype(str) if m in manifests] + sorted(set(manifests) - set(board["model"]))

    def render_image(r: Mapping[str, object]) -> str:
        return image_figure(r, str(r["model"]), root, out, thumb_px, embed_max_bytes)

    path = out / "index.html"
    grids = grids_html(result, shown, manifests, order, render_image)
    path.write_text(page_html(result, shown, board, pngs, grids), encoding="utf-8")
    return path
