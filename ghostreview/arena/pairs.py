"""Which two images the arena shows next, and the images it may show.

The images: every unflagged image of the review's manifests, grouped by benchmark slot (task, item, seed); two
models meet on every slot both have an image of (the same benchmark item and seed; the page shows the prompt of
``model_a``, which differs from the other's only by a base's prompt prefix, data/benchmark/v1/bases.yaml). LoRA
items are family-specific (SDXL's names end in _xl), so only models of one family meet on them.

The rule (:class:`PairChooser`):
1. Balance first. While some model pair has fewer than ``warmup`` votes, the next pair is drawn uniformly among the
   model pairs with the fewest votes.
2. Then toward uncertain orders. A model pair with n votes and s = wins of the first + half its ties (both-bad counts
   as a tie, as in LMArena's outcome map) is drawn with weight max(floor, p), p = erfc(|s - n/2| / sqrt(n/2)), the
   two-sided p-value of "this pair is a coin toss" under the normal approximation: pairs whose order the votes
   have not settled are drawn most, and the floor keeps every pair drawn now and then, so every pair keeps getting
   votes (tests/test_arena_pairs.py checks both).
Within the model pair, the slot is drawn uniformly among the slots that pair has been shown on least (balance over
items and seeds), and the sides are drawn at random by the server.
"""

from __future__ import annotations

import math
import random
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

Slot = tuple[str, str, int]  # (task, item, seed)


@dataclass(frozen=True)
class ArenaImage:
    """One image the arena may show: its model, slot, content hash (the manifest's image_hash), file and prompt."""

    model: str
    slot: Slot
    image_hash: str
    path: Path
    prompt: str


def arena_images(manifests: Mapping[str, Iterable[Mapping[str, str]]], images_dir: Path) -> list[ArenaImage]:
    """The unflagged images of each model's manifest rows (``data/images/<model>/manifest.csv``); a flagged image
    (black, nan, an unusable LoRA) is never shown."""
    out = []
    for model, rows in manifests.items():
        for r in rows:
            if r["flags"]:
                continue
            slot = (r["task"], r["item"], int(r["seed"]))
            out.append(ArenaImage(model, slot, r["image_hash"], Path(images_dir) / model / r["image"], r["prompt"]))
    return out


def model_pairs(images: Sequence[ArenaImage]) -> dict[tuple[str, str], list[Slot]]:
    """{(a, b) with a < b: the slots both have an image of, sorted}: where two models can meet."""
    by_slot: dict[Slot, dict[str, ArenaImage]] = {}
    for im in images:
        by_slot.setdefault(im.slot, {})[im.model] = im
    pairs: dict[tuple[str, str], list[Slot]] = {}
    for slot in sorted(by_slot):
        shown = by_slot[slot]
        names = sorted(shown)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pairs.setdefault((a, b), []).append(slot)
    return pairs


def coin_toss_p(n: float, s: float) -> float:
    """Two-sided normal-approximation p-value of s successes in n trials under p = 1/2 (1.0 with no trial)."""
    return 1.0 if n <= 0 else math.erfc(abs(s - n / 2) / math.sqrt(n / 2))


class PairChooser:
    """The next (slot, model a, model b) to show; :meth:`record` each stored vote (thread-safe)."""

    def __init__(self, pairs: Mapping[tuple[str, str], Sequence[Slot]], rng: random.Random,
                 warmup: int = 5, floor: float = 0.05) -> None:
        if not pairs:
            raise ValueError("no two models have an image of the same benchmark item and seed: nothing to compare "
                             "(the arena needs two generated models or more)")
        self.pairs = {k: list(v) for k, v in pairs.items()}
        self.rng, self.warmup, self.floor = rng, warmup, floor
        self.n: Counter[tuple[str, str]] = Counter()
        self.s: dict[tuple[str, str], float] = defaultdict(float)  # wins of a + half the ties
        self.shown: Counter[tuple[tuple[str, str], Slot]] = Counter()
        self._lock = threading.Lock()

    def record(self, a: str, b: str, slot: Slot, winner: str) -> None:
        """Count one vote of ``winner`` (db.WINNERS) between a < b on ``slot``."""
        with self._lock:
            self.n[(a, b)] += 1
            self.s[(a, b)] += {"model_a": 1.0, "model_b": 0.0}.get(winner, 0.5)
            self.shown[((a, b), slot)] += 1

    def weights(self) -> dict[tuple[str, str], float]:
        """Each model pair's draw weight now (the rule in the module docstring)."""
        keys = sorted(self.pairs)
        least = min(self.n[k] for k in keys)
        if least < self.warmup:
            return {k: float(self.n[k] == least) for k in keys}
        return {k: max(self.floor, coin_toss_p(self.n[k], self.s[k])) for k in keys}

    def choose(self) -> tuple[Slot, str, str]:
        with self._lock:
            w = self.weights()
            keys = list(w)
            pair = self.rng.choices(keys, weights=[w[k] for k in keys])[0]
            slots = self.pairs[pair]
            fewest = min(self.shown[(pair, s)] for s in slots)
            slot = self.rng.choice([s for s in slots if self.shown[(pair, s)] == fewest])
        return slot, pair[0], pair[1]


def review_images(images_dir: Path, models: Sequence[str]) -> list[ArenaImage]:
    """:func:`arena_images` of the review's models, from ``<images_dir>/<model>/manifest.csv`` (generate's
    output; a missing one fails naming the model and the fix)."""
    from ghostreview.generation.manifest import read_manifest

    return arena_images({m: read_manifest(Path(images_dir) / m) for m in models}, Path(images_dir))
