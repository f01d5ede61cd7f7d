"""Pair choice: balanced first, then toward the least settled pairs, and every pair keeps being drawn."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

from ghostreview.arena.pairs import ArenaImage, PairChooser, arena_images, coin_toss_p, model_pairs

SLOTS = [("general", "p1", 0), ("general", "p1", 1), ("general", "p2", 0)]


def chooser(models=("a", "b", "c", "d"), warmup=5, seed=0) -> PairChooser:
    pairs = {(x, y): list(SLOTS) for i, x in enumerate(models) for y in models[i + 1:]}
    return PairChooser(pairs, random.Random(seed), warmup=warmup)


def test_model_pairs_meet_on_the_slots_both_have():
    """The same item and seed; a base's prompt prefix ("score_9, cat") does not keep two models apart."""
    im = [ArenaImage("a", SLOTS[0], "1", Path("x"), "cat"), ArenaImage("b", SLOTS[0], "2", Path("x"), "cat"),
          ArenaImage("c", SLOTS[0], "3", Path("x"), "score_9, cat"), ArenaImage("c", SLOTS[1], "4", Path("x"), "cat")]
    assert model_pairs(im) == {("a", "b"): [SLOTS[0]], ("a", "c"): [SLOTS[0]], ("b", "c"): [SLOTS[0]]}


def test_flagged_images_are_never_shown():
    rows = [{"task": "general", "item": "p1", "seed": "0", "image_hash": "h", "image": "h.png", "prompt": "cat",
             "flags": ""}, {"task": "general", "item": "p1", "seed": "1", "image_hash": "k", "image": "k.png",
                            "prompt": "cat", "flags": "black"}]
    (only,) = arena_images({"m": rows}, Path("data/images"))
    assert only.slot == ("general", "p1", 0) and only.path == Path("data/images/m/h.png")


def test_warmup_is_balanced_over_model_pairs_and_slots():
    c = chooser(warmup=3)
    for _ in range(6 * 3):  # 6 model pairs x warmup 3
        slot, a, b = c.choose()
        c.record(a, b, slot, "model_a")
    assert set(c.n.values()) == {3} and len(c.n) == 6
    assert all(c.shown[(p, s)] == 1 for p in c.pairs for s in SLOTS)  # each pair once on each of its 3 slots


def test_after_warmup_unsettled_pairs_are_drawn_most_and_every_pair_keeps_coming():
    c = chooser(warmup=5)
    drawn: Counter = Counter()
    for _ in range(3000):
        slot, a, b = c.choose()
        drawn[(a, b)] += 1
        # a beats everyone else, always: its pairs settle fast; b, c, d are coin tosses among themselves
        winner = "model_a" if a == "a" else random.Random(len(c.n) + c.n[(a, b)]).choice(["model_a", "model_b"])
        c.record(a, b, slot, winner)
    settled = [drawn[("a", x)] for x in "bcd"]
    tossups = [drawn[p] for p in (("b", "c"), ("b", "d"), ("c", "d"))]
    assert max(settled) < min(tossups) / 3
    assert min(settled) >= 30  # the floor: settled pairs are still drawn


def test_coin_toss_p():
    assert coin_toss_p(0, 0) == 1.0 and coin_toss_p(10, 5) == 1.0
    assert math.isclose(coin_toss_p(100, 60), math.erfc(10 / math.sqrt(50)))
    assert coin_toss_p(100, 100) < 1e-20
