"""The score store and the score stage's scorers: each value is computed once per identity, and read back bit for bit.

A fake scorer counts what it is asked to compute; the real scorers run on the kit's tiny CLIP and head and are
compared with the metric functions called directly.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from PIL import Image

from ghostreview.kit.scorers import write_tiny_clip, write_tiny_laion_head
from ghostreview.scoring import aesthetic
from ghostreview.scoring.clip import image_embeddings, load_clip
from ghostreview.scoring.metric import MetricInfo
from ghostreview.scoring.run import ClipSpec, open_images
from ghostreview.scoring.scorers import (
    AestheticScorer,
    ClipScoreScorer,
    ClipTower,
    DiversityScorer,
    PerImage,
    decode,
    encode,
    score_model,
)
from ghostreview.scoring.store import ScoreStore, ScoreStoreError, identity_key


def info(name: str) -> MetricInfo:
    return MetricInfo(name, "1", True, "u", "prompt", "test metric", name.title(), name)


class Counting(PerImage):
    """A scorer whose value is a function of the image hash and its ``setting``; it records every row it computes."""

    def __init__(self, name: str, setting: int = 0, fail: bool = False):
        self.info, self.setting, self.fail = info(name), setting, fail
        self.weights_sha256 = "w" * 64
        self.asked: list[str] = []

    def identity(self, row: Mapping) -> Mapping:
        return {"metric": self.info.name, "setting": self.setting}

    def compute(self, rows: Sequence[Mapping]) -> list:
        if self.fail:
            raise RuntimeError("killed")
        self.asked += [r["image_hash"] for r in rows]
        return [({self.info.name: int(r["image_hash"][1:]) + self.setting / 3}, ()) for r in rows]


def rows(n: int) -> list[dict]:
    return [{"model": "m", "task": "general", "item": f"p{i}", "seed": "0", "image": f"{i}.png",
             "image_hash": f"h{i}", "prompt": f"a photo of thing {i}", "flags": ""} for i in range(n)]


def test_a_value_is_computed_once_and_read_back_exactly(tmp_path):
    path = tmp_path / "scores.sqlite"
    a, b = Counting("a"), Counting("b")
    with ScoreStore(path) as store:
        first = score_model(rows(3), [a, b], store)
    assert a.asked == b.asked == ["h0", "h1", "h2"]
    a2, b2 = Counting("a"), Counting("b")
    with ScoreStore(path) as store:  # another run, another process's view: the file is what persists
        again = score_model(rows(4), [a2, b2], store)
        assert store.summary(["a", "b"]) == "a 1 computed, 3 from the store; b 1 computed, 3 from the store"
    assert a2.asked == b2.asked == ["h3"]  # only the new image
    assert [r["value"] for r in again["a"][:3]] == [r["value"] for r in first["a"]]  # bit for bit (floats, ==)
    assert first["a"][1]["value"] == 1 + 0 / 3 and again["a"][3]["value"] == 3.0


def test_a_new_setting_of_one_scorer_recomputes_that_scorer_only(tmp_path):
    path = tmp_path / "scores.sqlite"
    with ScoreStore(path) as store:
        score_model(rows(3), [Counting("a"), Counting("b")], store)
    a, b, c = Counting("a"), Counting("b", setting=1), Counting("c")  # b's setting changed, c is a new judge
    with ScoreStore(path) as store:
        out = score_model(rows(3), [a, b, c], store)
    assert a.asked == [] and b.asked == c.asked == ["h0", "h1", "h2"]
    assert out["b"][0]["value"] == 1 / 3


def test_a_scorer_that_finished_is_kept_when_a_later_one_fails(tmp_path):
    path = tmp_path / "scores.sqlite"
    with ScoreStore(path) as store, pytest.raises(RuntimeError, match="killed"):
        score_model(rows(2), [Counting("a"), Counting("b", fail=True)], store)
    a = Counting("a")
    with ScoreStore(path) as store:
        score_model(rows(2), [a], store)
    assert a.asked == []


def test_keys_are_canonical_and_recorded_in_clear(tmp_path):
    assert identity_key({"x": 1, "y": [1, 2]}) == identity_key({"y": [1, 2], "x": 1})
    assert identity_key({"x": 1}) != identity_key({"x": 1.5})
    with ScoreStore(tmp_path / "s.sqlite") as store:
        key = store.key({"metric": "a", "weights": "ab"})
    db = sqlite3.connect(tmp_path / "s.sqlite")
    stored = db.execute("SELECT identity FROM keys WHERE key = ?", (key,)).fetchone()
    assert stored == ('{"metric":"a","weights":"ab"}',)
    value = ({"styleloss": 0.1 + 0.2, "styleloss.relu1_1": float("nan")}, ("text_truncated",))
    back = decode(encode(value))
    assert back[0]["styleloss"] == 0.1 + 0.2 and np.isnan(back[0]["styleloss.relu1_1"]) and back[1] == value[1]


def test_a_file_that_is_not_a_store_is_refused_naming_it_and_the_fix(tmp_path):
    bad = tmp_path / "scores.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ScoreStoreError, match=r"scores\.sqlite is not a usable score store .*delete .*scores\.sqlite"):
        ScoreStore(bad)
    other = tmp_path / "other.sqlite"
    ScoreStore(other).close()
    db = sqlite3.connect(other)
    with db:
        db.execute("UPDATE meta SET value = '99' WHERE name = 'schema'")
    db.close()
    with pytest.raises(ScoreStoreError, match="schema 99"):
        ScoreStore(other)


@pytest.fixture
def images(tmp_path):
    out = tmp_path / "images"
    out.mkdir()
    manifest = rows(5)
    for i, row in enumerate(manifest):
        pixels = np.random.default_rng(i).integers(0, 256, (24 + 4 * i, 32, 3), np.uint8)
        Image.fromarray(pixels).save(out / row["image"])
    return out, manifest


def test_the_clip_scorers_equal_the_metric_functions_and_share_one_embedding_per_image(tmp_path, images):
    images_dir, manifest = images
    arch, weights, config = write_tiny_clip(tmp_path / "clip", seed=0)
    head = write_tiny_laion_head(tmp_path / "head.pth", seed=0)
    spec = ClipSpec(arch, weights, model_config=config)
    with ScoreStore(tmp_path / "scores.sqlite") as store:
        tower = ClipTower(spec, images_dir, 4, store, tmp_path / "sha256.json")
        out = score_model(manifest, [AestheticScorer(tower, head, None, tmp_path / "sha256.json"),
                                     ClipScoreScorer(tower)], store)
        assert store.computed["clip image embeddings"] == 5  # once, for both metrics
    clip = load_clip(arch, weights, model_config=config)
    emb = image_embeddings(clip, open_images(images_dir, manifest), 4)
    expected = aesthetic.aesthetic_scores(emb, aesthetic.load_head(head))
    assert [r["value"] for r in out["aesthetic"]] == [float(v) for v in expected]
    assert {r["metric"] for r in out["clipscore"]} == {"clipscore"} and len(out["clipscore"]) == 5
    assert out["aesthetic"][0]["weights_sha256"].endswith(f"+{tower.weights_sha256}")


def test_seed_diversity_is_the_mean_pairwise_cosine_distance_per_prompt_from_the_stored_embeddings(tmp_path, images):
    images_dir, manifest = images
    for row, item in zip(manifest, ("p", "p", "p", "q", "r")):  # prompt p: 3 seeds, q: 1 (no value), r: 1
        row["item"], row["seed"] = item, str(manifest.index(row))
    manifest[4]["item"] = "q"  # q: 2 seeds; r gone
    manifest[3]["flags"] = "black"
    arch, weights, config = write_tiny_clip(tmp_path / "clip", seed=0)
    spec = ClipSpec(arch, weights, model_config=config)
    with ScoreStore(tmp_path / "scores.sqlite") as store:
        tower = ClipTower(spec, images_dir, 4, store, tmp_path / "sha256.json")
        out = score_model(manifest, [DiversityScorer(tower)], store)["diversity"]
        again = score_model(manifest, [DiversityScorer(tower)], store)["diversity"]
        assert store.computed["diversity"] == 2 and store.reused["diversity"] == 2
    assert again == out
    emb = image_embeddings(load_clip(arch, weights, model_config=config), open_images(images_dir, manifest), 4)
    e = emb.astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    p = np.mean([1 - e[i] @ e[j] for i, j in ((0, 1), (0, 2), (1, 2))])
    q = 1 - e[3] @ e[4]
    by_item = {r["item"]: r for r in out}
    assert set(by_item) == {"p", "q"} and all(r["seed"] == -1 for r in out)
    np.testing.assert_allclose([by_item["p"]["value"], by_item["q"]["value"]], [p, q], rtol=1e-12)
    assert by_item["q"]["flags"] == "black" and by_item["p"]["flags"] == ""  # a set with a flagged image is flagged
    assert by_item["p"]["image_hash"] != by_item["q"]["image_hash"]


def test_identical_seeds_have_zero_diversity():
    from ghostreview.scoring.diversity import seed_diversity

    v = np.random.default_rng(0).normal(size=(1, 8))
    assert seed_diversity(np.repeat(v, 3, axis=0)) == pytest.approx(0, abs=1e-12)
    assert seed_diversity(np.array([[1.0, 0], [-1.0, 0]])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 2"):
        seed_diversity(v)


def test_an_empty_metric_table_leaves_the_values_numeric(tmp_path):
    """A metric with no rows for a model (diversity with one seed per prompt) writes an empty table; read with the
    others, the value column stays float (an untyped empty frame would make it object and break the plots)."""
    from ghostreview.scoring.table import read_scores, score_rows, write_scores

    write_scores(tmp_path / "m" / "aesthetic.csv", score_rows(rows(2), "aesthetic", [1.5, 2.5], "1", "w"))
    write_scores(tmp_path / "m" / "diversity.csv", [])
    scores = read_scores(tmp_path, ["m"])
    assert len(scores) == 2 and scores["value"].dtype == np.float64
