"""The report's arena section: the human ranking (from the arena stage's ``data/arena_ratings/``) next to each
judge's ranking, each judge's pairwise accuracy and Kendall's tau against the people, the votes per model pair, and
what it all rests on (votes, voters, how many are synthetic). The one owner of the section's texts.

Reads the arena stage's files (ratings.csv, pairs.csv, judges.csv, judge_ranks.csv, meta.json) as plain tables:
the report imports nothing of ``ghostreview.arena``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ghostreview.analysis.report.display import Shown
from ghostreview.errors import UserError

TABLES = ("ratings", "pairs", "judges", "judge_ranks")


@dataclass(frozen=True)
class ArenaTables:
    ratings: pd.DataFrame
    pairs: pd.DataFrame
    judges: pd.DataFrame
    judge_ranks: pd.DataFrame
    meta: dict


def read_arena(directory: Path) -> ArenaTables:
    """The arena stage's output; a missing file fails naming it and the fix."""
    missing = [f"{t}.csv" for t in TABLES if not (directory / f"{t}.csv").is_file()]
    if missing or not (directory / "meta.json").is_file():
        raise UserError(f"{directory} (--arena): missing {missing or ['meta.json']}; run the arena stage first "
                        "(dvc repro arena)")
    tables = {t: pd.read_csv(directory / f"{t}.csv", dtype={"model": str, "model_a": str, "model_b": str,
                                                            "judge": str}) for t in TABLES}
    return ArenaTables(**tables, meta=json.loads((directory / "meta.json").read_text(encoding="utf-8")))


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def num(x: object, digits: int = 0) -> str:
    """A number as text, "—" when missing."""
    return f"{float(x):.{digits}f}" if isinstance(x, int | float) and math.isfinite(float(x)) else "—"


def span(lo: object, hi: object, digits: int = 0) -> str:
    return f"[{num(lo, digits)}, {num(hi, digits)}]"


def basis(meta: Mapping[str, Any]) -> str:
    """What the section rests on: votes, voters, and how many are synthetic or left out."""
    votes, voters, synthetic = int(meta["votes"]), int(meta["voters"]), int(meta["synthetic"])
    text = f"{votes} vote{'s' if votes != 1 else ''} by {voters} voter{'s' if voters != 1 else ''}"
    if synthetic == votes and votes:
        text += (" — all synthetic: drawn by GhostReview's demo kit from a known model order "
                 "(ghostreview/kit/arena.py), not cast by people; they show what the section looks like, nothing "
                 "about the models")
    elif synthetic:
        text += f", of which {synthetic} synthetic (drawn by the demo kit, not cast by people)"
    left_out = [f"{meta['other_models']} naming models not in this review"] if meta.get("other_models") else []
    if meta.get("stale"):
        left_out.append(f"{meta['stale']} on images redrawn since (kept for the ranking, not for the judges)")
    return text + (f"; not counted: {'; '.join(left_out)}" if left_out else "") + "."


def ranking_html(a: ArenaTables, shown: Mapping[str, Shown], names: Mapping[str, str], ci: str) -> str:
    """The human ranking, best first, with each judge's rank of the same model beside it."""
    judges = [j for j in a.judges["judge"] if j in shown]
    ranks = {(r.model, r.judge): int(r.rank) for r in a.judge_ranks.itertuples()}
    head = (f"<th>model</th><th>human rank [{ci}]</th><th>rating [{ci}]</th><th>votes</th>"
            + "".join(f"<th>{esc(shown[j].label)} rank</th>" for j in judges))
    body = []
    for r in a.ratings.itertuples():
        cells = [f"<td>{esc(names.get(r.model, r.model))}</td>", f"<td>{num(r.rank)} {span(r.rank_lo, r.rank_hi)}</td>",
                 f"<td>{num(r.rating)} {span(r.rating_lo, r.rating_hi)}</td>", f"<td>{int(r.votes)}</td>"]
        cells += [f"<td>{ranks.get((r.model, j), '—')}</td>" for j in judges]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="arena-ranking"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def judges_html(a: ArenaTables, shown: Mapping[str, Shown], ci: str) -> str:
    """Each judge's pairwise accuracy and Kendall's tau against the people."""
    head = (f"<th>judge</th><th>decided votes it calls</th><th>pairwise accuracy [{ci}]</th><th>models</th>"
            f"<th>Kendall's tau vs people [{ci}]</th>")
    body = [f"<tr><td>{esc(shown[r.judge].label if r.judge in shown else r.judge)}</td><td>{int(r.n_votes)}</td>"
            f"<td>{num(r.accuracy, 3)} {span(r.accuracy_lo, r.accuracy_hi, 3)}</td><td>{int(r.n_models)}</td>"
            f"<td>{num(r.kendall_tau, 2)} {span(r.tau_lo, r.tau_hi, 2)}</td></tr>" for r in a.judges.itertuples()]
    return f'<table id="arena-judges"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def pairs_html(a: ArenaTables, names: Mapping[str, str]) -> str:
    head = "<th>model A</th><th>model B</th><th>votes</th><th>A won</th><th>B won</th><th>tie</th><th>both bad</th>"
    body = [f"<tr><td>{esc(names.get(r.model_a, r.model_a))}</td><td>{esc(names.get(r.model_b, r.model_b))}</td>"
            f"<td>{int(r.votes)}</td><td>{int(r.a_wins)}</td><td>{int(r.b_wins)}</td><td>{int(r.ties)}</td>"
            f"<td>{int(r.both_bad)}</td></tr>" for r in a.pairs.itertuples()]
    return f'<table id="arena-pairs"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def note(meta: Mapping[str, Any]) -> str:
    return (f"{meta['method']}. Pairwise accuracy: the share of decided votes (a winner, not a tie or both bad) "
            "whose winner's image the judge scores higher (losses sign-flipped; equal scores count half); 0.5 is a "
            "coin. Kendall's tau: the judge's model ranking against the people's (1: the same order). Intervals of "
            "both over the same voter resamples.")


def arena_html(a: ArenaTables | None, shown: Mapping[str, Shown], names: Mapping[str, str]) -> str:
    """The section's body."""
    if a is None:
        return '<p class="note" id="arena-basis">This report was written without the arena stage\'s output.</p>'
    meta = a.meta
    if not int(meta["votes"]):
        return (f'<p class="note" id="arena-basis">No votes between this review\'s models yet '
                f"({esc(basis(meta))}) Start one with `ghostreview arena serve` (docs/arena.md).</p>")
    ci = f"{100 * float(meta['ci']):g}%"
    return (f'<p class="note" id="arena-basis">Human ranking from {esc(basis(meta))}</p>'
            f'<p class="note">{esc(note(meta))}</p>{ranking_html(a, shown, names, ci)}'
            f"<h3>How well each judge predicts the people</h3>{judges_html(a, shown, ci)}"
            f"<h3>Votes per model pair</h3>{pairs_html(a, names)}")
