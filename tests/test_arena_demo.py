"""The demo's synthetic votes (data/arena/votes.csv) and the arena stage on them: the committed file is exactly what
ghostreview/kit/arena.py writes, the stage recovers the known model order from it, and the stage's outputs say how
many votes, voters and synthetic votes they rest on."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ghostreview.arena.export import read_votes, votes_csv_text
from ghostreview.arena.review import arena_review
from ghostreview.generation.manifest import MANIFEST_COLUMNS
from ghostreview.kit.arena import DEMO_STRENGTHS, N_VOTERS, N_VOTES, synthetic_votes
from ghostreview.protocol import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
VOTES = ROOT / "data/arena/votes.csv"
KNOWN_ORDER = sorted(DEMO_STRENGTHS, key=DEMO_STRENGTHS.get, reverse=True)


def test_the_committed_demo_votes_are_what_the_kit_writes():
    text = votes_csv_text(synthetic_votes(load_benchmark(ROOT / "data/benchmark/v1")))
    assert VOTES.read_text(encoding="utf-8") == text, "regenerate: python -m ghostreview.kit.arena " \
                                                      "data/arena/votes.csv"
    votes = read_votes(VOTES)
    assert (votes["origin"] == "synthetic").all() and votes["voter"].str.startswith("synthetic-voter-").all()


def test_the_known_order_is_recovered_from_the_synthetic_votes():
    result = arena_review(read_votes(VOTES), KNOWN_ORDER, [], {}, {}, n_boot=200, seed=0, ci=0.95)
    ratings = result.ratings
    assert ratings["model"].tolist() == KNOWN_ORDER
    # separated: each model's interval lies above the next one's
    assert (ratings["rating_lo"].to_numpy()[:-1] > ratings["rating_hi"].to_numpy()[1:]).all()
    assert ratings["rank_lo"].tolist() == ratings["rank_hi"].tolist() == list(range(1, len(KNOWN_ORDER) + 1))
    assert result.meta["synthetic"] == result.meta["votes"] == N_VOTES and result.meta["voters"] == N_VOTERS


def write_review(root: Path, votes: pd.DataFrame) -> dict[str, Path]:
    """A review's stage inputs for the demo's models: one image per voted slot, an aesthetic value that favours the
    known order's better model on every image (so the judge agrees with every decided vote that the better one won),
    and standardize's scores in the known order."""
    paths = {k: root / k for k in ("images", "scores", "standardized")}
    slots = sorted({(r.item, int(r.seed)) for r in votes.itertuples()})
    for m in KNOWN_ORDER:
        d = paths["images"] / m
        d.mkdir(parents=True)
        rows = [{**dict.fromkeys(MANIFEST_COLUMNS, ""), "model": m, "task": "general", "item": item, "seed": seed,
                 "image": f"{m}-{item}-{seed}.png", "image_hash": f"{m}-{item}-{seed}", "prompt": item}
                for item, seed in slots]
        with open(d / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, MANIFEST_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        (paths["scores"] / m).mkdir(parents=True)
        pd.DataFrame({"model": m, "task": "general", "item": [r["item"] for r in rows], "seed": [r["seed"] for r
                      in rows], "image_hash": [r["image_hash"] for r in rows], "metric": "aesthetic",
                      "value": DEMO_STRENGTHS[m], "flags": ""}).to_csv(paths["scores"] / m / "aesthetic.csv",
                                                                      index=False)
    paths["standardized"].mkdir()
    pd.DataFrame({"model": KNOWN_ORDER, "metric": "aesthetic", "higher_is_better": True,
                  "score": np.linspace(1, -1, len(KNOWN_ORDER))}).to_csv(paths["standardized"] / "scores.csv",
                                                                        index=False)
    return paths


def test_the_arena_stage_end_to_end(tmp_path, capsys):
    from stages.arena import main

    params = tmp_path / "params.yaml"
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    data["scoring"]["judges"] = data["standardize"]["combined"] = ["aesthetic", "clipscore"]
    data["models"] = {m: data["models"][m] for m in KNOWN_ORDER}  # the models write_review lays out: those voted on
    params.write_text(yaml.safe_dump(data), encoding="utf-8")
    votes = tmp_path / "votes.csv"
    shutil.copy(VOTES, votes)
    paths = write_review(tmp_path, read_votes(votes))
    out = tmp_path / "arena"
    main(["--votes", str(votes), "--images", str(paths["images"]), "--scores", str(paths["scores"]),
          "--standardized", str(paths["standardized"]), "--out", str(out), "--params", str(params)])
    assert f"{N_VOTES} votes by {N_VOTERS} voters ({N_VOTES} synthetic" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["votes"] == N_VOTES and meta["stale"] == 0 and meta["other_models"] == 0
    judges = pd.read_csv(out / "judges.csv").set_index("judge")
    assert judges.loc["aesthetic", "n_votes"] == meta["decided"] and judges.loc["aesthetic", "kendall_tau"] == 1.0
    # the judge always picks the known order's better model: its accuracy is the share of decided votes it won
    decided = read_votes(votes).query("winner in ['model_a', 'model_b']")
    better_won = sum(DEMO_STRENGTHS[r.model_a if r.winner == "model_a" else r.model_b]
                     > DEMO_STRENGTHS[r.model_b if r.winner == "model_a" else r.model_a] for r in decided.itertuples())
    assert judges.loc["aesthetic", "accuracy"] == better_won / len(decided)
    assert judges.loc["clipscore", "n_votes"] == 0  # no clipscore rows: it calls no vote
    assert pd.read_csv(out / "pairs.csv")["votes"].sum() == N_VOTES
    assert pd.read_csv(out / "ratings.csv")["model"].tolist() == KNOWN_ORDER


def test_stale_and_foreign_votes_are_counted(tmp_path):
    votes = read_votes(VOTES).head(40).copy()
    paths = write_review(tmp_path, votes)
    from ghostreview.arena.pairs import review_images

    images = review_images(paths["images"], KNOWN_ORDER)
    votes.loc[0, "image_a"] = "an-image-redrawn-since"
    votes.loc[1, "model_a"] = "a-removed-model"  # sorts before every demo model: still the layout's model_a
    result = arena_review(votes, KNOWN_ORDER, images, {}, {}, n_boot=10, seed=0, ci=0.95)
    assert result.meta["stale"] == 1 and result.meta["other_models"] == 1 and result.meta["votes"] == 39


def test_the_report_section_states_its_basis_and_escapes_names(tmp_path):
    from ghostreview.analysis.report.arena import arena_html, read_arena
    from ghostreview.analysis.report.display import Shown

    votes = read_votes(VOTES)
    paths = write_review(tmp_path, votes)
    from ghostreview.arena.pairs import review_images
    from ghostreview.arena.review import oriented_image_values, oriented_model_scores
    from ghostreview.scoring.table import read_scores

    images = review_images(paths["images"], KNOWN_ORDER)
    per_image = oriented_image_values(read_scores(paths["scores"], KNOWN_ORDER), {"aesthetic": True})
    scores = oriented_model_scores(pd.read_csv(paths["standardized"] / "scores.csv"), ["aesthetic"])
    arena_review(votes, KNOWN_ORDER, images, per_image, scores, 50, 0, 0.95).write(tmp_path / "out")
    shown = {"aesthetic": Shown("aesthetic", "Aesthetic <b>", "", True)}
    page = arena_html(read_arena(tmp_path / "out"), shown, {"demo-sd15-a": "A <script>x</script>"})
    assert f"{N_VOTES} votes by {N_VOTERS} voters — all synthetic" in page and "not cast by people" in page
    assert "Aesthetic &lt;b&gt; rank" in page and "A &lt;script&gt;x&lt;/script&gt;" in page and "<script>" not in page
    n, pairs = len(KNOWN_ORDER), len(KNOWN_ORDER) * (len(KNOWN_ORDER) - 1) // 2  # every pair has votes
    assert page.count("<tr>") == 1 + n + 1 + 1 + 1 + pairs  # ranking (head + n), judges (head + 1), pairs (head + ..)
    no_votes = arena_review(votes.head(0), KNOWN_ORDER, images, {}, {}, 10, 0, 0.95)
    no_votes.write(tmp_path / "none")
    assert "No votes between this review's models yet" in arena_html(read_arena(tmp_path / "none"), shown, {})
