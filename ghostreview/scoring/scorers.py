"""The score stage's scorers: one contract for every metric, the CLIP tower they share, and the store around them.

A :class:`Scorer` says which manifest rows it scores (``selects``), what besides the image determines a row's value
(``identity``: the score store's key, see ``ghostreview.scoring.store``) and how to compute the values of rows the
store lacks (``compute``). :func:`score_model` plans every scorer first (identities, so that a missing reference
statistics file or a wrong weights hash stops the stage before any model loads), then reads what the store holds
and computes only the rest; a scorer whose values are all stored loads no model at all.

A value is ``({metric: float, ...}, extra flags)``: StyleLoss also returns its per-layer diagnostics
(``styleloss.relu1_1``...), CLIPScore flags a prompt cut at the text tower's context (``text_truncated``).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ghostreview.generation.prompts import plain_text
from ghostreview.scoring import aesthetic, clipscore, diversity, styleloss
from ghostreview.scoring.clip import ClipModel, image_embeddings, text_embeddings
from ghostreview.scoring.metric import MetricInfo
from ghostreview.scoring.run import ClipSpec, VggSpec, check_refstats, counted, open_images, refstats_path
from ghostreview.scoring.store import ScoreStore
from ghostreview.scoring.table import score_rows
from ghostreview.scoring.weights import verify_weights
from ghostreview.util.hashing import file_sha256
from ghostreview.util.runtime import pick_device, progress_bar

Row = Mapping[str, Any]  # a manifest row (text values); a set metric's unit also holds its members
Value = tuple[dict[str, float], tuple[str, ...]]


class Scorer(Protocol):
    """One metric of the score stage (the contract every judge implements).

    units: what it gives a value to, from a model's drawable manifest rows: for a per-image metric the rows it
    selects (:class:`PerImage`); for a metric of a set of images (seed diversity) one row per set, whose
    ``image_hash`` addresses the set. identity: the store key's content for one unit; compute: the values of units.
    """

    info: MetricInfo

    @property
    def weights_sha256(self) -> str: ...  # provenance written in every score row

    def units(self, rows: Sequence[Row]) -> list[Row]: ...

    def identity(self, row: Row) -> Mapping: ...

    def compute(self, rows: Sequence[Row]) -> list[Value]: ...


class PerImage:
    """A metric with one value per image: its units are the rows ``selects`` keeps."""

    def selects(self, row: Row) -> bool:
        return True

    def units(self, rows: Sequence[Row]) -> list[Row]:
        return [r for r in rows if self.selects(r)]


def compute_context(device: str) -> dict:
    """What, besides the inputs, fixes a forward's bits: the device kind (a GPU's name), and on the CPU the thread
    count (kernels are chosen by shape and threads; the batch size is in each identity)."""
    import torch

    picked = pick_device(device)  # an unusable device stops here, before any model loads
    if picked.startswith("cuda"):
        return {"device": torch.cuda.get_device_name(torch.device(picked))}
    return {"device": picked.split(":")[0], "threads": torch.get_num_threads()}


def encode(value: Value) -> bytes:
    return json.dumps([value[0], list(value[1])], separators=(",", ":")).encode()


def decode(payload: bytes) -> Value:
    values, flags = json.loads(payload)
    return {k: float(v) for k, v in values.items()}, tuple(flags)


# ------------------------------------------------------------------------------------------------------ CLIP tower


class ClipTower:
    """The CLIP that aesthetic and CLIPScore read: its image embeddings go through the store (computed once per image
    for both metrics), and the model loads only when an embedding or a text embedding is missing."""

    def __init__(self, spec: ClipSpec, images_dir: Path, batch_size: int, store: ScoreStore, hash_cache: Path):
        self.spec, self.images_dir, self.batch_size, self.store = spec, images_dir, batch_size, store
        self.hash_cache = hash_cache
        self.weights_sha256 = verify_weights(spec.weights, spec.sha256, cache_file=hash_cache)
        self._held: dict[str, bytes] = {}  # this run's embeddings (aesthetic and CLIPScore read the same ones)
        config = file_sha256(spec.model_config) if spec.model_config else None
        self.identity = {"feature": "clip image embedding", "arch": spec.arch, "weights": self.weights_sha256,
                         "model_config": config, "batch_size": batch_size, **compute_context(spec.device)}

    @cached_property
    def model(self) -> ClipModel:
        return self.spec.load(self.hash_cache)

    def image_embeddings(self, rows: Sequence[Row]) -> np.ndarray:
        """[len(rows), D] float32 embeddings, the stored ones read back and the rest computed and stored."""
        key = self.store.key(self.identity)
        hashes = [r["image_hash"] for r in rows]
        found = {h: self._held[h] for h in hashes if h in self._held}
        read = self.store.get(key, (h for h in hashes if h not in found))
        found.update(read)
        missing = [r for r in dict((r["image_hash"], r) for r in rows).values() if r["image_hash"] not in found]
        if missing:
            with progress_bar(total=len(missing), desc="clip image embeddings", unit="img") as bar:
                emb = image_embeddings(self.model, open_images(self.images_dir, missing), self.batch_size,
                                       progress=bar.update)
            new = {r["image_hash"]: e.tobytes() for r, e in zip(missing, emb, strict=True)}
            self.store.put(key, new)
            found.update(new)
        self._held.update(found)
        self.store.count("clip image embeddings", len(missing), len(read))
        return np.stack([np.frombuffer(found[h], np.float32) for h in hashes]) if hashes else np.zeros((0, 0))


class AestheticScorer(PerImage):
    """LAION aesthetic v2: the head on the tower's image embeddings, every image."""

    info = aesthetic.INFO

    def __init__(self, tower: ClipTower, head: Path, head_sha256: str | None, hash_cache: Path):
        self.tower, self.head = tower, head
        self.head_sha256 = verify_weights(head, head_sha256, cache_file=hash_cache)
        self.weights_sha256 = f"{self.head_sha256}+{tower.weights_sha256}"
        self._identity = {"metric": self.info.name, "version": self.info.version, "head": self.head_sha256,
                          "embedding": tower.identity}

    def identity(self, row: Row) -> Mapping:
        return self._identity

    def compute(self, rows: Sequence[Row]) -> list[Value]:
        emb = self.tower.image_embeddings(rows)
        with progress_bar(total=len(rows), desc=self.info.name, unit="img") as bar:  # one call: the head is tiny
            values = aesthetic.aesthetic_scores(emb, aesthetic.load_head(self.head))
            bar.update(len(rows))
        return [({self.info.name: float(v)}, ()) for v in values]


class ClipScoreScorer(PerImage):
    """CLIPScore of every general-prompt image against its prompt's plain text (A1111 syntax removed)."""

    info = clipscore.INFO

    def __init__(self, tower: ClipTower):
        self.tower = tower
        self.weights_sha256 = tower.weights_sha256

    def selects(self, row: Row) -> bool:
        return row["task"] == "general"

    def identity(self, row: Row) -> Mapping:
        return {"metric": self.info.name, "version": self.info.version, "embedding": self.tower.identity,
                "text": plain_text(row["prompt"])}

    def compute(self, rows: Sequence[Row]) -> list[Value]:
        image = self.tower.image_embeddings(rows)
        texts = [plain_text(r["prompt"]) for r in rows]
        with progress_bar(total=len(set(texts)), desc=self.info.name, unit="prompt") as bar:
            text, truncated = text_embeddings(self.tower.model, texts, self.tower.batch_size, progress=bar.update)
        values = clipscore.clip_scores(image, text)
        return [({self.info.name: float(v)}, ("text_truncated",) if t else ()) for v, t in zip(values, truncated)]


# ------------------------------------------------------------------------------------------------------- StyleLoss


class StyleScorer(PerImage):
    """Gatys StyleLoss of each style (task "style") or LoRA (task "lora") image against its reference set's Gram
    statistics, plus the per-layer losses; the set's statistics file (its sha256) is part of each row's identity, so
    new references for one style recompute that style's values only."""

    def __init__(self, task: str, spec: VggSpec, images_dir: Path, refstats: Path, image_size: int, batch_size: int,
                 hash_cache: Path):
        self.task, self.spec, self.images_dir, self.refstats = task, spec, images_dir, refstats
        self.image_size, self.batch_size, self.hash_cache = image_size, batch_size, hash_cache
        self.info = styleloss.INFO if task == "style" else styleloss.LORA_INFO
        self.weights_sha256 = verify_weights(spec.weights, spec.sha256, cache_file=hash_cache)
        self._base = {"metric": self.info.name, "version": self.info.version, "vgg": self.weights_sha256,
                      "image_size": image_size, "batch_size": batch_size, **compute_context(spec.device)}
        self._ref_sha: dict[Path, str] = {}

    def selects(self, row: Row) -> bool:
        return row["task"] == self.task

    def ref_sha(self, path: Path, row: Row) -> str:
        if path not in self._ref_sha:
            check_refstats(path, self.task, row, self.image_size)
            self._ref_sha[path] = file_sha256(path)
        return self._ref_sha[path]

    def identity(self, row: Row) -> Mapping:
        path = refstats_path(self.refstats, self.task, row)
        return {**self._base, "refstats": self.ref_sha(path, row)}

    def compute(self, rows: Sequence[Row]) -> list[Value]:
        vgg, _ = self.spec.load(self.hash_cache)
        device = next(vgg.parameters()).device
        paths = [refstats_path(self.refstats, self.task, r) for r in rows]
        refs = {p: styleloss.load_ref_stats(p).to(device) for p in dict.fromkeys(paths)}
        name = self.info.name
        out: list[Value] = []
        with progress_bar(total=len(rows), desc=name, unit="img") as bar:
            grams = styleloss.image_grams(vgg, open_images(self.images_dir, rows), self.image_size, self.batch_size)
            for path, image in zip(paths, counted(grams, bar), strict=True):
                loss, per_layer = styleloss.style_loss([g[None] for g in image], refs[path])
                layers = per_layer[0].cpu().numpy()
                out.append(({name: float(loss[0]), **{f"{name}.{layer}": float(v)
                                                      for layer, v in zip(styleloss.LAYERS, layers, strict=True)}},
                            ()))
        return out


class DiversityScorer:
    """Seed diversity of each general prompt with two or more seeds, from the tower's stored image embeddings (see
    ``ghostreview.scoring.diversity``). A unit is the set of the prompt's images: seed -1 ("every seed"), image_hash
    the sha256 of the members' sorted hashes (a new or redrawn seed is a new set), flags the union of the members'
    (a set holding a flagged image is excluded downstream like the image)."""

    info = diversity.INFO

    def __init__(self, tower: ClipTower):
        self.tower = tower
        self.weights_sha256 = tower.weights_sha256
        self._identity = {"metric": self.info.name, "version": self.info.version, "embedding": tower.identity}

    def units(self, rows: Sequence[Row]) -> list[Row]:
        sets: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            if row["task"] == "general":
                sets[row["item"]].append(row)
        out: list[Row] = []
        for members in sets.values():
            if len(members) < 2:
                continue
            hashes = sorted(m["image_hash"] for m in members)
            flags = sorted({f for m in members for f in m.get("flags", "").split(";") if f})
            out.append({**members[0], "seed": "-1", "image": "", "flags": ";".join(flags), "members": members,
                        "image_hash": hashlib.sha256("\n".join(hashes).encode()).hexdigest()})
        return out

    def identity(self, row: Row) -> Mapping:
        return self._identity

    def compute(self, rows: Sequence[Row]) -> list[Value]:
        return [({self.info.name: diversity.seed_diversity(self.tower.image_embeddings(unit["members"]))}, ())
                for unit in rows]


# ------------------------------------------------------------------------------------------- preference judges


class JudgeModel(Protocol):
    """What a loaded preference judge is for its scorer: ``hpsv21.HpsModel``, ``pickscore.PickModel``."""

    @property
    def weights_sha256(self) -> str: ...


class JudgeSpec(Protocol):
    """Where a judge loads from: ``hpsv21.HpsSpec``, ``pickscore.PickSpec``."""

    @property
    def device(self) -> str: ...

    def load(self, hash_cache: Path | None = None) -> JudgeModel: ...


JudgeScores = Callable[..., tuple[np.ndarray, list[bool]]]  # (judge, images, prompts, batch_size, progress)


class JudgeScorer(PerImage):
    """A preference judge (HPSv2.1, PickScore) on every general-prompt image and its prompt's plain text, as for
    CLIPScore; a prompt cut at the judge's text context is flagged ``text_truncated``. ``weights_sha256``: the
    judge's provenance hash as its loader reports it, computed before it loads; ``model``: what else decides the
    network (HPSv2.1's arch and config file), part of the identity."""

    def __init__(self, info: MetricInfo, spec: JudgeSpec, weights_sha256: str, scores: JudgeScores, images_dir: Path,
                 batch_size: int, hash_cache: Path, model: Mapping | None = None):
        self.info, self.spec, self.weights_sha256, self.scores = info, spec, weights_sha256, scores
        self.images_dir, self.batch_size, self.hash_cache = images_dir, batch_size, hash_cache
        self._base = {"metric": info.name, "version": info.version, "weights": weights_sha256, "model": model or {},
                      "batch_size": batch_size, **compute_context(spec.device)}

    def selects(self, row: Row) -> bool:
        return row["task"] == "general"

    def identity(self, row: Row) -> Mapping:
        return {**self._base, "text": plain_text(row["prompt"])}

    def compute(self, rows: Sequence[Row]) -> list[Value]:
        judge = self.spec.load(self.hash_cache)
        if judge.weights_sha256 != self.weights_sha256:  # the files changed between planning and loading
            raise RuntimeError(f"{self.info.label}: the weights changed while the stage ran "
                               f"({self.weights_sha256} planned, {judge.weights_sha256} loaded); run it again")
        texts = [plain_text(r["prompt"]) for r in rows]
        with progress_bar(total=len(rows), desc=self.info.name, unit="img") as bar:
            values, truncated = self.scores(judge, open_images(self.images_dir, rows), texts, self.batch_size,
                                            progress=bar.update)
        return [({self.info.name: float(v)}, ("text_truncated",) if t else ()) for v, t in zip(values, truncated)]


# --------------------------------------------------------------------------------------------------- the stage


def score_model(rows: Sequence[Row], scorers: Sequence[Scorer], store: ScoreStore) -> dict[str, list[dict]]:
    """Every scorer's score rows for one model's drawable manifest rows: {metric: rows}, in ``scorers`` order.

    First every row's key of every scorer (the checks those need run here, before any model loads), then per scorer
    the stored values, and the missing ones computed and stored at once (a scorer finished is never lost).
    """
    plans = []
    for scorer in scorers:
        units = scorer.units(rows)
        plans.append((scorer, units, [store.key(scorer.identity(u)) for u in units]))
    return {scorer.info.name: rows_of(scorer, selected, values_of(scorer, selected, keys, store))
            for scorer, selected, keys in plans}


def values_of(scorer: Scorer, rows: Sequence[Row], keys: Sequence[str], store: ScoreStore) -> list[Value]:
    """The value of every row: read from the store under its key, or computed (all missing rows in one call)."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        by_key[key].append(i)
    values: list[Value | None] = [None] * len(rows)
    for key, index in by_key.items():
        found = store.get(key, (rows[i]["image_hash"] for i in index))
        for i in index:
            if (payload := found.get(rows[i]["image_hash"])) is not None:
                values[i] = decode(payload)
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        computed = scorer.compute([rows[i] for i in missing])
        new: dict[str, dict[str, bytes]] = defaultdict(dict)
        for i, value in zip(missing, computed, strict=True):
            values[i] = value
            new[keys[i]][rows[i]["image_hash"]] = encode(value)
        for key, payloads in new.items():
            store.put(key, payloads)
    store.count(scorer.info.name, len(missing), len(rows) - len(missing))
    return values  # type: ignore[return-value]


def rows_of(scorer: Scorer, rows: Sequence[Row], values: Sequence[Value]) -> list[dict]:
    """Tidy score rows: the metric's rows, then each diagnostic's (StyleLoss's layers), in manifest order."""
    names = list(values[0][0]) if values else [scorer.info.name]
    out: list[dict] = []
    for name in names:
        extra = [v[1] for v in values] if name == scorer.info.name else None
        out += score_rows(rows, name, [v[0][name] for v in values], scorer.info.version, scorer.weights_sha256,
                          extra)
    return out
