"""Reference sets: the frozen per-item mean and spread of a few anchor models, so that scores stay put.

In pool mode (``standardize.reference: pool``) a z-score is relative to every model reviewed: adding a model moves
everyone's numbers. A reference set freezes, per z group (metric, task, item, pool), the size, mean and population
std of the anchors' usable values (``standardize.group_summary``); scored against it, an image's z depends on its
own value and the table only, so adding a model changes no other model's score, bit for bit.

File: ``<references dir>/<name>.json`` (the repository's ``references/``, tracked by git: a few kB per metric and
item), written atomically by ``ghostreview freeze-reference NAME``::

    {"format": "ghostreview-reference", "version": 1, "name": ..., "benchmark": {"name", "version", "digest"},
     "std_ddof": 0, "anchors": [{"model", "family", "sha256"}, ...],
     "columns": ["metric", "task", "item", "pool", "n", "mean", "std", "n_models"], "groups": [[...], ...]}

Floats are written as Python's ``repr`` (json does), which reads back to the same double: the table round-trips
exactly. A reference answers one benchmark: ``check_benchmark`` refuses another digest (its items would not match).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ghostreview.analysis.standardize import GROUP_KEYS, REFERENCE_COLUMNS, STD_DDOF, Standardized, group_summary
from ghostreview.errors import UserError
from ghostreview.util.atomic import write_text_atomic

FORMAT, VERSION = "ghostreview-reference", 1
POOL = "pool"  # the params value that means "no reference set"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
FIX = "freeze it again with `ghostreview freeze-reference NAME` (or set standardize.reference: pool)"


class ReferenceError(UserError):
    """A reference set file is missing, malformed or made for another benchmark."""


@dataclass(frozen=True)
class Reference:
    """A reference set: its name, the benchmark it answers, the anchors and the groups table (REFERENCE_COLUMNS)."""

    name: str
    benchmark: Mapping[str, object]
    anchors: tuple[Mapping[str, str], ...]
    groups: pd.DataFrame

    def anchor_models(self, models: pd.DataFrame) -> list[str]:
        """The models of ``models`` (columns model, sha256) whose checkpoint is one of the anchors': their scores
        are partly relative to themselves, which the report marks."""
        hashes = {str(a["sha256"]) for a in self.anchors}
        return [str(m) for m, h in zip(models["model"], models["sha256"]) if str(h) in hashes]


def check_name(name: str) -> str:
    """``name`` if it is a usable reference name (a slug: its file is ``<name>.json``), else ReferenceError."""
    if name == POOL or not NAME.match(name):
        raise ReferenceError(f"reference name {name!r}: expected a slug of lower-case letters, digits, '-' and '_' "
                             f"(at most 64), not {POOL!r} (which means no reference set)")
    return name


def reference_path(directory: Path, name: str) -> Path:
    """Where reference ``name`` lives: ``<directory>/<name>.json``."""
    return Path(directory) / f"{check_name(name)}.json"


def freeze(result: Standardized, models: pd.DataFrame, name: str) -> Reference:
    """A reference set from a finished pool-mode review (every model of it an anchor; the benchmark from its meta).

    models: columns model, family, sha256 (``aggregate.models_table``). The raw values are what is frozen, so the
    review's own mode does not matter to the numbers; a review without its benchmark record is refused (the
    reference could not be checked against later reviews)."""
    check_name(name)
    benchmark = result.meta.get("benchmark")
    if not isinstance(benchmark, dict) or "digest" not in benchmark:
        raise ReferenceError("the standardize output has no benchmark record (meta.json 'benchmark'): rerun "
                             "`dvc repro standardize`, then freeze")
    images = result.images
    anchors = tuple({"model": str(r["model"]), "family": str(r["family"]), "sha256": str(r["sha256"])}
                    for r in models.to_dict("records"))
    groups = group_summary(images)
    if groups.empty:
        raise ReferenceError(f"reference {name!r}: no z group with a usable spread in this review (every group is "
                             "degenerate); review at least 2 models first")
    return Reference(name, dict(benchmark), anchors, groups)


def to_json(ref: Reference) -> str:
    """The file's text (layout in the module docstring)."""
    rows = [[str(r[k]) for k in GROUP_KEYS] + [int(r["n"]), float(r["mean"]), float(r["std"]), int(r["n_models"])]
            for r in ref.groups.to_dict("records")]
    doc = {"format": FORMAT, "version": VERSION, "name": ref.name, "benchmark": dict(ref.benchmark),
           "std_ddof": STD_DDOF, "anchors": [dict(a) for a in ref.anchors], "columns": list(REFERENCE_COLUMNS),
           "groups": rows}
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


def write_reference(ref: Reference, directory: Path) -> Path:
    """Write ``ref`` to ``reference_path(directory, ref.name)`` atomically (directory created); returns the path."""
    path = reference_path(directory, ref.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, to_json(ref))


def require(ok: bool, path: Path, key: str, problem: str) -> None:
    """ReferenceError naming the file, the key and the fix unless ``ok``."""
    if not ok:
        raise ReferenceError(f"{path}: {key} {problem}; {FIX}")


def group_frame(path: Path, rows: object) -> pd.DataFrame:
    """The groups table from the file's ``groups`` rows, each checked: 4 texts, n >= 2, finite mean, std > 0."""
    require(isinstance(rows, list) and len(rows) > 0, path, "'groups'", "must be a non-empty list")
    assert isinstance(rows, list)
    for i, r in enumerate(rows):
        good = (isinstance(r, list) and len(r) == len(REFERENCE_COLUMNS) and all(isinstance(v, str) for v in r[:4])
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in r[4:]))
        require(good, path, f"groups[{i}]", f"is {r!r}, expected [metric, task, item, pool, n, mean, std, n_models]")
        n, mean, std, n_models = r[4:]
        require(n >= 2 and n_models >= 2 and math.isfinite(mean) and math.isfinite(std) and std > 0, path,
                f"groups[{i}]", f"({r[:4]}) has n={n}, mean={mean}, std={std}, n_models={n_models}: a group needs "
                "n >= 2, 2 models or more, a finite mean and std > 0")
    frame = pd.DataFrame(rows, columns=list(REFERENCE_COLUMNS))
    twice = frame.duplicated(GROUP_KEYS)
    require(not twice.any(), path, "'groups'", f"repeats {frame[twice][GROUP_KEYS].values.tolist()[:3]}")
    return frame.astype({"n": "int64", "mean": "float64", "std": "float64", "n_models": "int64"})


def read_reference(path: Path) -> Reference:
    """Read and validate a reference file; any problem raises ReferenceError naming the file, the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceError(f"{path}: no such reference set; freeze one with `ghostreview freeze-reference "
                             f"{path.stem}` from a finished pool-mode review, or set standardize.reference: pool")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ReferenceError(f"{path}: not valid JSON ({exc}); {FIX}") from exc
    require(isinstance(doc, dict), path, "the document", "must be a JSON object")
    require(doc.get("format") == FORMAT, path, "'format'", f"is {doc.get('format')!r}, expected {FORMAT!r}")
    require(doc.get("version") == VERSION, path, "'version'", f"is {doc.get('version')!r}, this GhostReview reads "
            f"{VERSION}")
    require(doc.get("name") == path.stem, path, "'name'", f"is {doc.get('name')!r}, the file name says {path.stem!r}")
    require(doc.get("std_ddof") == STD_DDOF, path, "'std_ddof'", f"is {doc.get('std_ddof')!r}, expected {STD_DDOF}")
    require(doc.get("columns") == list(REFERENCE_COLUMNS), path, "'columns'", f"must be {list(REFERENCE_COLUMNS)}")
    bench = doc.get("benchmark")
    require(isinstance(bench, dict) and {"name", "version", "digest"} <= set(bench), path, "'benchmark'",
            "must hold name, version and digest")
    anchors = doc.get("anchors")
    require(isinstance(anchors, list) and len(anchors) >= 2 and all(
        isinstance(a, dict) and {"model", "family", "sha256"} <= set(a) for a in anchors), path, "'anchors'",
        "must list 2 or more {model, family, sha256}")
    return Reference(str(doc["name"]), bench, tuple(anchors), group_frame(path, doc.get("groups")))


def check_benchmark(ref: Reference, benchmark: Mapping[str, object], where: str) -> None:
    """ReferenceError unless ``ref`` was frozen on the benchmark ``benchmark`` (same digest): other items would not
    match its groups. where: the file, for the message."""
    mine, theirs = ref.benchmark.get("digest"), benchmark.get("digest")
    if mine != theirs:
        raise ReferenceError(f"{where}: reference {ref.name!r} was frozen on benchmark {ref.benchmark.get('name')} "
                             f"{ref.benchmark.get('version')} (digest {mine}), this review runs "
                             f"{benchmark.get('name')} {benchmark.get('version')} (digest {theirs}); {FIX}")


def load_for_review(directory: Path, name: str, benchmark: Mapping[str, object]) -> Reference:
    """The reference set ``name`` of ``directory``, read, validated and checked against ``benchmark``."""
    path = reference_path(directory, name)
    ref = read_reference(path)
    check_benchmark(ref, benchmark, str(path))
    return ref


def review_meta(ref: Reference | None, models: pd.DataFrame) -> dict[str, object]:
    """What standardize's meta records of the reference (the report names it): name (``pool`` without one), the
    anchors (model, family, sha256) and ``anchors_reviewed``, the reviewed models that are anchors themselves."""
    if ref is None:
        return {"name": POOL, "anchors": [], "anchors_reviewed": []}
    out: dict[str, object] = {"name": ref.name, "anchors": [dict(a) for a in ref.anchors],
                              "anchors_reviewed": ref.anchor_models(models)}
    outside = outside_pools(ref, models)
    return out | ({"outside_pools": outside} if outside else {})  # only then: older metas keep their bytes


def outside_pools(ref: Reference, models: pd.DataFrame) -> list[str]:
    """The reviewed models whose protocol pool (issue 17: the models table's ``protocol``) the anchors never had:
    their general and style groups are not in the reference, so they get no z there."""
    if "protocol" not in models:
        return []
    have = set(ref.groups["pool"].astype(str))
    return [str(m) for m, p in zip(models["model"], models["protocol"].astype(str)) if p not in have]


def freeze_review(standardized_dir: Path, images_dir: Path, names: list[str], name: str, out_dir: Path) -> Path:
    """``ghostreview freeze-reference``: freeze the finished review in ``standardized_dir`` (models ``names``, their
    model.json under ``images_dir``) as reference ``name`` in ``out_dir``; returns the file written. An existing
    file of that name is refused: a reference is frozen once (re-freezing would silently move every score)."""
    from ghostreview.analysis.aggregate import models_table

    path = reference_path(out_dir, name)
    if path.exists():
        raise ReferenceError(f"{path} exists: a reference set is frozen once; choose a new name (e.g. {name}-2)")
    try:
        result = Standardized.read(standardized_dir)
    except FileNotFoundError as exc:
        raise ReferenceError(str(exc)) from exc
    return write_reference(freeze(result, models_table(images_dir, names), name), out_dir)
