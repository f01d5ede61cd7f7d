"""Do standardize's 95% intervals cover when models do better on some prompts than others? (issue 11, item 6)

Simulated reviews of the shape the issue measured: 4 models x 30 prompts x 8 seeds, one metric, image value
x[i, m, s] = a[i] + mu[m] + g[i, m] + e[i, m, s] with prompt effect a ~ N(0, 1), model-by-prompt interaction
g ~ N(0, 0.5^2) (half the image noise) and image noise e ~ N(0, 1). Models A and B are equal (mu = 0), C and D are
better (0.25, 0.5).

The truth is what standardize reports, over the population of prompts of this kind: the mean per-prompt z of each
model (z within a prompt over its 4 x 8 images, population std), averaged over 200,000 prompts drawn the same way
(Monte Carlo error 0.001, against interval half-widths near 0.16 for a model and 0.26 for a difference). Its z formula
is checked against the library's point scores on one review, so the truth is on the scale standardize reports. With
1,024 seeds per prompt instead of 8 the truth moved by less than its Monte Carlo error (0.007 on 4,000 prompts).

The intervals are the library's own: ``image_table``, ``estimates`` (the bootstrap draw), ``estimate_rows`` (per-model
percentile intervals) and ``pairwise_rows`` (P(A beats B)); a difference's interval is the percentile interval of the
library's resampled differences. "A beats B" is declared when P(A beats B) >= 0.95, so two equal models are declared
different (either way) 10% of the time at nominal level.

Noise of the estimates: over 500 reviews (2,000 per-model and 3,000 difference intervals, correlated within a review)
the standard error of a coverage, from the spread of per-review coverages, is 0.006, and of the false-positive rate
0.013. On 2,000 other reviews the coverages were 0.941 and 0.939 (normal theory for 30 prompts: 0.940), so 0.92 lies
3 standard errors below the expected value; before resampling whole items they were 0.855 and 0.807, and equal models
were declared different 28% of the time. Deterministic: one fixed seed for the data and seed=review for each
bootstrap.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from ghostreview.analysis.standardize import estimate_rows, estimates, image_table, pairwise_rows, standardize

MODELS = ("A", "B", "C", "D")
MU = np.array([0.0, 0.0, 0.25, 0.5])
PROMPTS, SEEDS = 30, 8
INTERACTION_SD = 0.5
REVIEWS, N_BOOT, CI = 500, 1000, 0.95
BEATS = 0.95  # P(A beats B) at or above which a review says "A beats B"
NOMINAL_FALSE = 2 * (1 - BEATS)  # equal models declared different either way
PAIRS = list(itertools.combinations(range(len(MODELS)), 2))


@dataclass(frozen=True)
class Info:
    """Stand-in for ghostreview.scoring.metric.MetricInfo (only what standardize reads: MetricLike)."""

    higher_is_better: bool
    grouped_by: str


METRICS = {"aesthetic": Info(True, "prompt")}
MODEL_TABLE = pd.DataFrame({"model": list(MODELS), "family": "sd1"})


def draw(rng: np.random.Generator, n_prompts: int) -> np.ndarray:
    """Image values [n_prompts, models, seeds] of the model above."""
    prompt = rng.normal(size=(n_prompts, 1, 1))
    interaction = rng.normal(0.0, INTERACTION_SD, size=(n_prompts, len(MODELS), 1))
    return prompt + MU[None, :, None] + interaction + rng.normal(size=(n_prompts, len(MODELS), SEEDS))


def mean_prompt_z(x: np.ndarray) -> np.ndarray:
    """[models]: mean over prompts of each model's mean z, z within a prompt over all its images (ddof=0)."""
    z = (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)
    return z.mean(axis=2).mean(axis=0)


def population_truth(rng: np.random.Generator, n_prompts: int = 200_000, chunk: int = 50_000) -> np.ndarray:
    """[models]: ``mean_prompt_z`` over ``n_prompts`` fresh prompts, drawn in chunks to bound memory."""
    return np.mean([mean_prompt_z(draw(rng, chunk)) for _ in range(n_prompts // chunk)], axis=0)


def score_table(data: np.ndarray) -> pd.DataFrame:
    """Tidy score rows of reviews' values [reviews, prompts, models, seeds]; review r's prompts are items r###-p##.

    One table holds all reviews (z groups are items, so one ``image_table`` call gives each review's own z); review
    r's rows are the r-th block of prompts x models x seeds rows.
    """
    r, i, m, s = (a.ravel() for a in np.meshgrid(*map(np.arange, data.shape), indexing="ij"))
    return pd.DataFrame({
        "model": np.asarray(MODELS)[m], "task": "general", "item": [f"r{a:03d}-p{b:02d}" for a, b in zip(r, i)],
        "seed": s, "image_hash": [f"{a}-{b}-{c}-{d}" for a, b, c, d in zip(r, m, i, s)], "metric": "aesthetic",
        "value": data.ravel(), "flags": "",
    })


def review(images: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One review's image rows -> per-model intervals [M, 2], difference intervals [pairs, 2], P(A>B), P(B>A)."""
    (e, *_), _ = estimates(images, list(MODELS), METRICS, {}, n_boot=N_BOOT, seed=seed, lora_metric="loraloss")
    rows = estimate_rows(e, MODELS, CI)
    diffs = np.stack([e.boot[:, a] - e.boot[:, b] for a, b in PAIRS], axis=1)
    diff_ci = np.percentile(diffs, [50 * (1 - CI), 50 * (1 + CI)], axis=0).T
    pw = pairwise_rows(e, MODELS).set_index(["model_a", "model_b"])["p_a_beats_b"]
    return rows[["lo", "hi"]].to_numpy(), diff_ci, np.array([pw[("A", "B")], pw[("B", "A")]])


@pytest.fixture(scope="module")
def simulated():
    rng = np.random.default_rng(20260611)
    truth = population_truth(rng)
    data = draw(rng, REVIEWS * PROMPTS).reshape(REVIEWS, PROMPTS, len(MODELS), SEEDS)
    images, _ = image_table(score_table(data), MODEL_TABLE, METRICS)
    n = PROMPTS * len(MODELS) * SEEDS
    blocks = images["item"].str.slice(0, 4).to_numpy().reshape(REVIEWS, n)
    assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0])) == REVIEWS  # row order kept: block r = review r
    return truth, data, [review(images.iloc[r * n:(r + 1) * n], seed=r) for r in range(REVIEWS)]


def test_truth_is_on_the_scale_standardize_reports(simulated):
    truth, data, results = simulated
    r = standardize(score_table(data[:1]), MODEL_TABLE, METRICS, {}, n_boot=N_BOOT, seed=0)
    reported = r.scores[r.scores["metric"] == "aesthetic"].set_index("model").loc[list(MODELS)]
    np.testing.assert_allclose(reported["score"], mean_prompt_z(data[0]), atol=1e-12)
    np.testing.assert_allclose(reported[["lo", "hi"]], results[0][0], atol=1e-12)  # what standardize publishes
    assert truth[0] == pytest.approx(truth[1], abs=0.005) and truth[3] > truth[2] > truth[0] + 0.1


def test_intervals_cover_the_population_of_prompts(simulated):
    truth, _, results = simulated
    diff_truth = np.array([truth[a] - truth[b] for a, b in PAIRS])
    per_model = np.mean([(ci[:, 0] <= truth) & (truth <= ci[:, 1]) for ci, _, _ in results])
    per_diff = np.mean([(ci[:, 0] <= diff_truth) & (diff_truth <= ci[:, 1]) for _, ci, _ in results])
    false_beats = np.mean([p.max() >= BEATS for _, _, p in results])
    print(f"coverage: per-model {per_model:.3f}, differences {per_diff:.3f}; "
          f"equal models declared different {false_beats:.3f} (nominal {NOMINAL_FALSE:.2f})")
    assert 0.92 <= per_model <= 0.98
    assert 0.92 <= per_diff <= 0.98
    assert false_beats <= 2 * NOMINAL_FALSE
