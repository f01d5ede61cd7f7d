"""The arena stage's library side: the votes file, the review's images and scores in; ratings, pair counts and the
judges' accuracy out (``data/arena_ratings/``: ratings.csv, pairs.csv, judges.csv, meta.json).

Which votes count:
- rated: votes between two of the review's models (a removed model's votes stay in the file, counted in
  ``meta["other_models"]``);
- for a judge's accuracy, a rated vote also needs the images its voter saw to be the review's images now: a vote
  recorded with an image hash that is not the model's current image of that slot (the model was redrawn since) is
  ``stale``: it still counts for the human ranking (it is about the model), not for the judges (it is about an
  image they never scored). Synthetic votes name no image; they take the review's image of their slot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ghostreview.arena.pairs import ArenaImage
from ghostreview.arena.ratings import Ratings, battles, judge_table, pair_table, rate, rating_table
from ghostreview.util.atomic import write_text_atomic

RESULT_FILES = ("ratings.csv", "pairs.csv", "judges.csv", "judge_ranks.csv", "meta.json")
JUDGE_RANK_COLUMNS = ["model", "judge", "rank"]
METHOD = ("Bradley-Terry as LMArena fits it (ties and both-bad count as half a win each), 1000 + 400/ln 10 x the "
          "log-odds scale; intervals: bootstrap over voters (each resample draws the voters with replacement, "
          "each with all their votes)")


def current_images(votes: pd.DataFrame, images: Sequence[ArenaImage]) -> tuple[pd.DataFrame, int]:
    """(``votes`` with image_a/image_b set to the review's current image of each side, "" where that is not the
    image the voter saw or the review has none; how many votes were stale)."""
    now = {(im.model, im.slot): im.image_hash for im in images}
    out, stale = votes.copy(), pd.Series(False, index=votes.index)
    for side, model in (("image_a", "model_a"), ("image_b", "model_b")):
        slots = zip(votes[model], votes["task"], votes["item"], votes["seed"].astype(int))
        current = pd.Series([now.get((m, (t, i, s)), "") for m, t, i, s in slots], index=votes.index, dtype=object)
        seen = votes[side].astype(str)
        moved = (seen != "") & (seen != current)
        stale |= moved
        out[side] = current.where(~moved, "")
    return out, int(stale.sum())


@dataclass(frozen=True)
class ArenaResult:
    ratings: pd.DataFrame
    pairs: pd.DataFrame
    judges: pd.DataFrame
    judge_ranks: pd.DataFrame
    meta: dict

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("ratings", "pairs", "judges", "judge_ranks"):
            write_text_atomic(out / f"{name}.csv", getattr(self, name).to_csv(index=False, lineterminator="\n"))
        write_text_atomic(out / "meta.json", json.dumps(self.meta, indent=2, sort_keys=True) + "\n")


def arena_review(votes: pd.DataFrame, models: Sequence[str], images: Sequence[ArenaImage],
                 per_image: Mapping[str, Mapping[str, float]], model_scores: Mapping[str, Mapping[str, float]],
                 n_boot: int, seed: int, ci: float) -> ArenaResult:
    """Everything the arena stage writes (see ``ratings`` for the methods)."""
    mine = votes[votes["model_a"].isin(models) & votes["model_b"].isin(models)].reset_index(drop=True)
    resolved, stale = current_images(mine, images)
    r: Ratings = rate(battles(resolved, models), n_boot, seed)
    meta = {"votes_in_file": len(votes), "votes": len(mine), "voters": int(r.battles.n_voters),
            "synthetic": int((mine["origin"] == "synthetic").sum()), "other_models": len(votes) - len(mine),
            "stale": stale, "decided": int(mine["winner"].isin(["model_a", "model_b"]).sum()), "n_boot": n_boot,
            "seed": seed, "ci": ci, "method": METHOD, "models": list(models)}
    return ArenaResult(rating_table(r, ci), pair_table(mine), judge_table(resolved, r, per_image, model_scores, ci),
                       judge_ranks(model_scores, models), meta)


def judge_ranks(model_scores: Mapping[str, Mapping[str, float]], models: Sequence[str]) -> pd.DataFrame:
    """``JUDGE_RANK_COLUMNS``: each judge's rank of each model it scores (1 = best, ties sharing the best rank), to
    set beside the human ranking."""
    rows = []
    for judge, scores in model_scores.items():
        ranked = {m: scores[m] for m in models if m in scores and scores[m] == scores[m]}
        rows += [(m, judge, 1 + sum(v > x for v in ranked.values())) for m, x in ranked.items()]
    return pd.DataFrame(rows, columns=JUDGE_RANK_COLUMNS)


def oriented_image_values(scores: pd.DataFrame, judges: Mapping[str, bool]) -> dict[str, dict[str, float]]:
    """{judge: {image hash: value, sign-flipped for a loss}} from score rows (``scoring.table``) without flags;
    ``judges``: {name: higher is better}."""
    ok = scores[(scores["flags"].fillna("") == "") & scores["metric"].isin(list(judges))]
    out: dict[str, dict[str, float]] = {j: {} for j in judges}
    for judge, rows in ok.groupby("metric", sort=False):
        sign = 1.0 if judges[str(judge)] else -1.0
        out[str(judge)] = {str(h): sign * float(v) for h, v in zip(rows["image_hash"], rows["value"])}
    return out


def oriented_model_scores(standardized_scores: pd.DataFrame, judges: Sequence[str]) -> dict[str, dict[str, float]]:
    """{judge: {model: oriented score}} from standardize's score rows (a loss's score sign-flipped)."""
    rows = standardized_scores[standardized_scores["metric"].isin(list(judges))]
    out: dict[str, dict[str, float]] = {j: {} for j in judges}
    for r in rows.itertuples(index=False):
        out[str(r.metric)][str(r.model)] = float(r.score) if bool(r.higher_is_better) else -float(r.score)
    return out
