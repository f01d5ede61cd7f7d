"""Inputs of the aggregate stages (standardize, report): the reviewed models, their manifests and score rows.

Only the models listed in params count: DVC leaves a removed ``foreach`` instance's outputs behind, so directories are
never discovered by listing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ghostreview.analysis.standardize import MetricLike, metric_task
from ghostreview.generation.manifest import MANIFEST_COLUMNS, ManifestError, check_columns, manifest_file
from ghostreview.protocol import Benchmark
from ghostreview.scoring.table import SCORE_COLUMNS


def models_table(images_dir: Path, names: Sequence[str],
                 titles: Mapping[str, str | None] | None = None) -> pd.DataFrame:
    """One row per model from ``<images_dir>/<model>/model.json`` (written by generate).

    ``titles``: the display name of each model (its params ``title``; "" when it has none or none are given).
    """
    titles = titles or {}
    rows = []
    for name in names:
        info = _model_info(images_dir / name / "model.json", name)
        rows.append({
            "model": name,
            "title": titles.get(name) or "",
            "family": info["family"],
            "checkpoint_file": info["checkpoint_name"],
            "sha256": info["sha256"],
            "autov2": info["autov2"],
            "random_weights": bool(info["random_weights"]),
        })
    return pd.DataFrame(rows)


MODEL_KEYS = ("family", "checkpoint_name", "sha256", "autov2", "random_weights")


def _model_info(path: Path, name: str) -> dict:
    """``model.json`` of one model, with the keys models_table reads; a ManifestError names the file and the fix."""
    if not path.is_file():
        raise ManifestError(f"{path}: model {name!r} has no generate output; run `dvc repro generate@{name}`.")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc}); run `dvc repro -f generate@{name}`.") from exc
    missing = [k for k in MODEL_KEYS if not isinstance(info, dict) or k not in info]
    if missing:
        raise ManifestError(f"{path}: no key {missing[0]!r} (missing: {', '.join(missing)}): not written by this "
                            f"version's generate stage; run `dvc repro -f generate@{name}`.")
    return info


def _read_manifest_table(directory: Path, columns: Sequence[str]) -> pd.DataFrame:
    path = manifest_file(directory)
    check_columns(path, pd.read_csv(path, nrows=0).columns)
    return pd.read_csv(path, dtype=str, keep_default_na=False, usecols=list(columns))


def manifests(images_dir: Path, names: Sequence[str],
              columns: Sequence[str] = MANIFEST_COLUMNS) -> dict[str, pd.DataFrame]:
    """Each model's manifest as a DataFrame (all columns as text, empty cells kept as ""): ``columns`` only (the
    header is checked in full), e.g. ``UNDRAWN_COLUMNS`` for ``undrawn_rows`` (infotexts are most of a manifest)."""
    return {n: _read_manifest_table(images_dir / n, columns) for n in names}


UNDRAWN_COLUMNS = ("task", "item", "seed", "image", "image_hash", "flags")  # what undrawn_rows reads


def undrawn_rows(manifests: Mapping[str, pd.DataFrame], metrics: Mapping[str, MetricLike]) -> pd.DataFrame:
    """Score rows with value NaN for the manifest rows that have no image (an unsupported, incompatible or unreadable
    LoRA for that checkpoint), one per metric of ``metrics`` standardized over the row's task.

    They carry the manifest's flags (``lora_unsupported``, ``lora_incompatible``; ``error`` when a row has none), so
    standardize counts them as excluded and the report lists them, instead of the pairs vanishing with their images.
    """
    by_task: dict[str, list[str]] = {}
    for name, info in metrics.items():
        by_task.setdefault(metric_task(name, info), []).append(name)
    rows = []
    for model, manifest in manifests.items():
        for r in manifest[manifest["image"] == ""].to_dict(orient="records"):
            for metric in by_task.get(r["task"], []):
                rows.append({"model": model, "task": r["task"], "item": r["item"], "seed": int(r["seed"]),
                             "image_hash": r["image_hash"], "metric": metric, "value": float("nan"),
                             "flags": r["flags"] or "error", "metric_version": "", "weights_sha256": ""})
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def made_with_map(bench: Benchmark, models: pd.DataFrame) -> dict[str, list[str]]:
    """LoRA item -> reviewed models its header image was made with (for the NoTM variant).

    A ``made_with`` entry matches a model by its key, its checkpoint file name (without extension) or its AutoV2 hash,
    case-insensitively: Civitai infotext records ``Model`` and ``Model hash`` (AutoV2).
    """
    aliases: dict[str, str] = {}
    for row in models.itertuples():
        for alias in (row.model, row.checkpoint_file, row.autov2):
            aliases[str(alias).lower()] = row.model
    out: dict[str, list[str]] = {}
    for entries in bench.loras.values():
        for entry in entries:
            hits = sorted({aliases[m.lower()] for m in entry.made_with if m.lower() in aliases})
            if hits:
                out[entry.name] = hits
    return out
