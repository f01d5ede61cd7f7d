"""Write tests/test_arena_rank_fixture.json: a fixed vote set and LMArena's ``arena-rank`` Bradley-Terry ratings of
it, which tests/test_arena_ratings.py compares ours against (arena-rank pulls jax and is no dependency of ours).

    pip install arena-rank && python -m tools.arena_rank_fixture

The votes: 6 models with true strengths 0, 0.3, ..., 1.5 (unscaled), 40 voters, 600 votes between random pairs, the
outcome drawn from the Bradley-Terry probabilities, one in eight a tie and one in sixteen both-bad (seed 7).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent.parent / "tests" / "test_arena_rank_fixture.json"
MODELS = [f"model-{k}" for k in range(6)]


def votes(seed: int = 7, n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    strength = np.linspace(0, 1.5, len(MODELS))
    rows = []
    for _ in range(n):
        i, j = sorted(rng.choice(len(MODELS), 2, replace=False))
        u = rng.random()
        if u < 1 / 8:
            winner = "tie"
        elif u < 3 / 16:
            winner = "both_bad"
        else:
            winner = "model_a" if rng.random() < 1 / (1 + np.exp(strength[j] - strength[i])) else "model_b"
        rows.append({"model_a": MODELS[i], "model_b": MODELS[j], "winner": winner,
                     "voter": f"voter-{rng.integers(40):02d}"})
    return pd.DataFrame(rows)


def main() -> None:
    from importlib.metadata import version

    from arena_rank.models.bradley_terry import BradleyTerry
    from arena_rank.utils.data_utils import PairDataset

    table = votes()
    data = PairDataset.from_pandas(table)
    model = BradleyTerry(n_competitors=len(data.competitors))
    out = model.compute_ratings_and_cis(data, significance_level=0.05)
    doc = {"about": __doc__.splitlines()[0], "arena_rank": version("arena-rank"),
           "columns": list(table.columns), "votes": table.to_numpy().tolist(),
           "ratings": dict(zip(out["competitors"], map(float, out["ratings"]))),
           "sandwich_lo": dict(zip(out["competitors"], map(float, out["rating_lower"]))),
           "sandwich_hi": dict(zip(out["competitors"], map(float, out["rating_upper"])))}
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(table)} votes, ratings {doc['ratings']}")


if __name__ == "__main__":
    main()
