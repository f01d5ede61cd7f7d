"""The demo's synthetic votes (``data/arena/votes.csv``): drawn by this code from a known model order, not cast by
anyone, and labelled so in every row (origin ``synthetic``, voters ``synthetic-voter-NN``, ids ``synthetic-NNNN``),
so that the arena stage and the report's arena section run offline. The report says how many votes are synthetic.

The known order is :data:`DEMO_STRENGTHS` (Bradley-Terry strengths of the demo's params.yaml models); each vote
picks a general prompt of the benchmark, one of its first two seeds and two models at random, then the outcome with
probability: tie 1/10, both bad 1/20, else model_a wins with the Bradley-Terry probability 1 / (1 + e^(s_b - s_a)).
The votes name no image (``image_a``/``image_b`` empty: nobody saw one); the arena stage takes the review's image of
each slot for the judges' accuracy. tests/test_arena_demo.py checks the committed file is exactly what this writes
and that the stage recovers the order.

    python -m ghostreview.kit.arena data/arena/votes.csv
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

from ghostreview.arena.db import Vote
from ghostreview.arena.export import write_votes
from ghostreview.protocol import Benchmark, load_benchmark

# the known order, best first: the seven demo models, 0.7 apart (models of every base between each other: voters
# compare images of one prompt whatever drew them)
DEMO_STRENGTHS = {"demo-flux-dev-a": 2.1, "demo-sd15-a": 1.4, "demo-noobai-vpred-a": 0.7, "demo-sdxl-a": 0.0,
                  "demo-flux-dev-b": -0.7, "demo-noobai-vpred-b": -1.4, "demo-sd15-b": -2.1}
N_VOTES, N_VOTERS, SEEDS = 1400, 12, 2  # about 400 votes per model: the order is recovered, each interval apart
START_MS = 1_767_225_600_000  # 2026-01-01 UTC: a fixed clock, so the file is the same on every run


def outcome(rng: random.Random, a: str, b: str) -> str:
    u = rng.random()
    if u < 0.10:
        return "tie"
    if u < 0.15:
        return "both_bad"
    p = 1 / (1 + math.exp(DEMO_STRENGTHS[b] - DEMO_STRENGTHS[a]))
    return "model_a" if rng.random() < p else "model_b"


def synthetic_votes(bench: Benchmark, seed: int = 0, n: int = N_VOTES) -> list[Vote]:
    """``n`` votes between the demo's models on the benchmark's general prompts (see the module docstring)."""
    rng = random.Random(seed)
    models, prompts = sorted(DEMO_STRENGTHS), [p.id for p in bench.general]
    votes = []
    for k in range(n):
        a, b = sorted(rng.sample(models, 2))
        item, image_seed = rng.choice(prompts), bench.base_seeds["general"] + rng.randrange(SEEDS)
        at = START_MS + 5000 * k
        votes.append(Vote(f"synthetic-{k:04d}", f"synthetic-voter-{rng.randrange(N_VOTERS):02d}", "general", item,
                          image_seed, a, b, "", "", outcome(rng, a, b), rng.choice(("model_a", "model_b")),
                          "synthetic", at - 4000, at))
    return votes


def write_demo_votes(out: Path, bench: Benchmark, seed: int = 0) -> Path:
    """Write the demo's synthetic votes file."""
    return write_votes(synthetic_votes(bench, seed), out)


if __name__ == "__main__":
    print(write_demo_votes(Path(sys.argv[1]), load_benchmark(Path("data/benchmark/v1"))))
