"""What the report shows of the judges' agreement (standardize's ``agreement`` and ``judge_ranks`` tables): the one
owner of its texts (what it is, why it is absent), its matrices (leaderboard.json) and each model's ranks, which
``tables`` (leaderboard.md) and ``html`` (index.html) lay out.

The judges are ``meta["agreement_judges"]`` (the registered metrics scored that rank two models or more), labelled
by the registry's ``MetricInfo`` through ``display.Shown``. Matrices are judge x judge, symmetric, in that order:
Kendall's tau between the two judges' model rankings with its interval (the scores' bootstrap resamples), the models
both rank, Spearman's rho between their per-image z and the images both score; a judge with itself is 1 (tau, rho)
and its own counts. With fewer than 2 ranked models or 2 judges there is no agreement and ``absent`` says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np

from ghostreview.analysis.report.display import Shown
from ghostreview.analysis.standardize import Standardized

PAIR_FIELDS = ("kendall_tau", "tau_lo", "tau_hi", "n_models", "spearman", "n_images")  # the json's matrices


def judges(result: Standardized) -> list[str]:
    """The judges compared (``meta["agreement_judges"]``); a standardize output without it fails with the fix."""
    names = result.meta.get("agreement_judges")
    if not isinstance(names, list):
        raise ValueError("standardize meta has no agreement_judges: written by an older standardize; rerun it "
                         "(dvc repro standardize)")
    return [str(n) for n in names]


def ranked_models(result: Standardized) -> int:
    """How many models some judge ranks."""
    return int((result.judge_ranks["n_judges"] > 0).sum())


def absent(result: Standardized, shown: Mapping[str, Shown]) -> str | None:
    """Why there is no agreement to show (None: there is)."""
    n_models, names = ranked_models(result), judges(result)
    if n_models < 2:
        return (f"Judge agreement compares rankings of two models or more; {n_models} model"
                f"{'' if n_models == 1 else 's'} ranked here.")
    if len(names) < 2:
        have = f"one: {shown[names[0]].label}" if names else "none"
        return f"Judge agreement needs two judges that each rank two models or more; this review has {have}."
    return None


def own_counts(result: Standardized, name: str) -> tuple[int, int]:
    """(models ranked, images with a usable z) of one judge: its diagonal counts."""
    ranks = result.scores[result.scores["metric"] == name]["rank"]
    images = result.images[(result.images["metric"] == name) & (result.images["status"] == "ok")]
    return int(np.isfinite(ranks.to_numpy(float)).sum()), len(images)


def matrices(result: Standardized) -> dict[str, list[list[float | int | None]]]:
    """{field: J x J matrix} for each of ``PAIR_FIELDS`` (JSON-ready: None for NaN)."""
    names = judges(result)
    at = {n: i for i, n in enumerate(names)}
    out: dict[str, list[list[float | int | None]]] = {}
    for f in PAIR_FIELDS:
        m: list[list[float | int | None]] = [[None] * len(names) for _ in names]
        for i, name in enumerate(names):
            models, images = own_counts(result, name)
            m[i][i] = {"n_models": models, "n_images": images}.get(f, 1.0)
        for r in result.agreement.to_dict(orient="records"):
            a, b = at[r["judge_a"]], at[r["judge_b"]]
            v = r[f]
            m[a][b] = m[b][a] = None if isinstance(v, float) and not math.isfinite(v) else (
                int(v) if f.startswith("n_") else float(v))
        out[f] = m
    return out


def split(cell: object) -> list[str]:
    """A ";"-joined judges cell as a list."""
    return [s for s in str(cell).split(";") if s] if isinstance(cell, str) else []


def rank_records(result: Standardized, order: Sequence[str]) -> list[dict[str, object]]:
    """Each model's best and worst rank over the judges, in ``order`` (the leaderboard's)."""
    t = result.judge_ranks.set_index(result.judge_ranks["model"].astype(str))
    out = []
    for model in order:
        r = t.loc[model]
        best, worst = float(r["best_rank"]), float(r["worst_rank"])
        out.append({"model": model, "n_judges": int(r["n_judges"]),
                    "best_rank": int(best) if math.isfinite(best) else None,
                    "worst_rank": int(worst) if math.isfinite(worst) else None,
                    "best_by": split(r["best_by"]), "worst_by": split(r["worst_by"])})
    return out


def agreement_json(result: Standardized, shown: Mapping[str, Shown], order: Sequence[str]) -> dict[str, object]:
    """leaderboard.json's ``agreement``: judges, labels, why it is absent (or null), the matrices, each model's
    ranks."""
    reason, names = absent(result, shown), judges(result)
    doc: dict[str, object] = {"judges": names, "labels": [shown[n].label for n in names], "absent": reason,
                              "ci": result.meta.get("ci")}
    doc.update(matrices(result) if reason is None else {f: [] for f in PAIR_FIELDS})
    doc["ranks"] = rank_records(result, order) if reason is None else []
    return doc


def note(result: Standardized) -> str:
    """What the matrices are."""
    level = f"{100 * float(result.meta.get('ci', 0.95)):g}%"
    return (f"Kendall's tau between two judges' rankings of the models (1: the same order, -1: reversed; ties count "
            f"as in tau-b), over the models both rank, with its {level} interval over the same bootstrap resamples "
            "of benchmark items as the scores. Spearman's rho between two judges' z-scores of the images both score "
            "(z within each benchmark item; a style loss and a prompt judge share none). "
            "Losses are sign-flipped first: a positive value always means the judges agree. Rank over the judges: "
            "each model's best and worst rank by a single judge; equal when every judge puts it in the same place.")


def pair_cells(result: Standardized) -> dict[tuple[str, str], dict[str, object]]:
    """(a, b) and (b, a) -> the pair's agreement row."""
    out = {}
    for r in result.agreement.to_dict(orient="records"):
        out[(r["judge_a"], r["judge_b"])] = out[(r["judge_b"], r["judge_a"])] = r
    return out


def moved(r: Mapping[str, object], shown: Mapping[str, Shown]) -> tuple[str, str]:
    """(best by, worst by) as labels; a model every judge ranks alike gets "all judges" and "—"."""
    if r["best_rank"] == r["worst_rank"]:
        return "all judges", "—"
    best, worst = (", ".join(shown[j].label for j in cast(list, r[k])) for k in ("best_by", "worst_by"))
    return best, worst


def colour(tau: object) -> str:
    """The pairwise matrices' colour class of a value in [-1, 1] (p0: -1, p5: 0, p10: 1); "na" when missing."""
    if not isinstance(tau, float | int) or not math.isfinite(tau):
        return "na"
    return f"p{int(round(5 * (float(tau) + 1)))}"
