"""Tests of ghostreview.analysis.aggregate: the manifests the aggregate stages read, and their undrawn rows."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from ghostreview.analysis.aggregate import UNDRAWN_COLUMNS, manifests, undrawn_rows
from ghostreview.generation.manifest import MANIFEST_COLUMNS, ManifestError
from ghostreview.scoring.registry import REGISTRY


def write_manifest(directory, rows, columns=MANIFEST_COLUMNS):
    directory.mkdir(parents=True)
    with open(directory / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def manifest_row(model, task, item, seed, image, flags=""):
    return {c: "" for c in MANIFEST_COLUMNS} | dict(
        model=model, family="sd15", task=task, item=item, seed=str(seed), image=image, image_hash=f"h{model}{seed}",
        flags=flags, infotext=f"a prompt, with a comma\nNegative prompt: x\nSteps: 2, Seed: {seed}")


def test_undrawn_rows_from_the_cut_manifests_equal_those_from_the_full_ones(tmp_path):
    rows = [manifest_row("a", "general", "007", 0, "x.png"),
            manifest_row("a", "lora", "L1", 1, "", "lora_incompatible"), manifest_row("a", "lora", "L2", 2, "")]
    write_manifest(tmp_path / "a", rows)
    full, cut = manifests(tmp_path, ["a"]), manifests(tmp_path, ["a"], UNDRAWN_COLUMNS)
    assert list(full["a"].columns) == list(MANIFEST_COLUMNS)
    assert sorted(cut["a"].columns) == sorted(UNDRAWN_COLUMNS) and cut["a"]["item"].tolist()[0] == "007"
    pd.testing.assert_frame_equal(undrawn_rows(full, REGISTRY), undrawn_rows(cut, REGISTRY))
    got = undrawn_rows(cut, REGISTRY)
    assert got["item"].tolist() == ["L1", "L2"] and got["flags"].tolist() == ["lora_incompatible", "error"]


def test_a_manifest_lacking_a_column_fails_even_when_that_column_is_not_read(tmp_path):
    write_manifest(tmp_path / "a", [manifest_row("a", "general", "p", 0, "x.png")],
                   [c for c in MANIFEST_COLUMNS if c != "infotext"])
    with pytest.raises(ManifestError, match="infotext"):
        manifests(tmp_path, ["a"], UNDRAWN_COLUMNS)
